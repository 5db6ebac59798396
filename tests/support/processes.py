"""Real gateway processes for tests: ``llmgateway run`` on a free port, in a tmp folder."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class GatewayProcess:
    """A running gateway process and where it listens."""

    proc: asyncio.subprocess.Process
    address: str
    log_path: Path

    def logs(self) -> str:
        """What the process wrote to stderr so far."""
        return self.log_path.read_text()

    async def stop(self, timeout: float = 10.0) -> int:  # noqa: ASYNC109
        """SIGTERM, then wait for the exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing flushed."""
        if self.proc.returncode is None:
            self.proc.kill()


@asynccontextmanager
async def gateway_process(
    workdir: Path, config_text: str | None, env: Mapping[str, str], *, name: str = "gateway"
) -> AsyncIterator[GatewayProcess]:
    """Start ``llmgateway run --config`` (the embedded default when ``config_text`` is
    None) in ``workdir`` (its default data/ goes there); kill it on the way out if the
    test did not stop it."""
    config_path, log_path = _prepare(workdir, name, config_text)
    args = [sys.executable, "-m", "llmgateway_server", "run"]
    if config_path is not None:
        args += ["--config", str(config_path)]
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *args,
            "--listen",
            "127.0.0.1:0",
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            env={"PATH": os.environ.get("PATH", ""), **env},
            cwd=workdir,
        )
    running = GatewayProcess(proc, "", log_path)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert line.startswith(b"llmgateway listening on "), line + log_path.read_bytes()
        running.address = line.decode().rsplit(" ", 1)[1].strip()
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _prepare(workdir: Path, name: str, config_text: str | None) -> tuple[Path | None, Path]:
    """The process's folder, config file (if any) and (empty) log file."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = None
    if config_text is not None:
        config_path = workdir / f"{name}.yaml"
        config_path.write_text(config_text)
    log_path = workdir / f"{name}.log"
    log_path.write_bytes(b"")
    return config_path, log_path
