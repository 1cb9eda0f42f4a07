"""The development capture inbox: a real SMTP server that keeps what it receives.

`herald run` starts it when no HERALD_SMTP_URL is configured, so a newcomer sees the email the
platform sent: `GET /api/v1/dev/mail` lists the captured messages of the caller's team (matched
on the X-Herald-Project header the executor writes). Messages are kept in a Maildir under the
data directory, so they survive restarts. Run alone with `python -m services.executor.devmail`.
"""

from __future__ import annotations

import asyncio
import mailbox
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import grpc
import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from herald.executor.v1 import devmail_pb2, devmail_pb2_grpc
from kernel.auth import Authenticator
from kernel.clock import isoformat_ms, utcnow
from kernel.grpc_server import ServiceRegistration
from kernel.service import Runtime, run_service

log = structlog.get_logger(__name__)
SERVICE_NAME = devmail_pb2.DESCRIPTOR.services_by_name["DevMailService"].full_name
RECEIVED_HEADER = "X-Herald-Captured-At"
DEFAULT_LIMIT, MAX_LIMIT = 50, 500
Context = grpc.aio.ServicerContext[Any, Any]


class CaptureInbox:
    """aiosmtpd handler: every accepted message goes into the Maildir."""

    def __init__(self, directory: Path):
        directory.parent.mkdir(parents=True, exist_ok=True)
        self._maildir = mailbox.Maildir(directory, create=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        stamp = f"{RECEIVED_HEADER}: {isoformat_ms(utcnow())}\r\n".encode()
        rcpt = f"X-Herald-Rcpt-To: {', '.join(envelope.rcpt_tos)}\r\n".encode()
        await asyncio.to_thread(self._maildir.add, stamp + rcpt + content)
        log.info("devmail.captured", rcpt_to=envelope.rcpt_tos)
        return "250 Message accepted for delivery"

    def messages(self, project_id: str, limit: int) -> list[devmail_pb2.DevMail]:
        found = []
        parser = BytesParser(policy=policy.default)
        for key in self._maildir.iterkeys():
            try:
                raw = self._maildir.get_bytes(key)
            except KeyError:
                continue
            message = parser.parsebytes(raw)
            if message.get("X-Herald-Project") != project_id:
                continue
            assert isinstance(message, EmailMessage)
            found.append(_dev_mail(key, message))
        found.sort(key=lambda mail: mail.received_at, reverse=True)
        return found[:limit]

    def erase(self, project_id: str, values: list[str]) -> int:
        """Delete the project's messages that contain one of `values` (case-insensitive); how many."""
        needles = [value.lower().encode() for value in values if value.strip()]
        if not needles:
            return 0
        parser = BytesParser(policy=policy.default)
        erased = 0
        for key in list(self._maildir.iterkeys()):
            try:
                raw = self._maildir.get_bytes(key)
            except KeyError:
                continue
            if parser.parsebytes(raw, headersonly=True).get("X-Herald-Project") != project_id:
                continue
            lowered = raw.lower()
            if any(needle in lowered for needle in needles):
                self._maildir.discard(key)
                erased += 1
        return erased


def _dev_mail(key: str, message: EmailMessage) -> devmail_pb2.DevMail:
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    return devmail_pb2.DevMail(
        id=key,
        received_at=str(message.get(RECEIVED_HEADER, "")),
        message_id=str(message.get("Message-ID", "")),
        mail_from=str(message.get("From", "")),
        rcpt_to=[
            address.strip() for address in str(message.get("X-Herald-Rcpt-To", "")).split(",") if address
        ],
        subject=str(message.get("Subject", "")),
        text=text_part.get_content() if text_part is not None else "",
        html=html_part.get_content() if html_part is not None else "",
    )


class DevMailServicer(devmail_pb2_grpc.DevMailServiceServicer):
    def __init__(self, authenticator: Authenticator, inbox: CaptureInbox):
        self._auth = authenticator
        self._inbox = inbox

    async def ListDevMail(
        self, request: devmail_pb2.ListDevMailRequest, context: Context
    ) -> devmail_pb2.ListDevMailResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        limit = min(request.limit, MAX_LIMIT) if request.limit > 0 else DEFAULT_LIMIT
        messages = await asyncio.to_thread(self._inbox.messages, team.id, limit)
        return devmail_pb2.ListDevMailResponse(messages=messages)

    async def EraseDevMail(
        self, request: devmail_pb2.EraseDevMailRequest, context: Context
    ) -> devmail_pb2.EraseDevMailResponse:
        team = await self._auth.authenticate(context.invocation_metadata())
        erased = await asyncio.to_thread(self._inbox.erase, team.id, list(request.values))
        log.info("devmail.erased", team_id=team.id, messages=erased)
        return devmail_pb2.EraseDevMailResponse(erased=erased)


async def serve(runtime: Runtime) -> None:
    settings = runtime.settings
    inbox = CaptureInbox(settings.data_dir / "devmail")
    loop = asyncio.get_running_loop()
    smtp_server = await loop.create_server(
        lambda: SMTP(inbox, hostname="herald-devmail"), host="127.0.0.1", port=settings.devmail_smtp_port
    )
    log.info("devmail.listening", smtp=f"127.0.0.1:{settings.devmail_smtp_port}")
    try:
        await runtime.serve(
            [
                ServiceRegistration(
                    SERVICE_NAME,
                    DevMailServicer(runtime.authenticator(), inbox),
                    devmail_pb2_grpc.add_DevMailServiceServicer_to_server,
                )
            ]
        )
    finally:
        smtp_server.close()
        await smtp_server.wait_closed()


def main() -> None:
    run_service("devmail", serve, use_bus=False)


if __name__ == "__main__":
    main()
