"""The development capture inbox: a real SMTP server writing a Maildir, and DevMailService over gRPC."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from aiosmtpd.smtp import SMTP
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from herald.executor.v1 import devmail_pb2, devmail_pb2_grpc
from kernel.auth import Authenticator
from kernel.grpc_server import ServiceRegistration, create_server
from services.executor.devmail import SERVICE_NAME, CaptureInbox, DevMailServicer
from services.executor.domain import OutgoingEmail
from services.executor.senders import SmtpEmailSender, SmtpServer
from tests.conftest import TeamCredentials

MAIL_FROM = "Herald <noreply@herald.test>"


@pytest.fixture
async def capture(tmp_path: Path) -> AsyncIterator[tuple[CaptureInbox, SmtpEmailSender, Path]]:
    """A CaptureInbox behind a real SMTP server on a free port, and a sender pointed at it."""
    directory = tmp_path / "devmail"
    inbox = CaptureInbox(directory)
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(inbox, hostname="devmail.herald.test"), host="127.0.0.1", port=0
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield inbox, SmtpEmailSender(SmtpServer("127.0.0.1", port), MAIL_FROM, timeout=5), directory
    finally:
        server.close()
        await server.wait_closed()


def email_for(project_id: str, subject: str, *, html: str = "") -> OutgoingEmail:
    return OutgoingEmail(
        to="ada@example.com",
        subject=subject,
        text=f"text of {subject}",
        html=html,
        message_id=f"<{uuid.uuid4()}@herald.test>",
        headers={"X-Herald-Project": project_id},
    )


async def send_in_order(sender: SmtpEmailSender, emails: list[OutgoingEmail]) -> None:
    for email in emails:
        await sender.send(email)
        await asyncio.sleep(0.003)  # capture stamps have millisecond resolution


async def test_captured_mail_is_listed_per_project_newest_first(
    capture: tuple[CaptureInbox, SmtpEmailSender, Path],
) -> None:
    inbox, sender, directory = capture
    project, other_project = f"proj-{uuid.uuid4().hex[:8]}", f"proj-{uuid.uuid4().hex[:8]}"
    ours = [email_for(project, f"Mail {index}", html=f"<b>Mail {index}</b>") for index in range(3)]
    await send_in_order(sender, [ours[0], email_for(other_project, "Not yours"), ours[1], ours[2]])

    listed = inbox.messages(project, 10)

    assert [mail.subject for mail in listed] == ["Mail 2", "Mail 1", "Mail 0"]
    newest = listed[0]
    assert newest.message_id == ours[2].message_id
    assert newest.mail_from == MAIL_FROM
    assert list(newest.rcpt_to) == ["ada@example.com"]
    assert newest.text.strip() == "text of Mail 2"
    assert newest.html.strip() == "<b>Mail 2</b>"
    assert newest.received_at.endswith("Z")
    assert newest.id
    assert [mail.subject for mail in inbox.messages(other_project, 10)] == ["Not yours"]
    assert len(list((directory / "new").iterdir())) == 4


async def test_limit_keeps_the_newest(capture: tuple[CaptureInbox, SmtpEmailSender, Path]) -> None:
    inbox, sender, _ = capture
    project = f"proj-{uuid.uuid4().hex[:8]}"
    await send_in_order(sender, [email_for(project, f"Mail {index}") for index in range(4)])

    assert [mail.subject for mail in inbox.messages(project, 2)] == ["Mail 3", "Mail 2"]


async def test_text_only_mail_has_no_html(capture: tuple[CaptureInbox, SmtpEmailSender, Path]) -> None:
    inbox, sender, _ = capture
    project = f"proj-{uuid.uuid4().hex[:8]}"
    await sender.send(email_for(project, "Plain"))

    (mail,) = inbox.messages(project, 10)
    assert mail.text.strip() == "text of Plain"
    assert mail.html == ""


async def test_captured_mail_survives_a_restart(capture: tuple[CaptureInbox, SmtpEmailSender, Path]) -> None:
    _, sender, directory = capture
    project = f"proj-{uuid.uuid4().hex[:8]}"
    await sender.send(email_for(project, "Kept"))

    reopened = CaptureInbox(directory)

    assert [mail.subject for mail in reopened.messages(project, 10)] == ["Kept"]


async def test_dev_mail_service_lists_the_callers_team_mail(
    capture: tuple[CaptureInbox, SmtpEmailSender, Path],
    sessions: async_sessionmaker[AsyncSession],
    team: TeamCredentials,
) -> None:
    inbox, sender, _ = capture
    await send_in_order(
        sender,
        [
            email_for(team.team_id, "First"),
            email_for("someone-else", "Hidden"),
            email_for(team.team_id, "Second"),
        ],
    )
    registration = ServiceRegistration(
        SERVICE_NAME,
        DevMailServicer(Authenticator(sessions), inbox),
        devmail_pb2_grpc.add_DevMailServiceServicer_to_server,
    )
    server, port, _health = await create_server("127.0.0.1:0", [registration])
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = devmail_pb2_grpc.DevMailServiceStub(channel)
            everything = await stub.ListDevMail(
                devmail_pb2.ListDevMailRequest(), metadata=team.metadata, timeout=5
            )
            newest = await stub.ListDevMail(
                devmail_pb2.ListDevMailRequest(limit=1), metadata=team.metadata, timeout=5
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListDevMail(devmail_pb2.ListDevMailRequest(), timeout=5)
    finally:
        await server.stop(None)

    assert [mail.subject for mail in everything.messages] == ["Second", "First"]
    assert [mail.subject for mail in newest.messages] == ["Second"]
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_erase_dev_mail_deletes_the_callers_mail_naming_a_contact_and_nothing_else(
    capture: tuple[CaptureInbox, SmtpEmailSender, Path],
    sessions: async_sessionmaker[AsyncSession],
    team: TeamCredentials,
) -> None:
    inbox, sender, _ = capture
    to_grace = [replace(email_for(team.team_id, f"For Grace {n}"), to="Grace@Example.com") for n in range(2)]
    await send_in_order(
        sender,
        [
            *to_grace,
            email_for(team.team_id, "For Ada"),
            replace(email_for("someone-else", "Another project's Grace"), to="grace@example.com"),
        ],
    )
    registration = ServiceRegistration(
        SERVICE_NAME,
        DevMailServicer(Authenticator(sessions), inbox),
        devmail_pb2_grpc.add_DevMailServiceServicer_to_server,
    )
    server, port, _health = await create_server("127.0.0.1:0", [registration])
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = devmail_pb2_grpc.DevMailServiceStub(channel)
            request = devmail_pb2.EraseDevMailRequest(values=["grace@example.com", "", "user-grace"])
            erased = await stub.EraseDevMail(request, metadata=team.metadata, timeout=5)
            again = await stub.EraseDevMail(request, metadata=team.metadata, timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.EraseDevMail(request, timeout=5)
    finally:
        await server.stop(None)

    assert (erased.erased, again.erased) == (2, 0)
    assert [mail.subject for mail in inbox.messages(team.team_id, 10)] == ["For Ada"]
    assert [mail.subject for mail in inbox.messages("someone-else", 10)] == ["Another project's Grace"]
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
