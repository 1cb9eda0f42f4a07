"""NATS JetStream: the connection, the streams, publishing and durable pull consumers.

Every message is published with `Nats-Msg-Id` (JetStream drops a duplicate inside the stream's
duplicate window) and a `Herald-Project` header. Consumers are durable pull consumers with explicit
acknowledgement: a handled message is acked, a transient failure is nak'ed with an exponential
backoff, and a poison message or one that exhausted its attempts is recorded on the DLQ stream by
the worker itself and then terminated. A message of many parts (a batch of tracking records) whose
handler could not handle some of them has each of those recorded on the DLQ stream as a message of
its own, and is acknowledged.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import nats
import structlog
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import BadSubjectError, MaxPayloadError
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError
from structlog.typing import FilteringBoundLogger

from kernel.errors import Unavailable, is_unavailable
from kernel.metrics import ConsumerCounters

log = structlog.get_logger(__name__)

MSG_ID = "Nats-Msg-Id"
PROJECT_HEADER = "Herald-Project"
DUPLICATE_WINDOW_SECONDS = 120.0
STALE_PING_SECONDS = 5
DAY = 24 * 3600.0
# The status of a reply saying that nobody (no stream) listens on a subject.
NO_RESPONDERS = "503"
JS_API = "$JS.API"
# Statuses that end a pull request without an error: no messages (404), expired (408).
END_OF_REQUEST = ("404", "408")
HEARTBEAT = "100"
FETCH_GRACE_SECONDS = 0.5


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_seconds: float


STREAMS = (
    StreamSpec("EVENTS", ("events.>",), 7 * DAY),
    StreamSpec("RUNS", ("runs.>",), 7 * DAY),
    StreamSpec("STEPS", ("steps.>",), 7 * DAY),
    StreamSpec("TRACKING", ("tracking.>",), 7 * DAY),
    StreamSpec("DLQ", ("dlq.>",), 30 * DAY),
)


@dataclass(frozen=True)
class OutgoingMessage:
    """A message to publish: where, what, and the id that makes a republish harmless."""

    subject: str
    payload: bytes
    msg_id: str
    project_id: str


async def connect(url: str, name: str) -> NatsClient:
    """Connect to NATS, reconnecting for ever if the server goes away later."""

    async def on_disconnected() -> None:
        log.warning("nats.disconnected")

    async def on_reconnected() -> None:
        log.info("nats.reconnected")

    async def on_error(error: Exception) -> None:
        log.warning("nats.error", error=str(error))

    try:
        return await nats.connect(
            url,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            # A connection that stops answering (a server killed mid-write, a half-open socket)
            # is noticed within ~15 s rather than nats-py's default of four minutes.
            ping_interval=STALE_PING_SECONDS,
            max_outstanding_pings=3,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            error_cb=on_error,
        )
    except Exception as error:  # nats raises several unrelated types when it cannot connect
        raise Unavailable(f"cannot connect to NATS at {url}: {error}") from error


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> None:
    """Create Herald's streams, or bring an existing stream's configuration up to date."""
    for spec in STREAMS:
        config = api.StreamConfig(
            name=spec.name,
            subjects=list(spec.subjects),
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            max_age=spec.max_age_seconds,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
            num_replicas=replicas,
        )
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)


async def publish_to(
    js: JetStreamContext,
    message: OutgoingMessage,
    headers: Mapping[str, str] | None = None,
    wait_seconds: float = 5.0,
) -> int:
    """Publish one message and wait (at most `wait_seconds`) for its acknowledgement: the stream
    sequence that stored it."""
    all_headers = {MSG_ID: message.msg_id, PROJECT_HEADER: message.project_id, **(headers or {})}
    try:
        ack = await js.publish(message.subject, message.payload, timeout=wait_seconds, headers=all_headers)
    except Exception as error:
        raise _publish_error(message, error) from error
    return int(ack.seq)


class BusPublisher:
    """Publishes to JetStream and returns the stream sequence that stored each message."""

    def __init__(self, client: NatsClient, timeout: float = 5.0):
        self._client = client
        self._js = client.jetstream()
        self._timeout = timeout
        # publish_many's acknowledgements arrive on one subscription, <inbox>.<token>.
        self._inbox = ""
        self._inbox_ready = asyncio.Lock()
        self._acks: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count()

    async def publish(self, message: OutgoingMessage, headers: Mapping[str, str] | None = None) -> int:
        return await publish_to(self._js, message, headers, self._timeout)

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[int | Exception]:
        """Publish every message at once, then wait for their acknowledgements together (one
        timeout for all); each message's stream sequence, or why it was not stored.

        Leaner than nats-py's publish_async (no per-message semaphore, random token or
        acknowledgement object): a JetStream publish is a plain publish with a reply subject, and
        the stream's acknowledgement is the reply."""
        inbox = await self._ack_inbox()
        loop = asyncio.get_running_loop()
        outcomes: list[int | Exception] = []
        sent: list[tuple[int, str, asyncio.Future[Msg]]] = []
        for index, message in enumerate(messages):
            reply = f"{inbox}.{next(self._tokens)}"
            acknowledged: asyncio.Future[Msg] = loop.create_future()
            self._acks[reply] = acknowledged
            headers = {MSG_ID: message.msg_id, PROJECT_HEADER: message.project_id}
            try:
                await self._client.publish(message.subject, message.payload, reply=reply, headers=headers)
            except Exception as error:
                del self._acks[reply]
                outcomes.append(_publish_error(message, error))
                continue
            sent.append((index, reply, acknowledged))
            outcomes.append(0)  # its sequence, once acknowledged
        if sent:
            await asyncio.wait([future for _, _, future in sent], timeout=self._timeout)
        for index, reply, future in sent:
            message = messages[index]
            if not future.done():
                self._acks.pop(reply, None)
                future.cancel()
                outcomes[index] = Unavailable(
                    f"cannot publish to {message.subject}: no acknowledgement in {self._timeout} s"
                )
            else:
                outcomes[index] = _acknowledgement(message, future.result())
        return outcomes

    async def _ack_inbox(self) -> str:
        async with self._inbox_ready:
            if not self._inbox:
                inbox = self._client.new_inbox()
                await self._client.subscribe(f"{inbox}.*", cb=self._acknowledged)
                self._inbox = inbox
        return self._inbox

    async def _acknowledged(self, reply: Msg) -> None:
        future = self._acks.pop(reply.subject, None)
        if future is not None and not future.done():
            future.set_result(reply)


def _acknowledgement(message: OutgoingMessage, reply: Msg) -> int | Exception:
    """The stream sequence a JetStream acknowledgement gives, or why the message was not stored."""
    if reply.headers and reply.headers.get(api.Header.STATUS) == NO_RESPONDERS:
        return Unavailable(f"cannot publish to {message.subject}: no stream takes this subject")
    try:
        answer = json.loads(reply.data)
        if "error" in answer:
            description = answer["error"].get("description", answer["error"])
            return Unavailable(f"cannot publish to {message.subject}: {description}")
        return int(answer["seq"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return Unavailable(f"cannot publish to {message.subject}: unreadable acknowledgement ({error!r})")


def _publish_error(message: OutgoingMessage, error: BaseException) -> Exception:
    if isinstance(error, (BadSubjectError, MaxPayloadError)):
        return PublishRejected(f"NATS refuses {message.subject!r}: {error!r}")
    # Timeouts, no responders, a stream refusing for now, connection closed: all transient.
    return Unavailable(f"cannot publish to {message.subject}: {error}")


class PublishRejected(Exception):
    """The bus will never take this message (a subject it refuses, a payload too large)."""


class RetryLater(Exception):
    """The handler could not finish now; the message comes back after `delay` seconds."""

    def __init__(self, reason: str, delay: float | None = None):
        super().__init__(reason)
        self.delay = delay


class Poison(Exception):
    """The message can never be handled; it goes to the dead-letter stream."""


@dataclass(frozen=True)
class PoisonPart:
    """A part of a message (a record of a batch) that can never be handled: its position in the
    message, what it would be as a message of its own, and why."""

    index: int
    subject: str
    data: bytes
    reason: str


class PartlyPoison(Exception):
    """The handler did its work for every part of the message but `parts`, which can never be
    handled: each goes to the dead-letter stream as a message of its own, and the message is
    acknowledged. A handler raises it once what it could do is committed."""

    def __init__(self, parts: Sequence[PoisonPart]):
        super().__init__(f"{len(parts)} part(s) cannot be handled: {parts[0].reason if parts else ''}")
        self.parts = tuple(parts)


@dataclass(frozen=True)
class Delivery:
    """One message as a handler sees it."""

    subject: str
    data: bytes
    headers: Mapping[str, str]
    attempt: int
    stream_sequence: int

    @property
    def project_id(self) -> str:
        return self.headers.get(PROJECT_HEADER, "unknown")


Handler = Callable[[Delivery], Awaitable[None]]
# What became of one message of a batch: None when it is handled (ack), or the exception a
# Handler would have raised for it (RetryLater, Poison, or any other failure).
Outcome = Exception | None
# Handles a whole fetch at once (one transaction for many messages). It answers None when every
# message is handled, or each message's Outcome, in the order (and number) of the deliveries.
# When it raises, each message is handled again on its own by the consumer's Handler.
BatchHandler = Callable[[Sequence[Delivery]], Awaitable[Sequence[Outcome] | None]]
MessageT = TypeVar("MessageT", bound=Message)


def decode(message_type: type[MessageT], delivery: Delivery) -> MessageT:
    """The Protobuf message a delivery carries; undecodable bytes are poison."""
    try:
        return message_type.FromString(delivery.data)
    except DecodeError as error:
        raise Poison(f"not a {message_type.DESCRIPTOR.full_name}: {error}") from error


def backoff_delay(attempt: int, base: float = 0.5, ceiling: float = 60.0) -> float:
    """Exponential backoff with full jitter: attempt 1 waits up to `base`, then doubles."""
    return random.uniform(0, min(ceiling, base * 2 ** (attempt - 1)))


@dataclass
class Consumer:
    """A durable pull consumer running `handler` for each message, `concurrency` at a time.

    Each message is handled in a task of its own: a handler may bind the ids of what the message
    is about (trigger_id, event_id, run_id) to structlog's context with `bind_contextvars`, and
    the consumer's own lines about that message (retry, dead letter) carry them. With a
    `batch_handler`, a fetch is handled in one call, which may answer each message's outcome;
    either way every message is settled by the same rules (`_settle`). Each outcome is counted
    (kernel.metrics: ack, retry, dead_letter) and so is the time to handle each fetch.
    """

    client: NatsClient
    stream: str
    durable: str
    filter_subject: str
    handler: Handler
    max_attempts: int = 5
    concurrency: int = 16
    ack_wait_seconds: float = 6.0
    batch_handler: BatchHandler | None = None
    # With a batch handler: the most messages a fetch takes (default: `concurrency`), and how
    # long a fetch that came back short waits for more. Work off the critical path (tracking)
    # lingers, so that under moderate load it still handles many messages per transaction.
    batch_size: int | None = None
    linger_seconds: float = 0.0
    counters: ConsumerCounters = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.counters = ConsumerCounters(self.stream, self.durable)

    @property
    def js(self) -> JetStreamContext:
        return self.client.jetstream()

    async def run(self, stop: asyncio.Event) -> None:
        size = (self.batch_size or self.concurrency) if self.batch_handler else self.concurrency
        config = api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_seconds,
            max_deliver=-1,
            max_ack_pending=max(1000, size * 4),
            filter_subject=self.filter_subject,
        )
        # Creates the durable consumer, or updates the settings of an existing one.
        await self.js.add_consumer(self.stream, config)
        puller = Puller(self.client, self.stream, self.durable)
        await puller.start()
        log.info("consumer.started", stream=self.stream, durable=self.durable)
        while not stop.is_set():
            try:
                messages = await puller.fetch(size, wait_seconds=1.0)
            except Exception as error:  # connection trouble: wait for the reconnect
                if stop.is_set():
                    break
                log.warning("consumer.fetch_failed", durable=self.durable, error=str(error))
                await asyncio.sleep(0.5)
                continue
            if not messages:
                continue
            if self.linger_seconds and len(messages) < size:
                messages += await self._more(puller, size - len(messages))
            # One task keeps the whole fetch alive (not one per message: they are many).
            working = {id(message): message for message in messages}
            keep_alive = asyncio.create_task(self._keep_alive(working))
            started = time.perf_counter()
            try:
                if self.batch_handler is not None and len(messages) > 1:
                    await self._handle_batch(messages, self.batch_handler, working)
                else:
                    await asyncio.gather(*(self._handle(message, working) for message in messages))
            finally:
                keep_alive.cancel()
                self.counters.fetch_seconds.observe(time.perf_counter() - started)
                self.counters.fetch_size.observe(len(messages))
        await puller.stop()
        log.info("consumer.stopped", durable=self.durable)

    async def _more(self, puller: Puller, wanted: int) -> list[Msg]:
        """What arrived while lingering, up to `wanted` messages (none, on any trouble: the next
        fetch will take them)."""
        await asyncio.sleep(self.linger_seconds)
        try:
            return await puller.fetch(wanted, wait_seconds=0.05)
        except Exception:  # the connection is in trouble
            return []

    async def _handle_batch(
        self, messages: list[Msg], handler: BatchHandler, working: dict[int, Msg]
    ) -> None:
        """All of a fetch's messages by `handler` at once, each then settled as its outcome says;
        when the handler fails, each again on its own, so one bad message is retried or
        dead-lettered alone."""
        deliveries = [_delivery(message) for message in messages]
        try:
            outcomes = await handler(deliveries)
            if outcomes is not None and len(outcomes) != len(deliveries):
                raise ValueError(f"{len(outcomes)} outcomes for a batch of {len(deliveries)} messages")
        except Exception as error:
            log.warning(
                "consumer.batch_failed", durable=self.durable, size=len(messages), error=repr(error)[:500]
            )
        else:
            # In turn, not gathered: an ack is a buffered publish that rarely waits, and a task
            # per message would cost more than the acks themselves.
            for index, (message, delivery) in enumerate(zip(messages, deliveries, strict=True)):
                await self._settle(message, delivery, outcomes[index] if outcomes is not None else None)
            working.clear()
            return
        for start in range(0, len(messages), self.concurrency):  # `concurrency` at a time
            chunk = messages[start : start + self.concurrency]
            await asyncio.gather(*(self._handle(message, working) for message in chunk))

    async def _handle(self, message: Msg, working: dict[int, Msg]) -> None:
        delivery = _delivery(message)
        outcome: Outcome = None
        try:
            try:
                await self.handler(delivery)
            except Exception as error:
                outcome = error
            await self._settle(message, delivery, outcome)
        finally:
            working.pop(id(message), None)

    async def _settle(self, message: Msg, delivery: Delivery, outcome: Outcome) -> None:
        """Acknowledge a handled message; otherwise nak it (after a delay), or record it on the
        DLQ and terminate it, as its failure says."""
        if outcome is None:
            await message.ack()
            self.counters.ack.inc()
        elif isinstance(outcome, Poison):
            await self._dead_letter(message, delivery, f"poison: {outcome}")
        elif isinstance(outcome, PartlyPoison):
            await self._dead_letter_parts(message, delivery, outcome.parts)
        elif isinstance(outcome, RetryLater):
            if delivery.attempt >= self.max_attempts:
                await self._dead_letter(message, delivery, f"attempts exhausted: {outcome}")
                return
            delay = outcome.delay if outcome.delay is not None else backoff_delay(delivery.attempt)
            self._bound(delivery).info("consumer.retry", reason=str(outcome), delay=round(delay, 3))
            self.counters.retry.inc()
            await message.nak(delay=delay)
        elif is_unavailable(outcome):
            # The database or the bus is away: not the message's fault, so it does not use up
            # an attempt towards the dead letters; it comes back when they may be back.
            delay = backoff_delay(min(delivery.attempt, 8), base=1.0, ceiling=30.0)
            self._bound(delivery).warning(
                "consumer.unavailable", error=repr(outcome)[:500], delay=round(delay, 3)
            )
            self.counters.retry.inc()
            await message.nak(delay=delay)
        else:
            self._bound(delivery).error("consumer.handler_failed", exc_info=outcome)
            if delivery.attempt >= self.max_attempts:
                await self._dead_letter(message, delivery, f"attempts exhausted: {outcome!r}")
                return
            self.counters.retry.inc()
            await message.nak(delay=backoff_delay(delivery.attempt))

    def _bound(self, delivery: Delivery) -> FilteringBoundLogger:
        """The log with the message's particulars (bound only when there is something to say)."""
        bound: FilteringBoundLogger = log.bind(
            durable=self.durable,
            subject=delivery.subject,
            attempt=delivery.attempt,
            msg_id=delivery.headers.get(MSG_ID),
        )
        return bound

    async def _keep_alive(self, working: dict[int, Msg]) -> None:
        """Tell the server that slow handlers are still working, so only a dead worker's messages
        come back, after `ack_wait_seconds`: a short ack wait makes recovery from a crash quick."""
        while working:
            await asyncio.sleep(self.ack_wait_seconds / 3)
            for message in list(working.values()):
                try:
                    await message.in_progress()
                except Exception as error:  # the connection is gone: redelivery will sort it out
                    log.info("consumer.keep_alive_failed", durable=self.durable, error=str(error))
                    return

    async def _dead_letter(self, message: Msg, delivery: Delivery, reason: str) -> None:
        log.warning("consumer.dead_letter", durable=self.durable, subject=delivery.subject, reason=reason)
        if await self._record_dead_letter(message, delivery, delivery.subject, delivery.data, reason):
            await message.term()
            self.counters.dead_letter.inc()

    async def _dead_letter_parts(self, message: Msg, delivery: Delivery, parts: Sequence[PoisonPart]) -> None:
        """Record each part on the DLQ stream (ids derived from the message's, so a redelivered
        message records them once), then acknowledge the message: the rest of it was handled."""
        for part in parts:
            log.warning(
                "consumer.dead_letter_part",
                durable=self.durable,
                subject=delivery.subject,
                part=part.index,
                reason=part.reason,
            )
            reason = f"poison: {part.reason}"
            if not await self._record_dead_letter(
                message, delivery, part.subject, part.data, reason, part.index
            ):
                return
        await message.ack()
        self.counters.ack.inc()
        self.counters.dead_letter.inc(len(parts))

    async def _record_dead_letter(
        self,
        message: Msg,
        delivery: Delivery,
        subject: str,
        data: bytes,
        reason: str,
        part: int | None = None,
    ) -> bool:
        """Publish the message (or its part number `part`: `data`, which would travel on
        `subject` alone) on the DLQ stream; when the DLQ cannot be written, nak the message (it
        is kept until the DLQ is writable) and say so."""
        msg_id = f"{self.durable}:{self.stream}:{delivery.stream_sequence}"
        record = OutgoingMessage(
            subject=f"dlq.{self.durable}.{delivery.project_id}",
            payload=data,
            msg_id=msg_id if part is None else f"{msg_id}:{part}",
            project_id=delivery.project_id,
        )
        try:
            await publish_to(
                self.js,
                record,
                headers={
                    "Herald-Dlq-Reason": reason[:1000],
                    "Herald-Dlq-Subject": subject,
                    "Herald-Dlq-Attempts": str(delivery.attempt),
                },
            )
        except Unavailable:
            self.counters.retry.inc()
            await message.nak(delay=backoff_delay(delivery.attempt))
            return False
        return True


def _delivery(message: Msg) -> Delivery:
    attempt, stream_sequence = ack_subject_counts(message.reply)
    return Delivery(
        subject=message.subject,
        data=message.data,
        headers=dict(message.headers or {}),
        attempt=attempt,
        stream_sequence=stream_sequence,
    )


def ack_subject_counts(reply: str) -> tuple[int, int]:
    """How many times a JetStream message was delivered, and its stream sequence, from its ack
    subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`,
    or the newer form with a domain and an account hash after `ACK` (and perhaps a token at the
    end). Only these two fields, without nats-py's whole `Msg.metadata` (a datetime and three
    objects for every message). (1, 0) for a subject of neither form."""
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return 1, 0
    first = 4 if len(tokens) == 9 else 6
    try:
        return int(tokens[first]) or 1, int(tokens[first + 1])
    except ValueError:
        return 1, 0


class FetchFailed(Exception):
    """The server ended a pull request with an error status (the consumer is gone, or the
    request was refused) before any message came."""


class Puller:
    """Fetches batches of a durable pull consumer over one private inbox: leaner than nats-py's
    `fetch`, which waits for each message in two tasks of its own, a cost that every message on
    every hop of a trigger pays.

    A fetch is one pull request (`no_wait` with `expires`: the server sends at once what is
    there, up to the batch, or else the first message to come before the request expires),
    answered on a reply subject of its own: the messages (on their own subjects), then, unless
    they filled the batch, a status that ends the request (404 no messages, 408 expired). A
    status for an earlier request that a fetch gave up on does not end a later one; a message
    that comes after its fetch gave up is kept for the next fetch. One fetch at a time."""

    def __init__(self, client: NatsClient, stream: str, durable: str) -> None:
        self._client = client
        self._request_subject = f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = ""
        self._subscription: Subscription | None = None
        self._tokens = itertools.count()
        self._arrived: list[Msg] = []
        # The request in flight: its reply subject, its batch, and what its fetch awaits.
        self._reply = ""
        self._wanted = 0
        self._answered: asyncio.Future[str] | None = None

    async def start(self) -> None:
        self._inbox = self._client.new_inbox()
        self._subscription = await self._client.subscribe(f"{self._inbox}.*", cb=self._received)

    async def stop(self) -> None:
        if self._subscription is not None:
            try:
                await self._subscription.unsubscribe()
            except Exception as error:  # the connection may be gone already
                log.info("bus.puller_stop_failed", subject=self._request_subject, error=str(error))
            self._subscription = None

    async def fetch(self, batch: int, wait_seconds: float) -> list[Msg]:
        """Up to `batch` messages: those there are, else the first to come within `wait_seconds`;
        none when nothing came. FetchFailed when the server refused the request."""
        if not self._arrived:
            answered = await self._request(batch, wait_seconds)
            try:
                # The server ends the request when it expires; the grace covers a lost answer
                # (a reconnect).
                status = await asyncio.wait_for(answered, wait_seconds + FETCH_GRACE_SECONDS)
            except TimeoutError:
                status = ""
            finally:
                self._reply, self._answered = "", None
            if not self._arrived and status and status[:3] not in END_OF_REQUEST:
                raise FetchFailed(f"pulling from {self._request_subject}: {status}")
        taken, self._arrived = self._arrived[:batch], self._arrived[batch:]
        return taken

    async def _request(self, batch: int, wait_seconds: float) -> asyncio.Future[str]:
        self._reply = f"{self._inbox}.{next(self._tokens)}"
        self._wanted = batch
        answered = self._answered = asyncio.get_running_loop().create_future()
        request = {"batch": batch, "expires": int(wait_seconds * 1e9), "no_wait": True}
        await self._client.publish(self._request_subject, json.dumps(request).encode(), reply=self._reply)
        return answered

    async def _received(self, message: Msg) -> None:
        status = message.headers.get(api.Header.STATUS) if message.headers else None
        if status is None:
            self._arrived.append(message)
            if len(self._arrived) >= self._wanted:
                self._answer("")
        elif message.subject == self._reply and status != HEARTBEAT:
            description = message.headers.get(api.Header.DESCRIPTION, "") if message.headers else ""
            self._answer(f"{status} {description}".strip())

    def _answer(self, status: str) -> None:
        if self._answered is not None and not self._answered.done():
            self._answered.set_result(status)


async def read_since(
    client: NatsClient, stream: str, subject: str, since: datetime, batch: int = 256
) -> AsyncGenerator[bytes, None]:
    """Every message on `subject` that `stream` stored since `since`, oldest first, up to the
    last one stored when the read began; Unavailable when the read cannot finish. A short-lived
    consumer reads them; it is deleted after (close the iterator when stopping early)."""
    js = client.jetstream()
    name = f"read-since-{uuid.uuid4().hex}"
    config = api.ConsumerConfig(
        name=name,
        deliver_policy=api.DeliverPolicy.BY_START_TIME,
        opt_start_time=since,
        ack_policy=api.AckPolicy.NONE,
        filter_subject=subject,
        inactive_threshold=60.0,
        mem_storage=True,
    )
    info = await js.add_consumer(stream, config)
    try:
        left = info.num_pending or 0
        if not left:
            return
        puller = Puller(client, stream, name)
        await puller.start()
        try:
            while left > 0:  # what was stored when the read began, and no more
                try:
                    messages = await puller.fetch(min(batch, left), wait_seconds=5.0)
                except FetchFailed as error:
                    raise Unavailable(f"reading {subject} back failed: {error}") from error
                if not messages:
                    raise Unavailable(f"reading {subject} back stopped with {left} messages unread")
                for message in messages:
                    yield message.data
                left -= len(messages)
        finally:
            await puller.stop()
    finally:
        try:
            await js.delete_consumer(stream, name)
        except Exception as error:  # it goes away by itself after its inactive threshold
            log.info("bus.read_since_cleanup_failed", consumer=name, error=str(error))


def event_subject(project_id: str, event_name: str) -> str:
    return f"events.{project_id}.{event_name}"


def run_subject(project_id: str) -> str:
    return f"runs.{project_id}"


def step_subject(channel: str, project_id: str) -> str:
    return f"steps.{channel}.{project_id}"
