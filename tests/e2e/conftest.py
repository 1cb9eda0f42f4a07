"""A running platform for end-to-end tests: every service and the gateway as separate processes,
started by the same launcher as `herald run`, against the session's PostgreSQL and NATS, with
email going to a real SMTP sink."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from stack.launcher import Stack
from tests.conftest import Infrastructure, TeamCredentials
from tests.e2e.support import SmtpSink, stack_settings, start_smtp_sink


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


@pytest.fixture(scope="module")
def running(
    infrastructure: Infrastructure, smtp_sink: SmtpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    data_dir = tmp_path_factory.mktemp("stack")
    settings = stack_settings(
        data_dir,
        database_url=infrastructure.database_url,
        nats_url=infrastructure.nats_url,
        smtp_url=smtp_sink.url,
    )
    stack = Stack(settings, restart_crashed=False, log_directory=data_dir / "logs")
    stack.start()
    assert stack.credentials is not None
    credentials = TeamCredentials(stack.credentials.team_id, stack.credentials.api_key)
    try:
        with httpx.Client(base_url=stack.gateway_url, timeout=30) as http:
            yield RunningStack(stack, http, credentials, smtp_sink)
    finally:
        stack.stop()
