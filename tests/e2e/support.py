"""What the end-to-end tests share: a real SMTP sink, free-port settings, and polling."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, TypeVar

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from kernel.settings import Settings
from stack.embedded import free_port
from stack.launcher import GRPC_SERVICES

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.1) -> T:
    """The first truthy value `probe` returns within `timeout` seconds; AssertionError otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


@dataclass
class ReceivedMail:
    rcpt_to: list[str]
    message: EmailMessage

    @property
    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        return part.get_content() if part is not None else ""


@dataclass
class SmtpSink:
    """A real SMTP server (aiosmtpd) that keeps every message it accepts."""

    port: int
    received: list[ReceivedMail] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message = BytesParser(policy=policy.default).parsebytes(envelope.original_content or b"")
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.received.append(ReceivedMail(list(envelope.rcpt_tos), message))
        return "250 Message accepted"

    def messages_for(self, address: str) -> list[ReceivedMail]:
        with self.lock:
            return [mail for mail in self.received if address in mail.rcpt_to]

    def messages_with(self, header: str, value: str) -> list[ReceivedMail]:
        with self.lock:
            return [mail for mail in self.received if mail.message.get(header) == value]

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"


def start_smtp_sink() -> tuple[SmtpSink, Controller]:
    sink = SmtpSink(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    return sink, controller


def stack_settings(data_dir: Path, **changes: Any) -> Settings:
    """Settings for a stack of our own: every port free, a team id no other test uses."""
    return Settings(
        data_dir=data_dir,
        http_port=free_port(),
        service_addresses={name: f"127.0.0.1:{free_port()}" for name in GRPC_SERVICES},
        devmail_smtp_port=free_port(),
        dev_team_id=f"e2e-{uuid.uuid4().hex[:10]}",
        log_format="json",
    ).with_changes(**changes)


SENDMATOR_EXAMPLE_1 = {
    "event_name": "user_signup",
    "user_info": {"contact_external_id": "user_12345", "email": "john.doe@example.com", "name": "John Doe"},
    "source": {"type": "web_signup", "ip": "192.168.1.1"},
    "event_data": {"signup_method": "google_oauth", "referral_code": "FRIEND2024"},
}

WELCOME_WORKFLOW = {
    "key": "welcome-email",
    "name": "Welcome Email",
    "trigger": {"event": "user_signup"},
    "steps": [{"type": "email", "subject": "Welcome, {{contact.name}}", "body": "Hello {{user_name}}"}],
    "active": True,
}
