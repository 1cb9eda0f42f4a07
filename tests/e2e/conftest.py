"""A running platform for end-to-end tests: every service and the gateway as separate processes,
started by the same launcher as `herald run`, against the session's PostgreSQL and NATS, with
email going to a real SMTP sink."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from kernel.settings import Settings
from stack.embedded import EmbeddedNats
from stack.launcher import Stack
from tests.conftest import Infrastructure, TeamCredentials
from tests.e2e.support import HttpSink, SmtpSink, stack_settings, start_http_sink, start_smtp_sink


@dataclass
class RunningStack:
    stack: Stack
    http: httpx.Client
    credentials: TeamCredentials
    sink: SmtpSink

    def address(self, service: str) -> str:
        return self.stack.settings.address(service)


@pytest.fixture(scope="module")
def smtp_sink() -> Iterator[SmtpSink]:
    sink, controller = start_smtp_sink()
    try:
        yield sink
    finally:
        controller.stop()


def session_settings(
    data_dir: Path, infrastructure: Infrastructure, smtp_sink: SmtpSink, **changes: Any
) -> Settings:
    """A stack of our own over the session's PostgreSQL and NATS, mailing to `smtp_sink`."""
    return stack_settings(
        data_dir,
        database_url=infrastructure.database_url,
        nats_url=infrastructure.nats_url,
        smtp_url=smtp_sink.url,
        **changes,
    )


@contextmanager
def started(settings: Settings, smtp_sink: SmtpSink) -> Iterator[RunningStack]:
    """The platform started on `settings` (logs in the data directory), stopped on leaving."""
    stack = Stack(settings, restart_crashed=False, log_directory=settings.data_dir / "logs")
    stack.start()
    assert stack.credentials is not None
    credentials = TeamCredentials(stack.credentials.team_id, stack.credentials.api_key)
    try:
        with httpx.Client(base_url=stack.gateway_url, timeout=30) as http:
            yield RunningStack(stack, http, credentials, smtp_sink)
    finally:
        stack.stop()


@contextmanager
def stack_on_own_nats(
    infrastructure: Infrastructure, smtp_sink: SmtpSink, directory: Path
) -> Iterator[tuple[Stack, EmbeddedNats]]:
    """The platform over the session's PostgreSQL and a NATS server of its own, which a test
    may stop, kill and start again without disturbing the other tests."""
    nats = EmbeddedNats(directory / "nats")
    nats.start()
    settings = stack_settings(
        directory / "stack",
        database_url=infrastructure.database_url,
        nats_url=nats.url,
        smtp_url=smtp_sink.url,
    )
    stack = Stack(settings, restart_crashed=False, log_directory=directory / "logs")
    try:
        stack.start()
        yield stack, nats
    finally:
        stack.stop()
        nats.stop()


@pytest.fixture(scope="module")
def running(
    infrastructure: Infrastructure, smtp_sink: SmtpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    settings = session_settings(tmp_path_factory.mktemp("stack"), infrastructure, smtp_sink)
    with started(settings, smtp_sink) as running:
        yield running


@pytest.fixture(scope="module")
def http_sink() -> Iterator[HttpSink]:
    """A real HTTP server for webhook and provider deliveries, scripted per test."""
    sink = start_http_sink()
    try:
        yield sink
    finally:
        sink.server.shutdown()
