"""Child processes of the benchmark (start, wait for the ready line, stop) and /proc readings."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included (/proc/<pid>/stat)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces: the fields start after its closing ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 (utime, stime)


def box_seconds() -> dict[str, float]:
    """CPU seconds of the whole machine (all CPUs, /proc/stat): busy, idle and steal
    (time the hypervisor ran someone else while this VM wanted the CPU)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    return {
        "busy": (user + nice + system + irq + softirq) / CLOCK_TICKS,
        "idle": (idle + iowait) / CLOCK_TICKS,
        "steal": steal / CLOCK_TICKS,
    }


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def open_fds(pid: int) -> int:
    """Open file descriptors of a process (sockets included)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def _pump(stream: IO[str], sink: IO[str], lines: queue.Queue[str | None]) -> None:
    """Copy a child's stdout to its log, and hand each line to the waiter."""
    for line in stream:
        sink.write(line)
        sink.flush()
        lines.put(line)
    lines.put(None)


@dataclass
class Child:
    """A started child process, its announced address and its log file."""

    name: str
    proc: subprocess.Popen[str]
    address: str
    log_path: Path

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start(
    name: str,
    argv: list[str],
    ready: str,
    *,
    log_dir: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> Child:
    """Start ``argv`` and wait until a stdout line matches ``ready`` (a regex whose first
    group is the address). stderr, and stdout after the ready line, go to a log file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log_path.write_text("")
    # Append mode: the child writes stderr and this process stdout into the same file.
    log = log_path.open("a", encoding="utf-8")
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        bufsize=1,
    )
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, log, lines), daemon=True).start()
    pattern = re.compile(ready)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        match = pattern.search(line) if line is not None else None
        if match:
            return Child(name=name, proc=proc, address=match.group(1), log_path=log_path)
        if line is None:
            proc.kill()
            proc.wait(5)
            raise RuntimeError(f"{name} did not become ready; see {log_path}")
