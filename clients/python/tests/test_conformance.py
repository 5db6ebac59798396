"""The shared conformance scenarios (clients/conformance/scenarios.json), run by the Python
client against the real gateway that tests/support/conformance_server.py starts: the
same list the Go and TypeScript clients' tests run, so the three cannot drift apart."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import llmgateway_client as lg
import pytest
from google.rpc import error_details_pb2

REPO = Path(__file__).resolve().parents[3]
SCENARIOS = json.loads((REPO / "clients" / "conformance" / "scenarios.json").read_text())[
    "scenarios"
]

# The neutral error names of the scenarios, as this client's classes.
ERRORS: dict[str, type[lg.GatewayError]] = {
    "Unauthenticated": lg.AuthenticationError,
    "ModelNotFound": lg.ModelNotFound,
    "InvalidRequest": lg.InvalidRequest,
    "ContextWindowExceeded": lg.ContextWindowExceeded,
    "CostLimitExceeded": lg.CostLimitExceeded,
    "Unavailable": lg.Unavailable,
    "DeadlineExceeded": lg.DeadlineExceeded,
    "Cancelled": lg.Cancelled,
}


@pytest.fixture(scope="module")
def harness() -> Iterator[dict[str, str]]:
    """The conformance gateway, its addresses and key (stopped by closing its stdin)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.conformance_server"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        line = proc.stdout.readline()
        assert line, "the conformance server exited before it was ready"
        yield json.loads(line)
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _disconnects(harness: dict[str, str]) -> int:
    with urllib.request.urlopen(harness["upstream_state"], timeout=5) as reply:
        return int(json.load(reply)["disconnects"])


async def _disconnect_seen(harness: dict[str, str], before: int) -> bool:
    until = time.monotonic() + 2.0
    while time.monotonic() < until:
        if await asyncio.to_thread(_disconnects, harness) > before:
            return True
        await asyncio.sleep(0.05)
    return False


async def _run(client: lg.AsyncClient, s: dict[str, Any]) -> lg.Completion:
    kwargs: dict[str, Any] = {"max_tokens": s["max_tokens"]}
    if "temperature" in s:
        kwargs["temperature"] = s["temperature"]
    if "timeout_ms" in s:
        kwargs["timeout"] = s["timeout_ms"] / 1000
    if s["rpc"] == "Complete":
        return await client.complete(s["model"], s["prompt"], **kwargs)
    deltas: list[str] = []
    result: lg.Completion | None = None
    async with client.stream(s["model"], s["prompt"], **kwargs) as stream:
        async for item in stream:
            if isinstance(item, str):
                assert result is None, "a delta after the result"
                deltas.append(item)
                if len(deltas) == s.get("cancel_after_deltas"):
                    await stream.aclose()  # the caller goes away mid-stream
                    raise asyncio.CancelledError
            else:
                assert result is None, "a second result"
                result = item
    assert result is not None, "the stream ended without its result"
    assert "".join(deltas) == result.content
    return result


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
async def test_conformance(harness: dict[str, str], scenario: dict[str, Any]) -> None:
    expect = scenario["expect"]
    target = harness["odd" if scenario.get("server") == "odd" else "gateway"]
    key = scenario.get("api_key", harness["api_key"])
    before = _disconnects(harness)
    async with lg.AsyncClient(target, api_key=key, timeout=10, retry_unavailable=False) as client:
        if expect.get("ok"):
            completion = await _run(client, scenario)
            if "content" in expect:
                assert completion.content == expect["content"]
            if expect.get("usage_positive"):
                assert completion.usage.input_tokens > 0
                assert completion.usage.output_tokens > 0
            if expect.get("cost_positive"):
                assert completion.cost.total_nano_usd > 0
            return
        if scenario.get("cancel_after_deltas"):
            # Python's idiom: closing the stream (or cancelling its task) ends the call.
            with pytest.raises(asyncio.CancelledError):
                await _run(client, scenario)
            assert await _disconnect_seen(harness, before)
            return
        with pytest.raises(lg.GatewayError) as caught:
            await _run(client, scenario)
    error = caught.value
    assert isinstance(error, ERRORS[expect["error"]]), repr(error)
    assert error.code == getattr(grpc.StatusCode, expect["code"])
    if "reason" in expect:
        assert error.reason == expect["reason"]
    for key_, value in expect.get("metadata", {}).items():
        assert error.metadata[key_] == value
    for key_ in expect.get("metadata_keys", ()):
        assert key_ in error.metadata
    if "field_violations" in expect:
        (bad,) = [d for d in error.details if isinstance(d, error_details_pb2.BadRequest)]
        assert [v.field for v in bad.field_violations] == expect["field_violations"]
    if "retry_delay_s" in expect:
        assert error.retry_after == expect["retry_delay_s"]
    if expect.get("quota_failure"):
        assert any(isinstance(d, error_details_pb2.QuotaFailure) for d in error.details)
    if expect.get("unknown_details"):
        known = (error_details_pb2.ErrorInfo,)
        assert any(not isinstance(d, known) for d in error.details)
    if expect.get("upstream_disconnect"):
        assert await _disconnect_seen(harness, before)
