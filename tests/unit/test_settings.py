"""Configuration from the environment (kernel.settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel.errors import ConfigurationError
from kernel.settings import Settings
from stack.launcher import Stack

EVERY_VARIABLE = {
    "HERALD_DATABASE_URL": "postgresql://herald@db:5432/herald",
    "HERALD_NATS_URL": "nats://nats:4222",
    "HERALD_DATA_DIR": "/var/lib/herald",
    "HERALD_HTTP_HOST": "0.0.0.0",
    "HERALD_HTTP_PORT": "9090",
    "HERALD_GRPC_LISTEN_HOST": "0.0.0.0",
    "HERALD_INGEST_ADDR": "ingest:7001",
    "HERALD_MATCHER_ADDR": "matcher:7002",
    "HERALD_EXECUTOR_ADDR": "executor:7003",
    "HERALD_TRACKER_ADDR": "tracker:7004",
    "HERALD_DEVMAIL_ADDR": "devmail:7005",
    "HERALD_INGEST_METRICS_ADDR": "ingest:9201",
    "HERALD_MATCHER_METRICS_ADDR": "matcher:9202",
    "HERALD_EXECUTOR_METRICS_ADDR": "executor:9203",
    "HERALD_TRACKER_METRICS_ADDR": "tracker:9204",
    "HERALD_DEVMAIL_METRICS_ADDR": "devmail:9205",
    "HERALD_SMTP_URL": "smtp://user:secret@mail:587",
    "HERALD_DEVMAIL_SMTP_PORT": "2525",
    "HERALD_MAIL_FROM": "Acme <hello@acme.test>",
    "HERALD_DEV_TEAM_ID": "team-dev",
    "HERALD_DEV_API_KEY": "hk_dev",
    "HERALD_LOG_FORMAT": "json",
    "HERALD_LOG_LEVEL": "debug",
    "HERALD_CONSUMER_CONCURRENCY": "4",
    "HERALD_MAX_DELIVERY_ATTEMPTS": "7",
    "HERALD_RETENTION_INTERVAL_SECONDS": "0.5",
    "HERALD_RETENTION_BATCH_SIZE": "100",
}
INTEGER_VARIABLES = [
    "HERALD_HTTP_PORT",
    "HERALD_DEVMAIL_SMTP_PORT",
    "HERALD_CONSUMER_CONCURRENCY",
    "HERALD_MAX_DELIVERY_ATTEMPTS",
    "HERALD_RETENTION_BATCH_SIZE",
]


def test_an_empty_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({})

    assert settings == Settings()
    assert settings.database_url is None and settings.nats_url is None
    assert settings.http_port == 8080
    assert settings.address("ingest") == "127.0.0.1:50051"
    assert settings.address("devmail") == "127.0.0.1:50055"
    assert settings.metrics_listen_address("ingest") == "127.0.0.1:9101"
    assert settings.metrics_listen_address("devmail") == "127.0.0.1:9105"
    assert settings.max_delivery_attempts == 5


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(EVERY_VARIABLE)

    assert settings == Settings(
        database_url="postgresql://herald@db:5432/herald",
        nats_url="nats://nats:4222",
        data_dir=Path("/var/lib/herald"),
        http_host="0.0.0.0",
        http_port=9090,
        grpc_listen_host="0.0.0.0",
        service_addresses={
            "ingest": "ingest:7001",
            "matcher": "matcher:7002",
            "executor": "executor:7003",
            "tracker": "tracker:7004",
            "devmail": "devmail:7005",
        },
        metrics_addresses={
            "ingest": "ingest:9201",
            "matcher": "matcher:9202",
            "executor": "executor:9203",
            "tracker": "tracker:9204",
            "devmail": "devmail:9205",
        },
        smtp_url="smtp://user:secret@mail:587",
        devmail_smtp_port=2525,
        mail_from="Acme <hello@acme.test>",
        dev_team_id="team-dev",
        dev_api_key="hk_dev",
        log_format="json",
        log_level="debug",
        consumer_concurrency=4,
        max_delivery_attempts=7,
        retention_interval_seconds=0.5,
        retention_batch_size=100,
    )


def test_empty_optional_values_mean_unset() -> None:
    settings = Settings.from_env(
        {
            "HERALD_DATABASE_URL": "",
            "HERALD_NATS_URL": "",
            "HERALD_SMTP_URL": "",
            "HERALD_DEV_TEAM_ID": "",
            "HERALD_DEV_API_KEY": "",
            "HERALD_HTTP_PORT": "",
        }
    )

    assert (settings.database_url, settings.nats_url, settings.smtp_url) == (None, None, None)
    assert (settings.dev_team_id, settings.dev_api_key) == (None, None)
    assert settings.http_port == 8080


@pytest.mark.parametrize("variable", INTEGER_VARIABLES)
@pytest.mark.parametrize("raw", ["eighty", "80.5", "0x50"])
def test_a_variable_that_is_not_a_whole_number_is_a_configuration_error(variable: str, raw: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({variable: raw})

    assert raised.value.message == f"{variable} must be a whole number, got {raw!r}"


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("HERALD_RETENTION_INTERVAL_SECONDS", "soon", "must be a number greater than 0, got 'soon'"),
        ("HERALD_RETENTION_INTERVAL_SECONDS", "0", "must be a number greater than 0, got '0'"),
        ("HERALD_RETENTION_INTERVAL_SECONDS", "-5", "must be a number greater than 0, got '-5'"),
        ("HERALD_RETENTION_INTERVAL_SECONDS", "nan", "must be a number greater than 0, got 'nan'"),
        ("HERALD_RETENTION_BATCH_SIZE", "0", "must be a whole number greater than 0, got 0"),
    ],
)
def test_retention_settings_must_be_positive(variable: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({variable: raw})

    assert raised.value.message == f"{variable} {message}"


def test_one_service_address_changes_alone() -> None:
    settings = Settings.from_env({"HERALD_MATCHER_ADDR": "10.0.0.5:6000"})

    assert settings.address("matcher") == "10.0.0.5:6000"
    assert settings.address("ingest") == "127.0.0.1:50051"


def test_a_service_listens_on_its_port_on_the_listen_host() -> None:
    settings = Settings.from_env(
        {"HERALD_MATCHER_ADDR": "matcher.internal:6000", "HERALD_GRPC_LISTEN_HOST": "0.0.0.0"}
    )

    assert settings.listen_address("matcher") == "0.0.0.0:6000"
    assert settings.listen_address("ingest") == "0.0.0.0:50051"


def test_the_listen_address_of_an_ipv6_address_keeps_its_port() -> None:
    settings = Settings.from_env({"HERALD_TRACKER_ADDR": "[::1]:7004"})

    assert settings.listen_address("tracker") == "127.0.0.1:7004"


def test_defaults_do_not_share_their_address_table() -> None:
    first, second = Settings(), Settings()

    assert first.service_addresses is not second.service_addresses


def test_required_urls_name_the_variable_when_missing() -> None:
    settings = Settings()

    with pytest.raises(ConfigurationError, match="HERALD_DATABASE_URL is not set"):
        settings.require_database_url()
    with pytest.raises(ConfigurationError, match="HERALD_NATS_URL is not set"):
        settings.require_nats_url()


def test_required_urls_are_answered_when_set() -> None:
    settings = Settings.from_env(EVERY_VARIABLE)

    assert settings.require_database_url() == "postgresql://herald@db:5432/herald"
    assert settings.require_nats_url() == "nats://nats:4222"


def test_with_changes_makes_a_new_settings() -> None:
    settings = Settings()

    changed = settings.with_changes(http_port=1234)

    assert changed.http_port == 1234
    assert settings.http_port == 8080


def test_an_address_list_names_a_service_s_replicas() -> None:
    settings = Settings.from_env({"HERALD_INGEST_ADDR": "127.0.0.1:7001, 127.0.0.1:7011"})
    assert settings.addresses("ingest") == ["127.0.0.1:7001", "127.0.0.1:7011"]
    assert settings.address("ingest") == "127.0.0.1:7001"
    assert settings.target("ingest") == "ipv4:127.0.0.1:7001,127.0.0.1:7011"
    assert settings.listen_address("ingest") == "127.0.0.1:7001"
    assert settings.target("matcher") == settings.address("matcher") == "127.0.0.1:50052"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("ingest-a:7001,ingest-b:7001", "give each as an IPv4 address and port"),
        ("127.0.0.1:7001,127.0.0.1:7001", "lists one address twice"),
        ("127.0.0.1:7001,127.0.0.1", "must be host:port"),
        ("127.0.0.1:7001,", "must be host:port"),
    ],
)
def test_a_bad_address_list_says_what_to_fix(raw: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says) as raised:
        Settings.from_env({"HERALD_INGEST_ADDR": raw})
    assert "HERALD_INGEST_ADDR" in str(raised.value)


def test_the_launcher_runs_one_process_per_replica(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path).with_changes(
        service_addresses={
            **Settings().service_addresses,
            "ingest": "127.0.0.1:7001,127.0.0.1:7011,127.0.0.1:7021",
        }
    )
    stack = Stack(settings)
    ingest = [name for name in stack.processes if name.startswith("ingest")]
    assert ingest == ["ingest", "ingest-2", "ingest-3"]
    assert stack.replica_address("ingest-3") == "127.0.0.1:7021"
    environment = stack.environment("ingest-2")
    assert environment["HERALD_INGEST_ADDR"] == "127.0.0.1:7011"
    assert (
        stack.environment("gateway")["HERALD_INGEST_ADDR"] == "127.0.0.1:7001,127.0.0.1:7011,127.0.0.1:7021"
    )
    # Each replica serves /metrics on a port of its own: the default's, then + 10, + 20.
    assert environment["HERALD_INGEST_METRICS_ADDR"] == "127.0.0.1:9111"
    assert [stack.metrics_address(name) for name in ingest] == [
        "127.0.0.1:9101",
        "127.0.0.1:9111",
        "127.0.0.1:9121",
    ]


def test_replicas_take_their_metrics_addresses_from_the_list(tmp_path: Path) -> None:
    settings = Settings.from_env({
        "HERALD_DATA_DIR": str(tmp_path),
        "HERALD_INGEST_ADDR": "127.0.0.1:7001,127.0.0.1:7011",
        "HERALD_INGEST_METRICS_ADDR": "127.0.0.1:8001,127.0.0.1:8002",
    })  # fmt: skip
    stack = Stack(settings)
    assert stack.metrics_address("ingest") == "127.0.0.1:8001"
    assert stack.environment("ingest-2")["HERALD_INGEST_METRICS_ADDR"] == "127.0.0.1:8002"
    assert stack.environment("gateway")["HERALD_INGEST_METRICS_ADDR"] == "127.0.0.1:8001,127.0.0.1:8002"
    assert stack.metrics_url("ingest-2") == "http://127.0.0.1:8002/metrics"
    assert settings.metrics_listen_address("ingest") == "127.0.0.1:8001"


def test_a_bad_metrics_address_says_what_to_fix() -> None:
    with pytest.raises(ConfigurationError, match="HERALD_TRACKER_METRICS_ADDR must be host:port"):
        Settings.from_env({"HERALD_TRACKER_METRICS_ADDR": "9104"})
