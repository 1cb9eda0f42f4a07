"""What the end-to-end tests share: real SMTP and HTTP sinks, free-port settings, and polling."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    indexes: dict[str, tuple[int, dict[str, list[ReceivedMail]]]] = field(default_factory=dict)

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
        """The mails whose `header` is `value`; headers are parsed once per mail (an index per
        header name), since tests ask this for thousands of values."""
        with self.lock:
            seen, index = self.indexes.get(header, (0, {}))
            for mail in self.received[seen:]:
                index.setdefault(str(mail.message.get(header)), []).append(mail)
            self.indexes[header] = (len(self.received), index)
            return list(index.get(value, []))

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"


def start_smtp_sink() -> tuple[SmtpSink, Controller]:
    sink = SmtpSink(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    return sink, controller


@dataclass
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpSink:
    """A real HTTP server that keeps every request and answers from a script: each path answers
    the statuses queued for it first (e.g. two 503s), then 200."""

    server: ThreadingHTTPServer
    received: list[HttpRequest] = field(default_factory=list)
    answers: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def answer(self, path: str, *statuses: int) -> None:
        with self.lock:
            self.answers[path] = list(statuses)

    def requests_to(self, path: str) -> list[HttpRequest]:
        with self.lock:
            return [request for request in self.received if request.path == path]

    def record(self, request: HttpRequest) -> int:
        with self.lock:
            self.received.append(request)
            queued = self.answers.get(request.path)
            return queued.pop(0) if queued else 200


def start_http_sink() -> HttpSink:
    """An HttpSink serving on a free port in a thread; `sink.server.shutdown()` stops it."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connections
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms wait between

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = HttpRequest(
                self.command, self.path, dict(self.headers.items()), self.rfile.read(length)
            )
            status = sink.record(request)
            answer = b'{"ok": true}' if status < 400 else b'{"error": "scripted failure"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 256  # the default (5) refuses bursts of connections

    sink = HttpSink(Server(("127.0.0.1", free_port()), Handler))
    threading.Thread(target=sink.server.serve_forever, daemon=True).start()
    return sink


def stack_settings(data_dir: Path, **changes: Any) -> Settings:
    """Settings for a stack of our own: every port free, a team id no other test uses."""
    return Settings(
        data_dir=data_dir,
        http_port=free_port(),
        service_addresses={name: f"127.0.0.1:{free_port()}" for name in GRPC_SERVICES},
        metrics_addresses={name: f"127.0.0.1:{free_port()}" for name in GRPC_SERVICES},
        devmail_smtp_port=free_port(),
        dev_team_id=f"e2e-{uuid.uuid4().hex[:10]}",
        log_format="json",
        allow_private_destinations=True,  # webhooks and providers go to local sinks
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
