"""The executor's senders: SMTP for email, HTTP providers for SMS and push, signed webhooks.

Each sender turns a provider's answer into a DeliveryError that says whether trying again can
help: timeouts, 408, 429 and 5xx are transient (with the provider's Retry-After, when it gives
one); any other 4xx and an invalid address are permanent.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import Compat32
from email.utils import formatdate, parseaddr, parsedate_to_datetime
from typing import cast
from urllib.parse import unquote, urlsplit

import aiosmtplib
import httpx
from standardwebhooks.webhooks import Webhook

from kernel.clock import utcnow
from services.executor.domain import (
    DeliveryError,
    OutgoingEmail,
    OutgoingText,
    OutgoingWebhook,
    ProviderSettings,
)

USER_AGENT = "Herald/1"
MAX_ANSWER = 500
# One HTTP delivery, connection to last byte read, takes at most this long.
SEND_DEADLINE = 30.0


@dataclass(frozen=True)
class SmtpServer:
    """Where email goes: smtp://[user:password@]host[:port] (STARTTLS when offered) or smtps://."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    implicit_tls: bool = False

    @property
    def start_tls(self) -> bool | None:
        """smtps:// is TLS from the start; smtp:// with credentials must upgrade with STARTTLS
        (never send a password in the clear); smtp:// without them upgrades when offered."""
        if self.implicit_tls:
            return False
        return True if self.username else None

    @classmethod
    def from_url(cls, url: str) -> SmtpServer:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(f"HERALD_SMTP_URL must look like smtp://user:password@host:587, got {url!r}")
        implicit_tls = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if implicit_tls else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=implicit_tls,
        )


# An SMTP session is reused for this many emails at most, and kept open this long when idle;
# one idle longer than REUSE_UNCHECKED_SECONDS is checked with NOOP before it is reused.
MESSAGES_PER_SESSION = 100
IDLE_SECONDS = 30.0
REUSE_UNCHECKED_SECONDS = 2.0
MAX_IDLE_SESSIONS = 16
# The longest line (without CRLF) SMTP carries (RFC 5321); longer ones need a transfer encoding.
MAX_LINE = 998
# A subject with a word longer than this is built by EmailMessage, which can fold it.
MAX_HEADER_WORD = 900


@dataclass
class _Session:
    client: aiosmtplib.SMTP
    sent: int = 0
    idle_since: float = 0.0


class SmtpEmailSender:
    """Sends through an SMTP server with aiosmtplib, reusing open sessions (no connection,
    EHLO, STARTTLS and login per email). A session that failed in any way is closed, never
    reused. Each email keeps a deterministic Message-ID."""

    def __init__(self, server: SmtpServer, mail_from: str, timeout: float = 15.0):
        self._server = server
        self._mail_from = mail_from
        self._timeout = timeout
        self._tls = ssl.create_default_context()  # loading the CA store is slow: once per sender
        self._idle: list[_Session] = []
        # The envelope's sender: the address of the From header, parsed once.
        self._envelope_from = parseaddr(mail_from)[1] or mail_from

    async def send(self, email: OutgoingEmail) -> str:
        message = compose(email, self._mail_from)
        session: _Session | None = None
        sent = False
        try:
            session = await self._session()
            if isinstance(message, EmailMessage):
                _errors, response = await session.client.send_message(
                    message, sender=self._envelope_from, recipients=[email.to]
                )
            else:  # plain ASCII, 7bit: nothing for aiosmtplib to decide about the envelope
                _errors, response = await session.client.sendmail(
                    self._envelope_from, [email.to], flatten(message)
                )
            sent = True
        except aiosmtplib.SMTPRecipientsRefused as error:
            permanent = all(500 <= refusal.code < 600 for refusal in error.recipients)
            raise DeliveryError(f"recipient refused: {error}", permanent=permanent) from error
        except aiosmtplib.SMTPResponseException as error:
            raise DeliveryError(
                f"SMTP {error.code}: {error.message}", permanent=500 <= error.code < 600
            ) from error
        except (aiosmtplib.SMTPException, OSError) as error:
            raise DeliveryError(f"SMTP server unreachable: {error}") from error
        finally:
            if session is not None and not sent:
                session.client.close()  # failed or cancelled in the middle of something: never reused
        self._release(session)
        return f"{response} {email.message_id}".strip()

    async def _session(self) -> _Session:
        """An open session: the one used last, if it still answers, or a new one."""
        while self._idle:
            session = self._idle.pop()
            idle = time.monotonic() - session.idle_since
            if idle > IDLE_SECONDS or not session.client.is_connected:
                session.client.close()
                continue
            if idle > REUSE_UNCHECKED_SECONDS:
                try:
                    await session.client.noop()
                except (aiosmtplib.SMTPException, OSError):
                    session.client.close()
                    continue
                except BaseException:  # cancelled while checking: the session is nobody's now
                    session.client.close()
                    raise
            return session
        server = self._server
        client = aiosmtplib.SMTP(
            hostname=server.host,
            port=server.port,
            username=server.username,
            password=server.password,
            use_tls=server.implicit_tls,
            start_tls=server.start_tls,
            tls_context=self._tls,
            timeout=self._timeout,
        )
        try:
            await client.connect()
        except BaseException:
            client.close()
            raise
        return _Session(client)

    def _release(self, session: _Session) -> None:
        session.sent += 1
        if session.sent >= MESSAGES_PER_SESSION or len(self._idle) >= MAX_IDLE_SESSIONS:
            session.client.close()
            return
        session.idle_since = time.monotonic()
        self._idle.append(session)


def compose(email: OutgoingEmail, mail_from: str) -> Message:
    """The email as a MIME message: text, or text and HTML alternatives.

    Built with the compat32 classes, several times cheaper than EmailMessage (whose headers are
    parsed as they are set), when every address and header is plain ASCII on one line; the
    subject may be any text (RFC 2047 encoded when it is not ASCII). Anything else, an
    internationalized address for one, goes through EmailMessage, which also refuses a header
    that would break the message."""
    headers = {"To": email.to, "Message-ID": email.message_id, **email.headers}
    if not all(_plain(value) for value in (mail_from, *headers.values())) or _has_long_word(email.subject):
        return _email_message(email, mail_from)
    body = _text_part(email.text, "plain")
    message: Message = body
    if email.html:
        message = MIMEMultipart("alternative")
        message.attach(body)
        message.attach(_text_part(email.html, "html"))
    # compat32 takes a Header for a value (encoded and folded as it is written).
    subject = email.subject if _plain(email.subject) else cast(str, Header(email.subject, "utf-8"))
    _set_headers(message, email, mail_from, subject)
    return message


class _SmtpCompat32(Compat32):
    """compat32 with SMTP's CRLF, writing a header that fits on one line as it is: the stock
    policy runs every header through email.header.Header to fold it, most of the cost of
    flattening an email. What it writes is the same either way."""

    def fold_binary(self, name: str, value: str) -> bytes:
        if (
            isinstance(value, str)
            and value.isascii()
            and len(name) + 2 + len(value) <= (self.max_line_length or MAX_LINE)
            and "\r" not in value
            and "\n" not in value
        ):
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


SMTP_COMPAT32 = _SmtpCompat32(linesep="\r\n")


def flatten(message: Message) -> bytes:
    """A compat32 message (`compose`'s plain form) as the bytes SMTP's DATA carries."""
    out = io.BytesIO()
    BytesGenerator(out, policy=SMTP_COMPAT32).flatten(message)
    return out.getvalue()


def _set_headers(message: Message, email: OutgoingEmail, mail_from: str, subject: str) -> None:
    message["From"] = mail_from
    message["To"] = email.to
    message["Subject"] = subject
    message["Message-ID"] = email.message_id
    message["Date"] = formatdate(localtime=False, usegmt=True)
    for name, value in email.headers.items():
        message[name] = value


def _plain(value: str) -> bool:
    return value.isascii() and "\r" not in value and "\n" not in value


def _has_long_word(text: str) -> bool:
    """A word too long for a header line once folded (compat32 folds only at spaces)."""
    return any(len(word) > MAX_HEADER_WORD for word in text.split())


def _text_part(text: str, subtype: str) -> MIMEText:
    """ASCII text with lines SMTP can carry as they are goes as 7bit; any other, and text with a
    line starting "From " (which compat32 would send as ">From "), as UTF-8 in base64."""
    lines = text.split("\n")
    if (
        text.isascii()
        and all(len(line) <= MAX_LINE for line in lines)
        and not any(line.startswith("From ") for line in lines)
    ):
        return MIMEText(text, subtype, "us-ascii")
    return MIMEText(text, subtype, "utf-8")


def _email_message(email: OutgoingEmail, mail_from: str) -> EmailMessage:
    message = EmailMessage()
    _set_headers(message, email, mail_from, email.subject)
    message.set_content(email.text)
    if email.html:
        message.add_alternative(email.html, subtype="html")
    return message


class Destinations:
    """Where HTTP deliveries may go. Link-local addresses (cloud metadata services) never;
    loopback, private and other non-public addresses only when allowed (development, tests).
    The host is resolved before each request and every address it resolves to is checked."""

    def __init__(self, allow_private: bool = False):
        self._allow_private = allow_private

    async def check(self, url: str) -> None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as error:
            raise DeliveryError(f"cannot resolve {host!r}: {error}") from error
        for *_, address in found:
            ip = ipaddress.ip_address(address[0])
            if ip.is_link_local or ip.is_multicast or ip.is_unspecified:
                raise DeliveryError(f"{host} resolves to {ip}, which Herald never calls", permanent=True)
            if not ip.is_global and not self._allow_private:
                raise DeliveryError(
                    f"{host} resolves to the non-public address {ip}; "
                    "set HERALD_ALLOW_PRIVATE_DESTINATIONS=true to allow it (development)",
                    permanent=True,
                )


class HttpTextSender:
    """Sends SMS and push notifications to a project's HTTP provider: a JSON POST of
    {"channel", "to", "title", "body", "url", "idempotency_key"} with the provider's headers and
    an Idempotency-Key header, so a provider that honours it never sends twice."""

    def __init__(self, client: httpx.AsyncClient, destinations: Destinations):
        self._client = client
        self._destinations = destinations

    async def send(self, message: OutgoingText, provider: ProviderSettings) -> str:
        document = {
            "channel": message.channel,
            "to": message.to,
            "title": message.title,
            "body": message.body,
            "url": message.url,
            "idempotency_key": message.idempotency_key,
        }
        headers = {**provider.headers, "Idempotency-Key": message.idempotency_key}
        await self._destinations.check(provider.url)
        return await _request(self._client, "POST", provider.url, headers, json.dumps(document).encode())


class WebhookHttpSender:
    """Makes webhook requests signed per Standard Webhooks (webhook-id, webhook-timestamp,
    webhook-signature); the webhook-id, also sent as Idempotency-Key, is the same on every attempt."""

    def __init__(self, client: httpx.AsyncClient, destinations: Destinations):
        self._client = client
        self._destinations = destinations

    async def send(self, request: OutgoingWebhook, secret: str) -> str:
        payload = "" if request.body is None else json.dumps(request.body, separators=(",", ":"))
        now = utcnow()
        signature = Webhook(secret).sign(request.webhook_id, now, payload)
        headers = {
            **request.headers,
            "webhook-id": request.webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
            "Idempotency-Key": request.webhook_id,
        }
        await self._destinations.check(request.url)
        return await _request(self._client, request.method, request.url, headers, payload.encode() or None)


def http_client(timeout: float = 10.0) -> httpx.AsyncClient:
    """One client per process: connections are kept and reused; redirects are not followed."""
    return httpx.AsyncClient(
        timeout=timeout,
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
    )


async def _request(
    client: httpx.AsyncClient, method: str, url: str, headers: dict[str, str], body: bytes | None
) -> str:
    """One request within SEND_DEADLINE seconds in all; at most MAX_ANSWER characters of the
    answer are read and kept."""
    if body is not None:
        headers = {"Content-Type": "application/json", **headers}
    try:
        async with (
            asyncio.timeout(SEND_DEADLINE),
            client.stream(method, url, headers=headers, content=body) as response,
        ):
            head = b""
            async for chunk in response.aiter_bytes():
                head += chunk
                if len(head) >= MAX_ANSWER:
                    break
    except httpx.InvalidURL as error:
        raise DeliveryError(f"invalid URL {url[:200]!r}: {error}", permanent=True) from error
    except (httpx.TimeoutException, TimeoutError) as error:
        raise DeliveryError(
            f"{method} {url[:200]} timed out ({SEND_DEADLINE:g} s in all): {error!r}"
        ) from error
    except httpx.HTTPError as error:
        raise DeliveryError(f"{method} {url[:200]} failed: {error!r}") from error
    status = response.status_code
    answer = f"HTTP {status}: {head[:MAX_ANSWER].decode('utf-8', 'replace')}".strip()
    if 200 <= status < 300:
        return answer
    if status in (408, 429) or status >= 500:
        raise DeliveryError(answer, retry_after=retry_after(response.headers.get("Retry-After")))
    raise DeliveryError(answer, permanent=True)


def retry_after(value: str | None) -> float | None:
    """Seconds to wait, from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())
