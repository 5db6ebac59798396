"""Real Redis and PostgreSQL servers for tests and benchmarks: started on a free loopback
port in a temporary directory, stopped (or killed, or paused) whenever a test says so.

API
---
``RedisServer(directory, *, cluster=False, appendonly=False)``
    ``redis-server`` on 127.0.0.1, its files in ``directory``. ``cluster=True`` starts it
    in cluster mode owning all 16384 slots: a plain client works against it, and Redis
    itself refuses any script or command that touches keys of two slots (how tests prove
    a store is Cluster-safe). ``appendonly=True`` keeps the data across ``kill`` (AOF,
    fsync on every write); without it a restart starts empty, as a Redis without
    persistence does.

``PostgresServer(directory=None, *, fsync=False)``
    A PostgreSQL cluster (``initdb`` + ``pg_ctl``) on 127.0.0.1, trust authentication,
    superuser ``postgres``. ``directory`` defaults to a new one under the system temp
    dir (removed on ``__exit__``): as root the server runs as the ``postgres`` user (or
    ``nobody``), which cannot enter pytest's 0700 ``tmp_path``. The first server of a
    process runs ``initdb`` once into a template; every server copies it (~0.1 s instead
    of ~1.3 s). ``fsync=False`` is safe for kill tests (the OS keeps what a killed
    process wrote); set it for tests of power loss only.
    ``.url`` is the ``postgres`` database; ``.create_database(name)`` returns the URL of
    a new, empty database.

Both (context managers; ``__enter__`` starts, ``__exit__`` kills and cleans up):
    ``.start()`` (again on the same port after a stop), ``.stop()`` (clean shutdown),
    ``.kill()`` (SIGKILL, mid-anything), ``.restart()`` (stop + start),
    ``.pause()`` / ``.resume()`` (SIGSTOP / SIGCONT: a server that accepts but never
    answers), ``.port``, ``.url``, ``.running``.

pytest fixtures (import them into a conftest.py): ``redis_server``,
``redis_cluster_node``, ``postgres_server`` (function scope, each a new server), and
``redis_factory`` (call it for more servers, with options, in one test).

A missing server binary skips the test, or fails it when ``LLMGATEWAY_REQUIRE_SERVERS=1``
(CI sets it: a missing server must never turn into a silently skipped suite). Outside
pytest, a missing binary raises ``ServerMissing``; a fixture of another scope built on
these classes passes it to ``skip_or_fail``.

A cluster-mode node takes ~2 s to start (Redis keeps a new cluster unwritable for 2 s):
share one per module and FLUSHALL between tests where that matters.

Run as a script for a manual session: ``python -m tests.support.servers redis|postgres``
prints the URL and serves until Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest
import redis

__all__ = [
    "PostgresServer",
    "RedisServer",
    "ServerMissing",
    "find_binary",
    "postgres_server",
    "redis_cluster_node",
    "redis_factory",
    "redis_server",
    "skip_or_fail",
]

_START_TIMEOUT_S = 20.0


class ServerMissing(RuntimeError):
    """The server binary is not installed (``.ci/run`` installs it)."""


def find_binary(name: str) -> str:
    """``name`` on the PATH, else in Debian's PostgreSQL bin directories (the
    ``postgresql`` package does not put ``initdb``/``pg_ctl`` on the PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for bin_dir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        candidate = bin_dir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ServerMissing(f"{name} is not installed (bash .ci/run installs it)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until(
    predicate: Callable[[], bool], what: str, timeout_s: float = _START_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- Redis ---------------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on 127.0.0.1 in ``directory`` (see the module docstring)."""

    def __init__(
        self,
        directory: Path | str,
        *,
        cluster: bool = False,
        appendonly: bool = False,
        slots: tuple[int, int] | None = (0, 16383),
    ) -> None:
        self.directory = Path(directory)
        self.cluster = cluster
        # In cluster mode: the slots this node serves (None: none yet, for a cluster of
        # several nodes that ``start_cluster`` assigns and joins).
        self.slots = slots
        self.appendonly = appendonly
        self.port = 0
        self._binary = find_binary("redis-server")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """The process is alive (possibly paused)."""
        return self._process is not None and self._process.poll() is None

    def client(self) -> redis.Redis:
        """A synchronous client for test set-up and inspection (the caller closes it)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5.0)

    def start(self) -> None:
        """Start (again on the same port after ``stop``/``kill``) and wait until it
        answers PING (and, in cluster mode, until the cluster state is ok)."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        first = self.port == 0
        for attempt in range(5):
            if first:
                self.port = _free_port()
            try:
                self._spawn()
                break
            except RuntimeError:
                # Another process took the port between _free_port and the bind.
                if not first or attempt == 4:
                    raise
        if self.cluster and self.slots is not None:
            self._assign_all_slots()

    def _spawn(self) -> None:
        args = [
            self._binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._answers_ping():
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"redis-server exited at start (see {self.directory})")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("redis-server did not answer PING in time")
            time.sleep(0.005)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _assign_all_slots(self) -> None:
        assert self.slots is not None
        with self.client() as c:
            info = c.execute_command("CLUSTER", "INFO")
            if b"cluster_slots_assigned:16384" not in info:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", *self.slots)

            def ok() -> bool:
                return b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")

            _wait_until(ok, "cluster_state:ok")

    def stop(self) -> None:
        """Clean shutdown (SIGTERM; with AOF, what was written is kept)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)  # a paused server cannot exit
            self._process.terminate()
            self._process.wait(timeout=_START_TIMEOUT_S)
        self._process = None

    def kill(self) -> None:
        """SIGKILL: the server disappears mid-whatever, connections reset."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=_START_TIMEOUT_S)
        self._process = None

    def restart(self) -> None:
        """Stop, then start on the same port."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered (a hung server)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


# -- PostgreSQL ----------------------------------------------------------------------------


def _server_user() -> pwd.struct_passwd | None:
    """Who runs PostgreSQL: ``initdb`` refuses to run as root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServerMissing("running as root, and neither a postgres nor a nobody user exists")


def _scratch_dir() -> str | None:
    """Where PostgreSQL directories go: /dev/shm when there is one (copying a 39 MB data
    directory to a disk under load takes ~1.3 s, to tmpfs ~0.2 s), else the temp dir."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


_template_lock = threading.Lock()
_template_dir: Path | None = None


def _template() -> Path:
    """A data directory ``initdb`` made once per process, copied for every server."""
    global _template_dir
    with _template_lock:
        if _template_dir is not None and _template_dir.is_dir():
            return _template_dir
        user = _server_user()
        root = Path(tempfile.mkdtemp(prefix="llmgw-pg-template-", dir=_scratch_dir()))
        data = root / "data"
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        subprocess.run(
            [
                find_binary("initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=root,
            user=_uid(user),
            group=_gid(user),
            extra_groups=_groups(user),
        )
        _template_dir = data
        atexit.register(shutil.rmtree, root, True)
        return data


def _uid(user: pwd.struct_passwd | None) -> int | None:
    return None if user is None else user.pw_uid


def _gid(user: pwd.struct_passwd | None) -> int | None:
    return None if user is None else user.pw_gid


def _groups(user: pwd.struct_passwd | None) -> list[int] | None:
    return None if user is None else []


def _children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (the postmaster's backends), from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes (its parent has not reaped it yet).
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


class PostgresServer:
    """A PostgreSQL cluster on 127.0.0.1 (see the module docstring)."""

    def __init__(self, directory: Path | str | None = None, *, fsync: bool = False) -> None:
        self._own_directory = directory is None
        self.directory = (
            Path(tempfile.mkdtemp(prefix="llmgw-pg-", dir=_scratch_dir()))
            if directory is None
            else Path(directory)
        )
        self.fsync = fsync
        self.port = 0
        self._user = _server_user()
        self._pg_ctl = find_binary("pg_ctl")
        find_binary("initdb")
        self._data = self.directory / "data"

    @property
    def url(self) -> str:
        """The ``postgres`` database as superuser ``postgres`` (trust auth, no password)."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        """The URL of database ``name`` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    @property
    def running(self) -> bool:
        """The postmaster is alive (possibly paused)."""
        pid = self._postmaster_pid()
        return pid is not None and _pid_alive(pid)

    def _postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self._data / "postmaster.pid").read_text().split()[0])
        return None

    def _run_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self._pg_ctl, "-D", str(self._data), *args],
            check=check,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.directory,
            timeout=_START_TIMEOUT_S + 10,
            user=_uid(self._user),
            group=_gid(self._user),
            extra_groups=_groups(self._user),
        )

    def start(self) -> None:
        """Start (again on the same port after ``stop``/``kill``); returns when it
        accepts connections."""
        if self.running:
            return
        first = self.port == 0
        if not self._data.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            if self._user is not None:
                os.chown(self.directory, self._user.pw_uid, self._user.pw_gid)
            # cp -a keeps the owner and modes, and is ~7x faster than shutil.copytree here.
            subprocess.run(
                ["cp", "-a", str(_template()), str(self._data)],
                check=True,
                stdin=subprocess.DEVNULL,
                timeout=_START_TIMEOUT_S,
            )
        for attempt in range(5):
            if first:
                self.port = _free_port()
            options = (
                f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=200 "
                # Segments in the data directory, so a killed server leaves none behind.
                "-c dynamic_shared_memory_type=mmap"
            )
            done = self._run_ctl(
                "-o",
                options,
                "-l",
                str(self.directory / "postgres.log"),
                "-w",
                "-t",
                str(int(_START_TIMEOUT_S)),
                "start",
                check=False,
            )
            if done.returncode == 0:
                return
            if not first or attempt == 4:
                raise RuntimeError(
                    f"pg_ctl start failed: {done.stderr.decode(errors='replace')} "
                    f"(log: {self.directory / 'postgres.log'})"
                )

    def stop(self) -> None:
        """Clean (fast) shutdown: open connections are closed by the server."""
        if self.running:
            self.resume()
            self._run_ctl("-m", "fast", "-w", "stop")

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends; the next start recovers from WAL."""
        pid = self._postmaster_pid()
        if pid is None or not _pid_alive(pid):
            return
        victims = [pid, *_children_of(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        _wait_until(lambda: not any(_pid_alive(v) for v in victims), "the killed postgres to exit")
        # Until its parent reaps it, the dead postmaster is a zombie that the next start
        # would take for a running server holding the lock files.
        (self._data / "postmaster.pid").unlink(missing_ok=True)
        (self.directory / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)
        (self.directory / f".s.PGSQL.{self.port}").unlink(missing_ok=True)

    def restart(self) -> None:
        """Stop, then start on the same port."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP the postmaster and its backends: connections hang."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, sig: signal.Signals) -> None:
        pid = self._postmaster_pid()
        if pid is None:
            return
        for target in [pid, *_children_of(pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, sig)

    def create_database(self, name: str) -> str:
        """Create an empty database ``name``; returns its URL."""
        subprocess.run(
            [
                find_binary("createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                name,
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=_START_TIMEOUT_S,
        )
        return self.database_url(name)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        self.resume()
        self.kill()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def start_cluster(directory: Path, nodes: int = 3) -> list[RedisServer]:
    """A Redis Cluster of ``nodes`` primaries on 127.0.0.1, the slots split evenly, joined
    (CLUSTER MEET) and answering ``cluster_state:ok`` on every node. The caller stops
    them."""
    servers: list[RedisServer] = []
    bounds = [i * 16384 // nodes for i in range(nodes + 1)]
    try:
        for i in range(nodes):
            server = RedisServer(directory / f"node{i}", cluster=True, slots=None)
            server.start()
            servers.append(server)
            with server.client() as c:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
        with servers[0].client() as c:
            for other in servers[1:]:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port)

        def ok() -> bool:
            for server in servers:
                with server.client() as c:
                    info = c.execute_command("CLUSTER", "INFO")
                    if (
                        b"cluster_state:ok" not in info
                        or b"cluster_known_nodes:%d" % nodes not in info
                    ):
                        return False
            return True

        _wait_until(ok, "cluster_state:ok on every node")
    except BaseException:
        for server in servers:
            server.kill()
        raise
    return servers


# -- pytest fixtures -----------------------------------------------------------------------


def skip_or_fail(error: ServerMissing) -> None:
    """Skip the test for a missing server binary, or fail it when
    ``LLMGATEWAY_REQUIRE_SERVERS=1`` (for fixtures of other scopes built on these)."""
    if os.environ.get("LLMGATEWAY_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{error} and LLMGATEWAY_REQUIRE_SERVERS=1", pytrace=False)
    pytest.skip(str(error))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A new ``redis-server`` (no persistence) for this test."""
    try:
        server = RedisServer(tmp_path / "redis")
    except ServerMissing as error:
        skip_or_fail(error)
        raise
    with server:
        yield server


@pytest.fixture
def redis_cluster_node(tmp_path: Path) -> Iterator[RedisServer]:
    """A new ``redis-server`` in cluster mode owning every slot: cross-slot scripts fail."""
    try:
        server = RedisServer(tmp_path / "redis-cluster", cluster=True)
    except ServerMissing as error:
        skip_or_fail(error)
        raise
    with server:
        yield server


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """``redis_factory(name, cluster=..., appendonly=...)``: a started ``RedisServer`` in
    ``tmp_path/name``, killed at the end of the test (servers a test builds itself)."""
    started: list[RedisServer] = []

    def make(
        name: str = "redis", *, cluster: bool = False, appendonly: bool = False
    ) -> RedisServer:
        try:
            server = RedisServer(tmp_path / name, cluster=cluster, appendonly=appendonly)
        except ServerMissing as error:
            skip_or_fail(error)
            raise
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.kill()


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A new PostgreSQL cluster for this test (template copy: ~0.3 s)."""
    try:
        server = PostgresServer()
    except ServerMissing as error:
        skip_or_fail(error)
        raise
    with server:
        yield server


def main(argv: list[str]) -> int:
    """``python -m tests.support.servers redis|postgres``: serve until Ctrl-C."""
    kind = argv[0] if argv else "redis"
    with contextlib.ExitStack() as stack:
        if kind == "redis":
            server: RedisServer | PostgresServer = stack.enter_context(
                RedisServer(stack.enter_context(tempfile.TemporaryDirectory()))
            )
        else:
            server = stack.enter_context(PostgresServer())
        print(server.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
