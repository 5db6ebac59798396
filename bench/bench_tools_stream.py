"""A 3-tool request streamed through the gateway against a plain-text stream: the time to
first token the gateway adds, and its CPU per stream.

The gateway runs as its own process (its CPU read from /proc); the fake upstream (in this
process) answers the tool request with the recorded OpenAI tool call (one call, its
arguments in 11 fragments: 13 events) and the plain request with 13 text chunks, both
``--chunk-ms`` apart. Slices of ``--streams`` sequential streams alternate between the two
kinds, and between the gateway and the upstream called directly (the same SSE over HTTP),
so both kinds see the same seconds of this shared machine. Added time to first token is
the gateway's median minus the direct median; CPU per stream is the gateway process's CPU
over a slice divided by its streams.

    .venv/bin/python bench/bench_tools_stream.py [--slices 8] [--streams 40] [--chunk-ms 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import procs
from grpc import aio
from llmgateway.v1 import gateway_pb2 as pb
from llmgateway.v1 import gateway_pb2_grpc as pb_grpc
from servers import GATEWAY_READY, LOGS, PY, REPO, bench_env

from tests.support.configs import ENV, providers_config
from tests.support.upstream import FakeUpstream, Replay, Respond

# Three tools as a service would declare them: nested objects, enums, descriptions.
TOOLS = [
    pb.Tool(
        name="get_weather",
        description="Current weather for a city.",
        parameters='{"type":"object","properties":{"city":{"type":"string","description":'
        '"City name"},"unit":{"type":"string","enum":["celsius","fahrenheit"]}},'
        '"required":["city"],"additionalProperties":false}',
    ),
    pb.Tool(
        name="search_flights",
        description="Search flights between two airports on a date.",
        parameters='{"type":"object","properties":{"from":{"type":"string","pattern":'
        '"^[A-Z]{3}$"},"to":{"type":"string","pattern":"^[A-Z]{3}$"},"date":{"type":'
        '"string","format":"date"},"passengers":{"type":"integer","minimum":1,"maximum":9},'
        '"cabin":{"type":"string","enum":["economy","premium","business","first"]}},'
        '"required":["from","to","date"]}',
    ),
    pb.Tool(
        name="create_ticket",
        description="Open a support ticket.",
        parameters='{"type":"object","$defs":{"contact":{"type":"object","properties":'
        '{"email":{"type":"string"},"phone":{"type":"string"}}}},"properties":{"title":'
        '{"type":"string","maxLength":120},"body":{"type":"string"},"priority":{"type":'
        '"string","enum":["low","normal","high"]},"contact":{"$ref":"#/$defs/contact"}},'
        '"required":["title","body"]}',
    ),
]
PLAIN_TEXT = " ".join(["word"] * 13)
PLAIN_CHUNKS = 13


def _cpu_s(pid: int) -> float:
    """CPU time of every thread of ``pid`` in seconds, to the nanosecond
    (/proc/<pid>/task/*/schedstat; /proc/<pid>/stat counts in 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def _request(kind: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "model": "gpt",
        "messages": [pb.Message(role=pb.ROLE_USER, content="What's the weather in Paris?")],
        "max_tokens": 200,
    }
    if kind == "tools":
        fields["tools"] = TOOLS
        fields["tool_choice"] = pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_AUTO)
    return fields


async def _gateway_stream(stub: Any, kind: str) -> float:
    """Time to the first delta of one stream, in ms."""
    start = time.perf_counter()
    first = 0.0
    async for event in stub.StreamComplete(pb.StreamCompleteRequest(**_request(kind)), timeout=30):
        if not first and event.WhichOneof("event") == "delta":
            first = (time.perf_counter() - start) * 1000
    return first


async def _direct_stream(client: httpx.AsyncClient, url: str) -> float:
    """Time to the first SSE data line straight from the upstream, in ms."""
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": 200,
    }
    start = time.perf_counter()
    first = 0.0
    async with client.stream("POST", url, json=body) as response:
        async for line in response.aiter_lines():
            if not first and line.startswith("data: {") and '"choices":[{' in line.replace(" ", ""):
                first = (time.perf_counter() - start) * 1000
    return first


def _script(upstream: FakeUpstream, kind: str, n: int) -> None:
    behaviour = (
        Replay("tool_call")
        if kind == "tools"
        else Respond(text=PLAIN_TEXT, chunks=PLAIN_CHUNKS, input_tokens=20, output_tokens=13)
    )
    upstream.clear_scripts()
    upstream.script_any(*([behaviour] * n))


async def main(args: argparse.Namespace) -> None:
    async with FakeUpstream(chunk_delay_s=args.chunk_ms / 1000, record=False) as upstream:
        with tempfile.TemporaryDirectory(prefix="bench-tools-") as scratch:
            config = Path(scratch) / "gateway.yaml"
            config.write_text(
                providers_config(upstream.base_url)
                + f"\nstorage:\n  url: sqlite:///{scratch}/gateway.db\n"
            )
            env = {**bench_env(), **ENV}
            gateway = procs.start(
                "bench-tools-gateway",
                [
                    PY,
                    "-m",
                    "llmgateway_server",
                    "run",
                    "--config",
                    str(config),
                    "--listen",
                    "127.0.0.1:0",
                ],
                GATEWAY_READY,
                log_dir=LOGS,
                cwd=REPO,
                env=env,
            )
            try:
                await _measure(args, upstream, gateway)
            finally:
                gateway.stop()


async def _measure(args: argparse.Namespace, upstream: FakeUpstream, gateway: procs.Child) -> None:
    ttft: dict[str, list[float]] = {k: [] for k in ("plain", "tools")}
    direct: dict[str, list[float]] = {k: [] for k in ("plain", "tools")}
    cpu: dict[str, list[float]] = {k: [] for k in ("plain", "tools")}
    url = upstream.base_url + "/v1/chat/completions"
    async with aio.insecure_channel(gateway.address) as channel, httpx.AsyncClient() as client:
        stub = pb_grpc.GatewayServiceStub(channel)
        for kind in ("plain", "tools"):  # warm-up: tokenizer, connections, code paths
            _script(upstream, kind, 20)
            for _ in range(20):
                await _gateway_stream(stub, kind)
        for _ in range(args.slices):
            for kind in ("plain", "tools"):
                _script(upstream, kind, args.streams)
                for _ in range(args.streams):
                    direct[kind].append(await _direct_stream(client, url))
                _script(upstream, kind, args.streams)
                before = _cpu_s(gateway.pid)
                for _ in range(args.streams):
                    ttft[kind].append(await _gateway_stream(stub, kind))
                cpu[kind].append((_cpu_s(gateway.pid) - before) / args.streams)
    print(
        f"{args.slices} slices x {args.streams} sequential streams per kind, chunks "
        f"{args.chunk_ms:g} ms apart; medians\n"
    )
    print(
        "| stream | TTFT via gateway ms | TTFT direct ms | added TTFT ms | gateway CPU/stream ms |"
    )
    print("|---|---:|---:|---:|---:|")
    added: dict[str, float] = {}
    cpus: dict[str, float] = {}
    for kind, label in (
        ("plain", "plain text (13 chunks)"),
        ("tools", "3 tools, a tool call (13 events)"),
    ):
        via, straight = statistics.median(ttft[kind]), statistics.median(direct[kind])
        added[kind] = via - straight
        cpus[kind] = statistics.median(cpu[kind]) * 1000
        print(f"| {label} | {via:.2f} | {straight:.2f} | {added[kind]:.2f} | {cpus[kind]:.3f} |")
    print(
        f"\ntools / plain: added TTFT {added['tools'] / added['plain']:.2f}x, "
        f"CPU per stream {cpus['tools'] / cpus['plain']:.2f}x (target: within 1.10x)"
    )


def run() -> None:
    """Parse the arguments and measure."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--streams", type=int, default=40)
    parser.add_argument("--chunk-ms", type=float, default=1.0)
    uvloop.run(main(parser.parse_args()))


if __name__ == "__main__":
    run()
