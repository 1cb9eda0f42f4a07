"""The executor's SMTP sender against a real SMTP server (aiosmtpd): what arrives, and what fails how."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from kernel.steps import StepSpec
from services.executor.domain import DeliveryError, OutgoingEmail, Run, StepState, render_email
from services.executor.senders import SmtpEmailSender, SmtpServer, compose
from stack.embedded import free_port

MAIL_FROM = "Herald <noreply@herald.test>"


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_to: list[str]
    message: EmailMessage


@dataclass
class SmtpSink:
    """A real SMTP server's handler: keeps what it accepts, or refuses as told."""

    rcpt_reply: str | None = None
    data_reply: str = "250 Message accepted for delivery"
    received: list[ReceivedMail] = field(default_factory=list)
    # The client address of the connection each accepted message came on.
    peers: list[object] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not self.data_reply.startswith("250"):
            return self.data_reply
        message = BytesParser(policy=policy.default).parsebytes(envelope.original_content or b"")
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.received.append(ReceivedMail(str(envelope.mail_from), list(envelope.rcpt_tos), message))
            self.peers.append(session.peer)
        return self.data_reply


@pytest.fixture
async def sink() -> AsyncIterator[tuple[SmtpSink, SmtpServer]]:
    handler = SmtpSink()
    controller = Controller(
        handler, hostname="127.0.0.1", port=free_port(), server_hostname="sink.herald.test"
    )
    await asyncio.to_thread(controller.start)
    try:
        yield handler, SmtpServer(host="127.0.0.1", port=controller.port)
    finally:
        await asyncio.to_thread(controller.stop)


def welcome_email() -> OutgoingEmail:
    run = Run(
        id=uuid.uuid4(),
        team_id=f"team-{uuid.uuid4().hex[:8]}",
        trigger_id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        workflow_key="welcome",
        workflow_version=1,
        contact_id=str(uuid.uuid4()),
        context={"contact": {"email": "ada@example.com", "name": "Ada"}},
        steps=[],
    )
    step = StepSpec(
        "greet",
        "email",
        subject="Welcome, {{contact.name}}",
        body="Hello {{contact.name}}",
        html="<p>Hi {{contact.name}}</p>",
    )
    run.steps = [StepState(step, 0)]
    return render_email(run, step, "herald.test")


async def test_delivers_headers_and_text_with_html_alternative(sink: tuple[SmtpSink, SmtpServer]) -> None:
    handler, server = sink
    email = welcome_email()

    answer = await SmtpEmailSender(server, MAIL_FROM, timeout=5).send(email)

    assert email.message_id in answer
    assert len(handler.received) == 1
    received = handler.received[0]
    assert received.mail_from == "noreply@herald.test"
    assert received.rcpt_to == ["ada@example.com"]
    message = received.message
    assert message["From"] == MAIL_FROM
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Welcome, Ada"
    assert message["Message-ID"] == email.message_id
    assert message["Date"]
    for name in ("X-Herald-Project", "X-Herald-Trigger", "X-Herald-Run", "X-Herald-Delivery"):
        assert message[name] == email.headers[name]
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and text.get_content().strip() == "Hello Ada"
    assert html is not None and html.get_content().strip() == "<p>Hi Ada</p>"


async def test_a_text_only_email_is_a_single_part(sink: tuple[SmtpSink, SmtpServer]) -> None:
    handler, server = sink
    email = OutgoingEmail(
        to="bob@example.com", subject="Plain", text="Just text", html="", message_id="<plain-1@herald.test>"
    )

    await SmtpEmailSender(server, MAIL_FROM, timeout=5).send(email)

    message = handler.received[0].message
    assert message.get_content_type() == "text/plain"
    assert message.get_content().strip() == "Just text"


async def test_the_same_email_sent_twice_keeps_its_message_id(sink: tuple[SmtpSink, SmtpServer]) -> None:
    handler, server = sink
    email = welcome_email()
    sender = SmtpEmailSender(server, MAIL_FROM, timeout=5)

    await sender.send(email)
    await sender.send(email)

    assert [mail.message["Message-ID"] for mail in handler.received] == [email.message_id] * 2


async def test_an_unreachable_server_is_a_temporary_failure() -> None:
    nobody_listens = SmtpServer(host="127.0.0.1", port=free_port())

    with pytest.raises(DeliveryError) as raised:
        await SmtpEmailSender(nobody_listens, MAIL_FROM, timeout=3).send(welcome_email())

    assert raised.value.permanent is False


async def test_credentials_are_never_sent_to_a_server_without_starttls(
    sink: tuple[SmtpSink, SmtpServer],
) -> None:
    handler, server = sink
    with_password = SmtpServer(host=server.host, port=server.port, username="mailer", password="secret")

    with pytest.raises(DeliveryError, match="STARTTLS"):
        await SmtpEmailSender(with_password, MAIL_FROM, timeout=3).send(welcome_email())

    assert handler.received == []
    assert (with_password.start_tls, server.start_tls) == (True, None)


@pytest.mark.parametrize(
    ("data_reply", "permanent"),
    [("550 5.7.1 Message rejected as spam", True), ("451 4.3.0 Try again later", False)],
    ids=["550", "451"],
)
async def test_a_refused_message_is_permanent_only_for_5xx(
    sink: tuple[SmtpSink, SmtpServer], data_reply: str, permanent: bool
) -> None:
    handler, server = sink
    handler.data_reply = data_reply

    with pytest.raises(DeliveryError) as raised:
        await SmtpEmailSender(server, MAIL_FROM, timeout=5).send(welcome_email())

    assert raised.value.permanent is permanent
    assert data_reply[:3] in str(raised.value)
    assert handler.received == []


async def test_a_recipient_refused_with_550_is_permanent(sink: tuple[SmtpSink, SmtpServer]) -> None:
    handler, server = sink
    handler.rcpt_reply = "550 5.1.1 No such user"

    with pytest.raises(DeliveryError) as raised:
        await SmtpEmailSender(server, MAIL_FROM, timeout=5).send(welcome_email())

    assert raised.value.permanent is True


async def test_a_recipient_refused_with_451_is_temporary(sink: tuple[SmtpSink, SmtpServer]) -> None:
    handler, server = sink
    handler.rcpt_reply = "451 4.7.1 Greylisted, try again later"

    with pytest.raises(DeliveryError) as raised:
        await SmtpEmailSender(server, MAIL_FROM, timeout=5).send(welcome_email())

    assert raised.value.permanent is False


async def test_emails_one_after_another_share_one_smtp_session(sink: tuple[SmtpSink, SmtpServer]) -> None:
    handler, server = sink
    sender = SmtpEmailSender(server, MAIL_FROM, timeout=5)

    for _ in range(5):
        await sender.send(welcome_email())

    assert len(handler.received) == 5
    assert len(set(handler.peers)) == 1


async def test_emails_at_once_each_take_a_session_and_reuse_it(sink: tuple[SmtpSink, SmtpServer]) -> None:
    handler, server = sink
    sender = SmtpEmailSender(server, MAIL_FROM, timeout=5)

    await asyncio.gather(*(sender.send(welcome_email()) for _ in range(4)))
    await asyncio.gather(*(sender.send(welcome_email()) for _ in range(4)))

    assert len(handler.received) == 8
    assert 1 <= len(set(handler.peers)) <= 4


async def test_a_session_that_failed_is_not_reused(sink: tuple[SmtpSink, SmtpServer]) -> None:
    handler, server = sink
    sender = SmtpEmailSender(server, MAIL_FROM, timeout=5)
    await sender.send(welcome_email())
    handler.data_reply = "451 4.3.0 Try again later"
    with pytest.raises(DeliveryError):
        await sender.send(welcome_email())
    handler.data_reply = "250 Message accepted for delivery"

    await sender.send(welcome_email())

    assert len(handler.received) == 2
    assert handler.peers[0] != handler.peers[1]


async def test_a_session_the_server_closed_is_replaced() -> None:
    handler = SmtpSink()
    port = free_port()
    server = SmtpServer(host="127.0.0.1", port=port)
    sender = SmtpEmailSender(server, MAIL_FROM, timeout=5)
    for _ in range(2):  # the server restarts between the two emails, closing the idle session
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        await asyncio.to_thread(controller.start)
        try:
            await sender.send(welcome_email())
        finally:
            await asyncio.to_thread(controller.stop)
        await asyncio.sleep(0.2)

    assert len(handler.received) == 2
    assert handler.peers[0] != handler.peers[1]


async def test_text_that_is_not_ascii_or_has_long_lines_arrives_intact(
    sink: tuple[SmtpSink, SmtpServer],
) -> None:
    handler, server = sink
    long_line = "word " * 400  # 2,000 characters on one line: more than SMTP carries as is
    email = OutgoingEmail(
        to="zoe@example.com",
        subject="Bienvenue, Zoë — ça commence ✨ " + "très " * 30,
        text=f"Grüße, Zoë\n{long_line}\n",
        html="<p>Grüße, <b>Zoë</b></p>",
        message_id="<intl-1@herald.test>",
    )

    await SmtpEmailSender(server, MAIL_FROM, timeout=5).send(email)

    message = handler.received[0].message
    assert message["Subject"] == email.subject
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and text.get_content() == email.text
    assert html is not None and html.get_content().strip() == email.html


async def test_an_internationalized_address_is_sent_with_smtputf8(sink: tuple[SmtpSink, SmtpServer]) -> None:
    handler, server = sink
    email = OutgoingEmail(
        to="zoë@exämple.com", subject="Hi", text="Hello", html="", message_id="<intl-2@herald.test>"
    )

    await SmtpEmailSender(server, MAIL_FROM, timeout=5).send(email)

    assert handler.received[0].rcpt_to == ["zoë@exämple.com"]
    assert handler.received[0].message["To"] == "zoë@exämple.com"


def test_a_header_that_would_break_the_message_is_refused() -> None:
    email = OutgoingEmail(
        to="ada@example.com",
        subject="Hi",
        text="Hello",
        html="",
        message_id="<x@herald.test>",
        headers={"X-Herald-Run": "1\r\nBcc: victim@example.com"},
    )

    with pytest.raises(ValueError, match="linefeed or carriage return"):
        compose(email, MAIL_FROM)


async def test_lines_starting_with_from_and_long_words_arrive_as_written(
    sink: tuple[SmtpSink, SmtpServer],
) -> None:
    handler, server = sink
    sender = SmtpEmailSender(server, MAIL_FROM, timeout=5)
    emails = [
        OutgoingEmail(
            to="ada@example.com",
            subject=subject,
            text="Hello\nFrom now on, weekly.\n",
            html="<p>Hi</p>\nFrom the team",
            message_id=f"<from-{index}@herald.test>",
        )
        for index, subject in enumerate(["Weekly", "Token " + "x" * 1200])
    ]

    for email in emails:
        await sender.send(email)

    for email, received in zip(emails, handler.received, strict=True):
        message = received.message
        assert message["Subject"] == email.subject
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        assert text is not None and text.get_content().replace("\r\n", "\n") == email.text
        assert html is not None and html.get_content().replace("\r\n", "\n").rstrip("\n") == email.html
        assert max(len(line) for line in message.as_bytes().split(b"\n")) <= 998
