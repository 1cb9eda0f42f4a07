"""Herald's configuration: one frozen dataclass, built once from the environment in `main`."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from kernel.errors import ConfigurationError

SERVICES = ("ingest", "matcher", "executor", "tracker", "devmail")
DEFAULT_GRPC_PORTS = {
    "ingest": 50051,
    "matcher": 50052,
    "executor": 50053,
    "tracker": 50054,
    "devmail": 50055,
}
# Where each service serves Prometheus /metrics (9100 is node_exporter's).
DEFAULT_METRICS_PORTS = {
    "ingest": 9101,
    "matcher": 9102,
    "executor": 9103,
    "tracker": 9104,
    "devmail": 9105,
}


@dataclass(frozen=True)
class Settings:
    """Everything a Herald process needs to know about its surroundings.

    Each value comes from one `HERALD_*` environment variable (see docs/configuration.md).
    """

    database_url: str | None = None
    nats_url: str | None = None
    data_dir: Path = Path(".herald")
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_listen_host: str = "127.0.0.1"
    service_addresses: Mapping[str, str] = field(
        default_factory=lambda: {name: f"127.0.0.1:{port}" for name, port in DEFAULT_GRPC_PORTS.items()}
    )
    metrics_addresses: Mapping[str, str] = field(
        default_factory=lambda: {name: f"127.0.0.1:{port}" for name, port in DEFAULT_METRICS_PORTS.items()}
    )
    smtp_url: str | None = None
    devmail_smtp_port: int = 1025
    mail_from: str = "Herald <herald@localhost>"
    dev_team_id: str | None = None
    dev_api_key: str | None = None
    log_format: str = "auto"
    log_level: str = "info"
    consumer_concurrency: int = 16
    max_delivery_attempts: int = 5
    # Webhooks and providers may reach loopback and private addresses (development, tests).
    allow_private_destinations: bool = False
    # How often each service purges what is older than its projects' retention, and how many
    # rows one statement deletes at most.
    retention_interval_seconds: float = 600.0
    retention_batch_size: int = 5000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()
        addresses = dict(defaults.service_addresses)
        for name in SERVICES:
            addresses[name] = _address(env, f"HERALD_{name.upper()}_ADDR", addresses[name])
        metrics = dict(defaults.metrics_addresses)
        for name in SERVICES:
            metrics[name] = _address(env, f"HERALD_{name.upper()}_METRICS_ADDR", metrics[name])
        return cls(
            database_url=env.get("HERALD_DATABASE_URL") or None,
            nats_url=env.get("HERALD_NATS_URL") or None,
            data_dir=Path(env.get("HERALD_DATA_DIR", str(defaults.data_dir))),
            http_host=env.get("HERALD_HTTP_HOST", defaults.http_host),
            http_port=_integer(env, "HERALD_HTTP_PORT", defaults.http_port),
            grpc_listen_host=env.get("HERALD_GRPC_LISTEN_HOST", defaults.grpc_listen_host),
            service_addresses=addresses,
            metrics_addresses=metrics,
            smtp_url=env.get("HERALD_SMTP_URL") or None,
            devmail_smtp_port=_integer(env, "HERALD_DEVMAIL_SMTP_PORT", defaults.devmail_smtp_port),
            mail_from=env.get("HERALD_MAIL_FROM", defaults.mail_from),
            dev_team_id=env.get("HERALD_DEV_TEAM_ID") or None,
            dev_api_key=env.get("HERALD_DEV_API_KEY") or None,
            log_format=env.get("HERALD_LOG_FORMAT", defaults.log_format),
            log_level=env.get("HERALD_LOG_LEVEL", defaults.log_level),
            consumer_concurrency=_integer(env, "HERALD_CONSUMER_CONCURRENCY", defaults.consumer_concurrency),
            max_delivery_attempts=_integer(
                env, "HERALD_MAX_DELIVERY_ATTEMPTS", defaults.max_delivery_attempts
            ),
            allow_private_destinations=_flag(env, "HERALD_ALLOW_PRIVATE_DESTINATIONS"),
            retention_interval_seconds=_positive_number(
                env, "HERALD_RETENTION_INTERVAL_SECONDS", defaults.retention_interval_seconds
            ),
            retention_batch_size=_positive_integer(
                env, "HERALD_RETENTION_BATCH_SIZE", defaults.retention_batch_size
            ),
        )

    def with_changes(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def address(self, service: str) -> str:
        """The host:port where `service` (its first replica) answers gRPC."""
        return self.addresses(service)[0]

    def addresses(self, service: str) -> list[str]:
        """Every replica of `service`: HERALD_<SERVICE>_ADDR may list several, comma-separated."""
        return self.service_addresses[service].split(",")

    def target(self, service: str) -> str:
        """The gRPC channel target that reaches `service`: calls spread over its replicas
        (kernel.clients.channel balances them round-robin)."""
        addresses = self.addresses(service)
        return addresses[0] if len(addresses) == 1 else "ipv4:" + ",".join(addresses)

    def listen_address(self, service: str) -> str:
        """The host:port that `service` binds: its (first) port, on the listen host."""
        port = self.address(service).rsplit(":", 1)[1]
        return f"{self.grpc_listen_host}:{port}"

    def metrics_listen_address(self, service: str) -> str:
        """The host:port where `service` (its first replica) serves /metrics, on the listen host."""
        port = self.metrics_addresses[service].split(",")[0].rsplit(":", 1)[1]
        return f"{self.grpc_listen_host}:{port}"

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigurationError(
                "HERALD_DATABASE_URL is not set: start the whole platform with `herald run`, "
                "or point it at a PostgreSQL database (postgresql://user@host:port/dbname)"
            )
        return self.database_url

    def require_nats_url(self) -> str:
        if not self.nats_url:
            raise ConfigurationError(
                "HERALD_NATS_URL is not set: start the whole platform with `herald run`, "
                "or point it at a NATS server with JetStream (nats://host:4222)"
            )
        return self.nats_url


def _address(env: Mapping[str, str], name: str, default: str) -> str:
    """One host:port, or several comma-separated (the service's replicas, on IPv4 addresses)."""
    raw = env.get(name) or default
    addresses = [entry.strip() for entry in raw.split(",")]
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(
                f"{name} must be host:port (e.g. 127.0.0.1:50051), or several separated by commas; "
                f"got {raw!r}"
            )
        if len(addresses) > 1 and not _is_ipv4(host):
            raise ConfigurationError(
                f"{name} lists several replicas: give each as an IPv4 address and port "
                f"(e.g. 127.0.0.1:50051,127.0.0.1:50061); got {address!r}"
            )
    if len(set(addresses)) != len(addresses):
        raise ConfigurationError(f"{name} lists one address twice: {raw!r}")
    return ",".join(addresses)


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}")


def _positive_number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number greater than 0, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigurationError(f"{name} must be a number greater than 0, got {raw!r}")
    return value


def _positive_integer(env: Mapping[str, str], name: str, default: int) -> int:
    value = _integer(env, name, default)
    if value <= 0:
        raise ConfigurationError(f"{name} must be a whole number greater than 0, got {value}")
    return value


def _integer(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}") from None
