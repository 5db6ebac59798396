"""The processes under test, started and stopped: fake upstreams, the bare relay, gateways."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import procs
import workload
from gateway_config import Variant, gateway_yaml

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
OUT = BENCH / "out"
LOGS = OUT / "logs"
CONFIGS = OUT / "configs"
PY = sys.executable

UPSTREAM_READY = r"LISTENING (http://\S+)"
GATEWAY_READY = r"llmgateway listening on (\S+)"
RELAY_READY = r"relay listening on (\S+)"


def bench_env() -> dict[str, str]:
    """The environment of every child: the keys the configs reference, the repo on the
    path (for ``python -m tests.support.upstream``)."""
    env = dict(os.environ)
    env[workload.UPSTREAM_KEY_ENV] = workload.UPSTREAM_KEY
    env[workload.TENANT_KEY_ENV] = workload.TENANT_KEY
    env["PYTHONPATH"] = str(REPO)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


@dataclass
class Children:
    """Everything started, so that all of it is stopped."""

    env: dict[str, str] = field(default_factory=bench_env)
    running: list[procs.Child] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], ready: str, *, env: dict[str, str] | None = None
    ) -> procs.Child:
        """Start a child (with ``env`` added to the shared environment) and remember it."""
        child = procs.start(
            name, argv, ready, log_dir=LOGS, cwd=REPO, env={**self.env, **(env or {})}
        )
        self.running.append(child)
        return child

    def stop(self, child: procs.Child) -> None:
        """Stop one child."""
        child.stop()
        self.running.remove(child)

    def stop_all(self) -> None:
        """Stop every child, newest first."""
        for child in reversed(self.running):
            child.stop()
        self.running.clear()


def start_upstream(children: Children, name: str, *extra: str) -> procs.Child:
    """The fake OpenAI upstream (tests/support/upstream.py) answering the fixed text."""
    argv = [PY, "-m", "tests.support.upstream", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--text", workload.ANSWER_TEXT, "--api-key", workload.UPSTREAM_KEY, *extra]
    return children.start(name, argv, UPSTREAM_READY)


def start_relay(children: Children, name: str, upstreams: dict[str, str]) -> procs.Child:
    """The bare relay with one route per upstream (route -> base URL)."""
    argv = [PY, str(BENCH / "bare_relay.py"), "--listen", "127.0.0.1:0"]
    for route, url in upstreams.items():
        argv += ["--route", f"{route}={url}/v1"]
    return children.start(name, argv, RELAY_READY)


def start_gateway(
    children: Children,
    name: str,
    variant: Variant,
    upstreams: dict[str, str],
    *,
    max_connections: int = 256,
    profile_to: Path | None = None,
) -> procs.Child:
    """The real gateway process on a config written to bench/out/configs/ (under cProfile
    when ``profile_to`` is given)."""
    CONFIGS.mkdir(parents=True, exist_ok=True)
    path = CONFIGS / f"{name}.yaml"
    database = OUT / "state" / f"{name}.db"  # a fresh store per gateway process
    database.parent.mkdir(parents=True, exist_ok=True)
    for stale in database.parent.glob(f"{name}.db*"):
        stale.unlink()
    path.write_text(
        gateway_yaml(variant, upstreams, max_connections=max_connections, database=str(database))
    )
    argv = [PY]
    if profile_to is not None:
        argv += ["-m", "cProfile", "-o", str(profile_to)]
    argv += ["-m", "llmgateway_server", "run", "--config", str(path), "--listen", "127.0.0.1:0"]
    env = {"PYTHONPATH": baseline_path(variant.baseline)} if variant.baseline else None
    return children.start(name, argv, GATEWAY_READY, env=env)


def baseline_path(revision: str) -> str:
    """PYTHONPATH that runs ``revision``'s server and stubs (exported once into
    bench/out/baseline/<revision>/); it comes before the editable install's path."""
    root = OUT / "baseline" / revision
    if not (root / "server").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", revision, "server", "clients/python/src"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return f"{root / 'server'}:{root / 'clients' / 'python' / 'src'}"
