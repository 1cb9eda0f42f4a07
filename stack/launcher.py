"""The whole platform on one machine: embedded PostgreSQL and NATS (unless HERALD_DATABASE_URL /
HERALD_NATS_URL name external ones), migrations, development credentials, and every service and
the gateway as separate processes. `herald run` and the end-to-end tests both use `Stack`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kernel.database import create_engine, session_factory
from kernel.errors import ConfigurationError, FailedPrecondition
from kernel.migrations import upgrade_all
from kernel.settings import Settings
from kernel.tenancy import ensure_team, issue_key
from stack.embedded import EmbeddedNats, EmbeddedPostgres, port_is_free, promise_ports
from stack.supervisor import Echo, Supervisor

MODULES = {
    "devmail": "services.executor.devmail",
    "ingest": "services.ingest",
    "matcher": "services.matcher",
    "executor": "services.executor",
    "tracker": "services.tracker",
    "gateway": "gateway",
}
GRPC_SERVICES = ("devmail", "ingest", "matcher", "executor", "tracker")
READY_TIMEOUT_SECONDS = 60.0
REPLICA_METRICS_PORT_STEP = 10
STACK_FILE = "stack.json"
CREDENTIALS_FILE = "dev-credentials.json"


def _service(process: str) -> str:
    """The service a process runs: `ingest-2` runs ingest."""
    return process.partition("-")[0]


class StackError(Exception):
    """The platform could not start; the message says which process and why."""


@dataclass(frozen=True)
class DevCredentials:
    team_id: str
    api_key: str


class Stack:
    def __init__(
        self,
        settings: Settings,
        *,
        durable: bool = True,
        restart_crashed: bool = True,
        log_directory: Path | None = None,
        echo_logs: bool = False,
    ):
        """Each process's output goes to `log_directory`/<process>.log (JSON lines, what `herald
        trace` reads) when given, and also to our stderr with `echo_logs` (as `herald run` does);
        else to our stderr only."""
        self.settings = settings.with_changes(data_dir=settings.data_dir.resolve())
        self.durable = durable
        self.log_directory = log_directory
        self.echo_logs = echo_logs
        self.supervisor = Supervisor(restart_crashed=restart_crashed)
        self.postgres: EmbeddedPostgres | None = None
        self.nats: EmbeddedNats | None = None
        self.database_url = settings.database_url or ""
        self.nats_url = settings.nats_url or ""
        self.credentials: DevCredentials | None = None

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def processes(self) -> tuple[str, ...]:
        """Every process to run: a service with several addresses runs one replica on each
        (`ingest`, `ingest-2`, …)."""
        names: list[str] = []
        for service in MODULES:
            if service == "devmail" and self.settings.smtp_url:
                continue
            replicas = len(self.settings.addresses(service)) if service in GRPC_SERVICES else 1
            names += [service] + [f"{service}-{n}" for n in range(2, replicas + 1)]
        return tuple(names)

    def replica_address(self, name: str) -> str:
        """The one address the process `name` (a service or one of its replicas) answers on."""
        service, _, number = name.partition("-")
        return self.settings.addresses(service)[int(number or 1) - 1]

    def metrics_address(self, name: str) -> str:
        """Where the process `name` serves /metrics: the n-th of its service's metrics addresses;
        a replica the list has no address for takes the last one's port + 10, + 20, …"""
        service, _, number = name.partition("-")
        addresses = self.settings.metrics_addresses[service].split(",")
        index = int(number or 1) - 1
        if index < len(addresses):
            return addresses[index]
        host, _, port = addresses[-1].rpartition(":")
        return f"{host}:{int(port) + REPLICA_METRICS_PORT_STEP * (index - len(addresses) + 1)}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.settings.http_host}:{self.settings.http_port}"

    def metrics_url(self, name: str) -> str:
        """Where Prometheus scrapes the process `name`."""
        if name == "gateway":
            return f"{self.gateway_url}/metrics"
        return f"http://{self.metrics_address(name)}/metrics"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_ports()
        try:
            if not self.database_url:
                self.postgres = EmbeddedPostgres(self.data_dir / "postgres", durable=self.durable)
                self.database_url = self.postgres.start()
            if not self.nats_url:
                self.nats = EmbeddedNats(self.data_dir / "nats")
                self.nats_url = self.nats.start()
            upgrade_all(self.database_url)
            self.credentials = asyncio.run(ensure_dev_credentials(self.database_url, self.settings))
            for name in self.processes:
                self.start_process(name)
            self.wait_ready()
            self._write_stack_file()
        except BaseException:
            self.stop()
            raise

    def _check_ports(self) -> None:
        wanted = {"HERALD_HTTP_PORT": self.settings.http_port}
        for name in self.processes:
            if name != "gateway":
                service = _service(name)
                wanted[f"HERALD_{service.upper()}_ADDR {name}"] = int(
                    self.replica_address(name).rsplit(":", 1)[1]
                )
                wanted[f"HERALD_{service.upper()}_METRICS_ADDR {name}"] = int(
                    self.metrics_address(name).rsplit(":", 1)[1]
                )
        if "devmail" in self.processes:
            wanted["HERALD_DEVMAIL_SMTP_PORT"] = self.settings.devmail_smtp_port
        busy = [f"{port} ({variable})" for variable, port in wanted.items() if not port_is_free(port)]
        if busy:
            raise ConfigurationError(
                f"port {', '.join(busy)} already in use: stop what uses it, or choose "
                "another port with the variable named"
            )
        promise_ports(wanted.values())  # the embedded servers must not pick them meanwhile

    def environment(self, name: str = "") -> dict[str, str]:
        """The environment of process `name`: a replica binds its own address; everyone else
        reaches a service through all of its replicas."""
        settings = self.settings
        env = {
            **os.environ,
            "HERALD_DATABASE_URL": self.database_url,
            "HERALD_NATS_URL": self.nats_url,
            "HERALD_DATA_DIR": str(settings.data_dir),
            "HERALD_HTTP_HOST": settings.http_host,
            "HERALD_HTTP_PORT": str(settings.http_port),
            "HERALD_DEVMAIL_SMTP_PORT": str(settings.devmail_smtp_port),
            # Log files are JSON lines, whatever the terminal shows (`herald trace` reads them).
            "HERALD_LOG_FORMAT": "json" if self.log_directory is not None else settings.log_format,
            "HERALD_LOG_LEVEL": settings.log_level,
            "HERALD_RETENTION_INTERVAL_SECONDS": str(settings.retention_interval_seconds),
            "HERALD_RETENTION_BATCH_SIZE": str(settings.retention_batch_size),
            "PYTHONUNBUFFERED": "1",
        }
        for service in GRPC_SERVICES:
            env[f"HERALD_{service.upper()}_ADDR"] = settings.service_addresses[service]
            env[f"HERALD_{service.upper()}_METRICS_ADDR"] = settings.metrics_addresses[service]
        if name and _service(name) in GRPC_SERVICES:
            env[f"HERALD_{_service(name).upper()}_ADDR"] = self.replica_address(name)
            env[f"HERALD_{_service(name).upper()}_METRICS_ADDR"] = self.metrics_address(name)
        if settings.smtp_url:
            env["HERALD_SMTP_URL"] = settings.smtp_url
        if settings.allow_private_destinations:
            env["HERALD_ALLOW_PRIVATE_DESTINATIONS"] = "true"
        return env

    def start_process(self, name: str) -> None:
        log_path = None
        if self.log_directory is not None:
            self.log_directory.mkdir(parents=True, exist_ok=True)
            log_path = self.log_directory / f"{name}.log"
        command = [sys.executable, "-m", MODULES[_service(name)]]
        echo = Echo(console=self._console()) if self.echo_logs and log_path is not None else None
        self.supervisor.start(name, command, self.environment(name), log_path, echo)

    def _console(self) -> bool:
        """Whether echoed lines are shown as console lines rather than as the JSON in the files."""
        log_format = self.settings.log_format
        return log_format == "console" or (log_format == "auto" and sys.stderr.isatty())

    def kill(self, name: str) -> None:
        self.supervisor.kill(name)

    def restart(self, name: str) -> None:
        self.supervisor.restart(name)
        self.wait_ready([name])

    def wait_ready(self, names: tuple[str, ...] | list[str] | None = None) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        for name in names or self.processes:
            while not self._answers(name):
                if self.supervisor.pid(name) is None:
                    raise StackError(f"{name} exited while starting{self._log_hint(name)}")
                if time.monotonic() > deadline:
                    raise StackError(
                        f"{name} did not become ready in {READY_TIMEOUT_SECONDS:.0f}s{self._log_hint(name)}"
                    )
                time.sleep(0.1)

    def _log_hint(self, name: str) -> str:
        if self.log_directory is None:
            return ""
        path = self.log_directory / f"{name}.log"
        tail = path.read_text(errors="replace").splitlines()[-20:] if path.exists() else []
        return f"; last lines of {path.name}:\n" + "\n".join(tail)

    def _answers(self, name: str) -> bool:
        if name == "gateway":
            try:
                with urllib.request.urlopen(f"{self.gateway_url}/healthz", timeout=1) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False
        with grpc.insecure_channel(self.replica_address(name)) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def watch(self) -> list[str]:
        """Restart processes that died (when restart_crashed); returns the names that died."""
        return self.supervisor.check()

    def stop(self) -> None:
        grpc_processes = [name for name in self.processes if name != "gateway"]
        self.supervisor.stop_all(order=["gateway", *reversed(grpc_processes)])
        if self.nats is not None:
            self.nats.stop()
        if self.postgres is not None:
            self.postgres.stop()
        (self.data_dir / STACK_FILE).unlink(missing_ok=True)

    def _write_stack_file(self) -> None:
        path = self.data_dir / STACK_FILE
        path.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "database_url": self.database_url,
                    "nats_url": self.nats_url,
                    "gateway": self.gateway_url,
                    "services": {
                        name: self.settings.service_addresses[name]
                        for name in GRPC_SERVICES
                        if name in self.processes
                    },
                    "metrics": {name: self.metrics_url(name) for name in self.processes},
                    "logs": str(self.log_directory) if self.log_directory is not None else None,
                },
                indent=2,
            )
        )
        path.chmod(0o600)

    def summary(self) -> str:
        lines = ["", "Herald is running.", f"  Gateway (REST):   {self.gateway_url}"]
        lines += [
            f"  {name:<17} {self.settings.service_addresses[name].replace(',', ', ')} (gRPC)"
            for name in GRPC_SERVICES
            if name in self.processes
        ]
        lines += [
            f"  PostgreSQL:       {self.database_url}" + (" (embedded)" if self.postgres else ""),
            f"  NATS JetStream:   {self.nats_url}" + (" (embedded)" if self.nats else ""),
        ]
        lines.append(f"  Data:             {self.data_dir}")
        if self.log_directory is not None:
            lines.append(f"  Logs:             {self.log_directory} (`herald trace TRIGGER_ID` reads them)")
        lines.append("  Metrics:")
        lines += [f"    {name:<15} {self.metrics_url(name)}" for name in self.processes]
        if "devmail" in self.processes:
            lines.append(
                f"  Captured mail:    {self.gateway_url}/api/v1/dev/mail "
                f"(SMTP 127.0.0.1:{self.settings.devmail_smtp_port})"
            )
        if self.credentials is not None:
            lines += [
                "",
                "Development credentials:",
                f"  X-Team-ID: {self.credentials.team_id}",
                f"  X-API-Key: {self.credentials.api_key}",
            ]
        lines += ["", "Press Ctrl-C to stop.", ""]
        return "\n".join(lines)


async def ensure_dev_credentials(database_url: str, settings: Settings) -> DevCredentials:
    """The development team and key: from HERALD_DEV_TEAM_ID / HERALD_DEV_API_KEY, else the ones
    this data directory used before, else new ones. The key is stored hashed in the database; the
    data directory keeps its text (mode 600) so that `herald run` can print it again."""
    path = settings.data_dir / CREDENTIALS_FILE
    saved = json.loads(path.read_text()) if path.exists() else {}
    team_id = settings.dev_team_id or saved.get("team_id") or "dev-team"
    api_key = settings.dev_api_key or (saved.get("api_key") if saved.get("team_id") == team_id else None)
    engine = create_engine(database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session, session.begin():
            await ensure_team(session, team_id, name="Development team")
            try:
                issued = await issue_key(session, team_id, label="development", secret=api_key)
            except FailedPrecondition:
                if settings.dev_api_key:
                    raise  # HERALD_DEV_API_KEY names a revoked key: say so rather than bring it back
                issued = await issue_key(session, team_id, label="development")
    finally:
        await engine.dispose()
    path.write_text(json.dumps({"team_id": team_id, "api_key": issued.secret}))
    path.chmod(0o600)
    return DevCredentials(team_id, issued.secret)
