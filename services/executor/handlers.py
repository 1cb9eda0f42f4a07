"""The executor's use cases: start runs, move them step by step, deliver their messages, fire
their timers, resume their waits, and report every fact."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from herald.bus.v1 import event_pb2, run_pb2
from kernel.bus import OutgoingMessage, Poison, RetryLater
from kernel.clock import from_timestamp, utcnow
from kernel.conditions import ConditionError, compile_condition
from kernel.cursors import decode_cursor
from kernel.documents import event_document
from kernel.durations import parse_duration
from kernel.errors import FailedPrecondition, InvalidArgument, NotFound
from kernel.steps import CHANNEL_OF_STEP_TYPE, CONDITION_NAMES, Problems, checked_headers, is_http_url
from kernel.unit_of_work import UnitOfWork
from services.executor import messages
from services.executor.domain import (
    DeadLetter,
    DeadLetterPage,
    DeadLetterQuery,
    DeadLetterStatus,
    DeliveryError,
    FeedItem,
    OutgoingEmail,
    OutgoingText,
    OutgoingWebhook,
    ProviderSettings,
    Run,
    RunStatus,
    StepState,
    StepStatus,
    Timer,
    TimerKind,
    is_webhook_secret,
    new_webhook_secret,
    render,
    render_email,
    render_feed_item,
    render_text,
    render_webhook,
)

log = structlog.get_logger(__name__)
# Transactions delivering at once per executor process, each holding a database connection
# while its providers answer (the pool holds 16 to 24 connections).
DELIVERY_SLOTS = 12
# A provider's Retry-After is honoured up to this many seconds.
MAX_RETRY_AFTER = 3600.0
RETRY_BASE, RETRY_CEILING = 2.0, 300.0
FEED_LIMIT, MAX_FEED_LIMIT = 50, 200
PROVIDER_CHANNELS = ("sms", "push")
# Stream timestamps and acceptance times come from different clocks: look back a little further.
LOOK_BACK_SLACK = timedelta(seconds=5)
TIMER_RETRY = timedelta(minutes=1)
# How long the wait consumer trusts its list of the event names a project's runs wait for.
AWAITED_SECONDS = 1.0


class RunRepository(Protocol):
    async def add(self, runs: Sequence[Run]) -> set[uuid.UUID]:
        """Store the runs that are new; the ids of those (a run whose id exists is not stored
        again). Their steps are stored by the next `save`."""
        ...

    async def get(self, team_id: str, run_id: uuid.UUID) -> Run | None: ...

    async def lock(self, run_id: uuid.UUID) -> Run | None:
        """The run, locked against every other worker until the unit of work ends."""
        ...

    async def lock_many(self, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Run]:
        """The runs of `run_ids` that exist, by id, locked as `lock` does (in the order of their
        ids, so that two workers never wait for each other in a circle)."""
        ...

    async def save(self, *runs: Run) -> None: ...


class TimerRepository(Protocol):
    async def add(self, timer: Timer) -> None: ...

    async def due(self, now: datetime, limit: int) -> list[Timer]:
        """Timers due at `now`, locked; timers another worker holds are skipped."""
        ...

    async def waits_for(self, team_id: str, event: str, contact_id: str) -> list[Timer]:
        """The waits for `event` from the contact, locked (waiting for a worker that holds one)."""
        ...

    async def not_caught_up(self, limit: int, created_before: datetime) -> list[Timer]:
        """Waits created before `created_before` whose look-back over earlier events has not run
        yet, locked, skipping held ones."""
        ...

    async def awaited_events(self, team_id: str) -> frozenset[str]: ...

    async def caught_up(self, timer: Timer) -> None: ...

    async def delete(self, timer: Timer) -> None: ...

    async def postpone(self, timer: Timer, until: datetime) -> None: ...

    async def of_run(self, run_id: uuid.UUID) -> list[Timer]:
        """The run's timers: what its waiting steps wait for."""
        ...


class FeedRepository(Protocol):
    async def add(self, item: FeedItem) -> None:
        """Store an item; storing the same id again changes nothing."""
        ...

    async def newest(
        self, team_id: str, external_id: str, limit: int, unread_only: bool
    ) -> list[FeedItem]: ...

    async def mark_read(self, team_id: str, external_id: str, ids: list[uuid.UUID], at: datetime) -> int: ...


class DeadLetterRepository(Protocol):
    async def add(self, letter: DeadLetter) -> None:
        """Store a dead letter; a delivery that fails again after a replay is dead again."""
        ...

    async def newest(self, team_id: str, query: DeadLetterQuery) -> list[DeadLetter]:
        """Up to query.limit letters passing the query's filters, newest first, after query.after."""
        ...

    async def count_dead(self, team_id: str) -> int:
        """How many of the project's letters are in status dead."""
        ...

    async def get(self, team_id: str, letter_id: uuid.UUID) -> DeadLetter | None: ...

    async def lock(self, team_id: str, letter_id: uuid.UUID) -> DeadLetter | None: ...

    async def save(self, letter: DeadLetter) -> None: ...


class ChannelRepository(Protocol):
    async def provider(self, team_id: str, channel: str) -> ProviderSettings | None: ...

    async def put_provider(self, settings: ProviderSettings) -> ProviderSettings: ...

    async def webhook_secret(self, team_id: str) -> str:
        """The project's webhook signing secret, created on first use."""
        ...

    async def set_webhook_secret(self, team_id: str, secret: str) -> None: ...


class DevMessageRepository(Protocol):
    async def add(self, message: OutgoingText, at: datetime) -> None: ...

    async def newest(self, team_id: str, channel: str, limit: int) -> list[tuple[OutgoingText, datetime]]: ...


class ExecutorUnitOfWork(UnitOfWork, Protocol):
    @property
    def runs(self) -> RunRepository: ...

    @property
    def timers(self) -> TimerRepository: ...

    @property
    def feed(self) -> FeedRepository: ...

    @property
    def dead_letters(self) -> DeadLetterRepository: ...

    @property
    def channels(self) -> ChannelRepository: ...

    def together(self) -> AbstractAsyncContextManager[None]: ...

    async def stage_pending(self) -> None: ...

    @property
    def dev_messages(self) -> DevMessageRepository: ...


class EmailSender(Protocol):
    async def send(self, email: OutgoingEmail) -> str:
        """Send `email`; return the provider's answer, or raise DeliveryError."""
        ...


class TextSender(Protocol):
    async def send(self, message: OutgoingText, provider: ProviderSettings) -> str:
        """Send an SMS or push notification through the project's HTTP provider."""
        ...


class WebhookSender(Protocol):
    async def send(self, request: OutgoingWebhook, secret: str) -> str:
        """Make the request, signed with `secret` per Standard Webhooks."""
        ...


@dataclass(frozen=True)
class ChannelSettings:
    sms: ProviderSettings | None
    push: ProviderSettings | None
    webhook_secret: str


@dataclass(frozen=True)
class Channels:
    """The senders of each channel, how hard to try, and how many deliveries may be under way at
    once in this process: a delivery holds its run's lock, and so a database connection, until
    the provider answers. A slot is one such transaction: a channel worker's whole fetch (see
    `perform_steps`) or one task handled alone. `slots` stays below the connection pool's size
    and leaves room for run starts, waits and timers however slow the providers are."""

    email: EmailSender
    text: TextSender
    webhook: WebhookSender
    message_domain: str = "herald.local"
    max_attempts: int = 5
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(DELIVERY_SLOTS))


class EventLog(Protocol):
    def since(self, team_id: str, event: str, since: datetime) -> AsyncGenerator[event_pb2.Event, None]:
        """The events named `event` the project sent since `since`, oldest first."""
        ...


async def start_run(start: run_pb2.RunStart, uow: ExecutorUnitOfWork) -> None:
    """Store a requested run and move it to its first step that waits (see `start_runs`)."""
    await start_runs([start], uow)


async def start_runs(starts: Sequence[run_pb2.RunStart], uow: ExecutorUnitOfWork) -> None:
    """Store requested runs and move each to its first step that waits, all in one transaction;
    a repeated request changes nothing."""
    now = utcnow()
    runs = []
    for start in starts:
        run = messages.run_from_start(start)
        run.created_at = now
        runs.append(run)
    async with uow:
        new = await uow.runs.add(runs)
        started = []
        for run in runs:
            if run.id not in new:
                log.info("run.already_started", run_id=str(run.id))
                continue
            new.discard(run.id)  # the same request twice in one batch starts one run
            uow.publish(messages.run_started_record(run))
            await advance(run, uow)
            started.append(run)
        async with uow.together():
            await uow.runs.save(*started)
            await uow.stage_pending()
        await uow.commit()
    for run in started:
        log.info(
            "run.started",
            run_id=str(run.id),
            trigger_id=str(run.trigger_id),
            workflow=run.workflow_key,
            version=run.workflow_version,
        )


async def advance(run: Run, uow: ExecutorUnitOfWork) -> None:
    """Run flow steps until a step has to wait (a message queued to its channel, a delay, a
    wait_for_event) or the run ends."""
    while run.status == RunStatus.RUNNING:
        now = utcnow()
        step = run.next_pending()
        failed = any(step.status == StepStatus.FAILED for step in run.steps)
        if failed or step is None:
            run.finish(RunStatus.FAILED if failed else RunStatus.COMPLETED, now)
            uow.publish(messages.run_finished_record(run))
            _publish_events(uow, messages.run_events(run))
            return
        if step.spec.channel is not None:
            step.status = StepStatus.QUEUED
            uow.publish(messages.step_task(run, step))
            return
        if not await _flow_step(run, step, uow, now):
            return


async def _flow_step(run: Run, step: StepState, uow: ExecutorUnitOfWork, now: datetime) -> bool:
    """Perform a flow step; True when the run moves on at once, False when it waits."""
    spec = step.spec
    if spec.type == "exit":
        step.finish(StepStatus.DONE, "exit: the run ends here", now)
        run.skip_rest("skipped: the run exited before this step", now)
        return True
    if spec.type == "branch":
        taken, why = _branch(run, step)
        target = spec.then if taken else spec.else_
        step.finish(StepStatus.DONE, f"{why}: {'then' if taken else 'else'} → {target or 'next step'}", now)
        if target:
            run.jump_to(target, now)
        return True
    if spec.type == "delay":
        try:
            due = _delay_until(run, step, now)
        except DeliveryError as error:
            step.finish(StepStatus.FAILED, str(error), now)
            return True
        if due <= now:
            step.finish(StepStatus.DONE, f"no delay: {due.isoformat(timespec='seconds')} has passed", now)
            return True
        step.status, step.detail = StepStatus.WAITING, f"waiting until {due.isoformat(timespec='seconds')}"
        await uow.timers.add(Timer(run.id, spec.id, run.team_id, TimerKind.DELAY, due))
        return False
    if spec.type == "wait_for_event":
        due = now + parse_duration(spec.timeout)
        step.status = StepStatus.WAITING
        step.detail = f"waiting for {spec.event} until {due.isoformat(timespec='seconds')}"
        await uow.timers.add(
            Timer(
                run.id,
                spec.id,
                run.team_id,
                TimerKind.WAIT,
                due,
                contact_id=run.contact_id,
                event=spec.event,
                since=run.waits_since,
            )
        )
        return False
    step.finish(StepStatus.FAILED, f"unknown step type {spec.type!r}", now)
    return True


def _branch(run: Run, step: StepState) -> tuple[bool, str]:
    """Which way a branch goes; a condition that cannot be evaluated takes the else path."""
    condition = compile_condition(step.spec.condition, CONDITION_NAMES)
    data = run.condition_data
    try:
        taken = condition.evaluate(data)
    except ConditionError as error:
        return False, f"condition could not be evaluated ({error})"
    return taken, f"condition was {str(taken).lower()} [{condition.values_seen(data)}]"


def _delay_until(run: Run, step: StepState, now: datetime) -> datetime:
    if step.spec.duration:
        return now + parse_duration(step.spec.duration)
    text = render(step.spec.until, run).strip()
    try:
        due = datetime.fromisoformat(text)
    except ValueError:
        raise DeliveryError(f"until rendered {text[:100]!r}, which is not an RFC 3339 timestamp") from None
    if due.tzinfo is None:
        raise DeliveryError(f"until rendered {text[:100]!r}, which has no time zone (add Z or +00:00)")
    return due


StepOutcome = str | Poison | RetryLater | None
"""What became of one step task: the step's new status (sent or failed); None when there was
nothing to do (the run is gone, the step was done already, or an earlier task of the same fetch
names the same step); RetryLater after a transient failure that leaves attempts (the attempt is
recorded); Poison when the task can never be performed."""


async def perform_step(task: run_pb2.StepTask, uow: ExecutorUnitOfWork, channels: Channels) -> str | None:
    """`perform_steps` for one task: the step's new status (sent or failed), or None when there
    was nothing to do; raises the task's RetryLater or Poison."""
    [outcome] = await perform_steps([task], uow, channels)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


async def perform_steps(
    tasks: Sequence[run_pb2.StepTask], uow: ExecutorUnitOfWork, channels: Channels
) -> list[StepOutcome]:
    """Deliver message steps, each at most once per run and step, and move their runs on, all in
    one transaction; each task's outcome, in the order of `tasks`.

    The runs are locked (one statement) before their steps are read, and stay locked while the
    messages are sent, so two workers never send the same step; a step already sent or failed
    is skipped, and a step named by several tasks is performed once. What the deliveries read
    (providers, webhook secrets) is read first, once per project; then every message is sent at
    once, so a fetch takes about as long as its slowest provider. What bounds the sends under
    way is the number of tasks: a channel worker's fetch size (services.executor.main), for one
    slot of `channels.slots` (one database connection) for the whole fetch. Then each outcome
    is applied in turn: a transient failure is retried by the bus with backoff (or after the
    provider's Retry-After), up to the step's `max_attempts`, with the attempt recorded in this
    same commit; a permanent one, or the last attempt, fails the step, records a dead letter
    and fails the run.
    """
    outcomes: list[StepOutcome] = [None] * len(tasks)
    # Each (run, step) by its first task; a task repeating it has nothing left to do.
    wanted: dict[tuple[uuid.UUID, str], int] = {}
    for index, task in enumerate(tasks):
        try:
            wanted.setdefault((uuid.UUID(task.run_id), task.step_id), index)
        except ValueError:
            outcomes[index] = Poison(f"a step task names no run: {task.run_id!r}")
    if not wanted:
        return outcomes
    attempts: list[_Attempt] = []
    async with channels.slots, uow:
        runs = await uow.runs.lock_many([run_id for run_id, _ in wanted])
        for (run_id, step_id), index in wanted.items():
            run = runs.get(run_id)
            step = run.step(step_id) if run is not None else None
            if run is None:
                # Erased with its contact (right to erasure) before this step ran: nothing to send.
                log.info("step.run_gone", run_id=str(run_id), step_id=step_id)
            elif step is None:
                outcomes[index] = Poison(f"run {run_id} has no step {step_id!r}")
            elif step.status != StepStatus.QUEUED:
                log.info("step.already_done", run_id=str(run_id), step_id=step_id, status=step.status)
            else:
                step.attempts += 1
                attempts.append(_Attempt(index, run, step))
        if not attempts:
            return outcomes
        settings = _ProjectSettings(uow)
        for attempt in attempts:
            await _prepare(attempt, settings, uow, channels)
        await asyncio.gather(*(_send(attempt) for attempt in attempts if attempt.send is not None))
        for attempt in attempts:
            outcomes[attempt.index] = await _conclude(attempt, uow, channels)
        async with uow.together():  # one round trip, then the commit's
            await uow.runs.save(*{attempt.run.id: attempt.run for attempt in attempts}.values())
            await uow.stage_pending()
        await uow.commit()
    for attempt in attempts:
        run, step, outcome = attempt.run, attempt.step, outcomes[attempt.index]
        if isinstance(outcome, RetryLater):
            log.info(
                "step.retry",
                run_id=str(run.id),
                trigger_id=str(run.trigger_id),
                step_id=step.spec.id,
                attempts=step.attempts,
                delay=round(outcome.delay or 0.0, 3),
            )
        else:
            log.info(
                "step.done",
                run_id=str(run.id),
                step_id=step.spec.id,
                status=step.status,
                attempts=step.attempts,
            )
    return outcomes


@dataclass
class _Attempt:
    """One delivery of a fetch: its task's place, its run and step, and how it goes."""

    index: int
    run: Run
    step: StepState
    # A provider's call, or a write in the transaction (an in-app feed item, a development capture).
    send: Callable[[], Awaitable[str]] | None = None
    record: Callable[[], Awaitable[str]] | None = None
    detail: str = ""
    error: DeliveryError | None = None


class _ProjectSettings:
    """The providers and webhook secrets a fetch's deliveries need, each read once."""

    def __init__(self, uow: ExecutorUnitOfWork):
        self._uow = uow
        self._providers: dict[tuple[str, str], ProviderSettings | None] = {}
        self._secrets: dict[str, str] = {}

    async def provider(self, team_id: str, channel: str) -> ProviderSettings | None:
        if (team_id, channel) not in self._providers:
            self._providers[(team_id, channel)] = await self._uow.channels.provider(team_id, channel)
        return self._providers[(team_id, channel)]

    async def webhook_secret(self, team_id: str) -> str:
        if team_id not in self._secrets:
            self._secrets[team_id] = await self._uow.channels.webhook_secret(team_id)
        return self._secrets[team_id]


async def _prepare(
    attempt: _Attempt, settings: _ProjectSettings, uow: ExecutorUnitOfWork, channels: Channels
) -> None:
    """Render what the step sends and read what sending needs; a failure here is the attempt's."""
    run, spec = attempt.run, attempt.step.spec
    channel = spec.channel
    provider = await settings.provider(run.team_id, channel) if channel in PROVIDER_CHANNELS else None
    secret = await settings.webhook_secret(run.team_id) if channel == "webhook" else ""
    try:
        if channel == "email":
            email = render_email(run, spec, channels.message_domain)
            attempt.send = lambda: channels.email.send(email)
        elif channel in PROVIDER_CHANNELS:
            text = render_text(run, spec)
            if provider is None:
                attempt.record = lambda: _capture(text, uow)
            else:
                attempt.send = lambda: channels.text.send(text, provider)
        elif channel == "webhook":
            request = render_webhook(run, spec)
            attempt.send = lambda: channels.webhook.send(request, secret)
        elif channel == "in_app":
            item = render_feed_item(run, spec, utcnow())
            attempt.record = lambda: _add_to_feed(item, uow)
        else:
            attempt.error = DeliveryError(f"no channel for step type {spec.type!r}", permanent=True)
    except Exception as error:
        attempt.error = _delivery_error(attempt, error)


async def _send(attempt: _Attempt) -> None:
    assert attempt.send is not None
    try:
        attempt.detail = await attempt.send()
    except Exception as error:
        attempt.error = _delivery_error(attempt, error)


def _delivery_error(attempt: _Attempt, error: Exception) -> DeliveryError:
    """A DeliveryError as it is; anything else is a sender's own bug or an unforeseen failure:
    logged, and retried as a transient failure."""
    if isinstance(error, DeliveryError):
        return error
    log.error("step.sender_failed", run_id=str(attempt.run.id), step_id=attempt.step.spec.id, exc_info=error)
    return DeliveryError(f"sending failed unexpectedly: {error!r}")


async def _capture(message: OutgoingText, uow: ExecutorUnitOfWork) -> str:
    await uow.dev_messages.add(message, utcnow())
    return (
        f"captured by the development {message.channel} provider: this project has no "
        f"{message.channel} provider (PUT /api/v1/channels/{message.channel})"
    )


async def _add_to_feed(item: FeedItem, uow: ExecutorUnitOfWork) -> str:
    await uow.feed.add(item)
    return f"added to the feed of contact {item.external_id or item.contact_id} as {item.id}"


async def _conclude(attempt: _Attempt, uow: ExecutorUnitOfWork, channels: Channels) -> StepOutcome:
    """Record how the attempt went and move its run on, unless it is to be retried."""
    if attempt.record is not None and attempt.error is None:
        attempt.detail = await attempt.record()
    run, step, error = attempt.run, attempt.step, attempt.error
    max_attempts = step.spec.max_attempts or channels.max_attempts
    if error is None:
        step.status, step.detail = StepStatus.SENT, attempt.detail
    else:
        step.detail = f"attempt {step.attempts} of {max_attempts}: {error}"
        if not error.permanent and step.attempts < max_attempts:
            return RetryLater(str(error), delay=retry_delay(step.attempts, error.retry_after))
        step.status = StepStatus.FAILED
        await uow.dead_letters.add(messages.dead_letter(run, step, utcnow()))
    step.finished_at = utcnow()
    uow.publish(messages.delivery_record(run, step))
    _publish_events(uow, messages.delivery_events(run, step))
    await advance(run, uow)
    return step.status


def retry_delay(attempt: int, retry_after: float | None = None) -> float:
    """Seconds before the next attempt of a delivery: exponential from 2 s up to 5 minutes,
    with jitter over the upper half, and never sooner than the provider's Retry-After."""
    ceiling = min(RETRY_CEILING, RETRY_BASE * 2 ** (attempt - 1))
    backoff = ceiling / 2 + random.uniform(0, ceiling / 2)
    return float(min(MAX_RETRY_AFTER, max(backoff, retry_after or 0.0)))


def _publish_events(uow: ExecutorUnitOfWork, events: list[OutgoingMessage]) -> None:
    for event in events:
        uow.publish(event)


async def fire_timers(unit_of_work: Callable[[], ExecutorUnitOfWork], limit: int = 50) -> int:
    """Fire up to `limit` timers that are due (delays end, waits time out), each in a
    transaction of its own with its run's change; a timer that fails is logged and postponed by
    a minute, so it cannot hold up the others. Any replica may call this: SKIP LOCKED hands
    each timer to one of them."""
    fired = 0
    for _ in range(limit):
        failed: Timer | None = None
        uow = unit_of_work()
        async with uow:
            timers = await uow.timers.due(utcnow(), 1)
            if not timers:
                break
            try:
                await _fire(timers[0], uow)
                await uow.commit()
                fired += 1
            except Exception:
                log.exception("timer.failed", run_id=str(timers[0].run_id), step_id=timers[0].step_id)
                failed = timers[0]
        if failed is not None:
            retry = unit_of_work()
            async with retry:
                await retry.timers.postpone(failed, utcnow() + TIMER_RETRY)
                await retry.commit()
    return fired


async def _fire(timer: Timer, uow: ExecutorUnitOfWork) -> None:
    await uow.timers.delete(timer)
    run = await uow.runs.lock(timer.run_id)
    step = run.step(timer.step_id) if run else None
    if run is None or step is None or step.status != StepStatus.WAITING:
        return
    now = utcnow()
    if timer.kind == TimerKind.DELAY:
        step.finish(StepStatus.DONE, f"waited until {timer.due_at.isoformat(timespec='seconds')}", now)
    else:
        _time_out(run, step, now)
    await advance(run, uow)
    await uow.runs.save(run)


def _time_out(run: Run, step: StepState, now: datetime) -> None:
    spec = step.spec
    waited = f"timed out after {spec.timeout} waiting for {spec.event}"
    if spec.on_timeout:
        step.finish(StepStatus.DONE, f"{waited}: → {spec.on_timeout}", now)
        run.jump_to(spec.on_timeout, now)
    else:
        step.finish(StepStatus.DONE, f"{waited}: the run ends", now)
        run.skip_rest(f"skipped: {spec.id!r} timed out", now)


async def resume_waits(event: event_pb2.Event, uow: ExecutorUnitOfWork) -> int:
    """Resume the runs of the event's contact that wait for this event; how many resumed."""
    if not event.contact.id:
        return 0
    resumed = 0
    async with uow:
        waits = await uow.timers.waits_for(event.project_id, event.name, event.contact.id)
        for wait in waits:
            resumed += await _resume(event, wait, uow)
        if waits:
            await uow.commit()
    return resumed


async def _resume(event: event_pb2.Event, wait: Timer, uow: ExecutorUnitOfWork) -> bool:
    """End `wait` with `event` when it is the awaited one; the wait must be locked."""
    run = await uow.runs.lock(wait.run_id)
    step = run.step(wait.step_id) if run else None
    if run is None or step is None or step.status != StepStatus.WAITING:
        await uow.timers.delete(wait)
        return False
    if not _ends_wait(event, run, step, wait):
        return False
    await uow.timers.delete(wait)
    if event.HasField("accepted_at"):
        run.waited_until = from_timestamp(event.accepted_at) + timedelta(microseconds=1)
    step.finish(StepStatus.DONE, f"{event.name} arrived (event {event.event_id})", utcnow())
    await advance(run, uow)
    await uow.runs.save(run)
    return True


def _ends_wait(event: event_pb2.Event, run: Run, step: StepState, wait: Timer) -> bool:
    """Is `event` the one the step waits for: another event than the run's own, accepted after
    it, from the same contact, and matching the step's `match`."""
    if event.event_id == str(run.event_id) or event.contact.id != wait.contact_id:
        return False
    if wait.since and event.HasField("accepted_at") and from_timestamp(event.accepted_at) < wait.since:
        return False
    if not step.spec.match:
        return True
    data = {**run.condition_data, "event": event_document(event)}
    try:
        return compile_condition(step.spec.match, CONDITION_NAMES).evaluate(data)
    except ConditionError as error:
        log.info("wait.match_failed", run_id=str(run.id), step_id=step.spec.id, error=str(error))
        return False


async def awaited_events(team_id: str, uow: ExecutorUnitOfWork) -> frozenset[str]:
    """The event names the project's runs wait for now."""
    async with uow:
        return await uow.timers.awaited_events(team_id)


async def catch_up_waits(uow: ExecutorUnitOfWork, events: EventLog, limit: int = 20) -> int:
    """Look back, for each new wait, over the events that arrived before the wait existed (while
    the run was being set up, or during an earlier delay): one of them may end it at once.
    A wait is looked back for once it is older than the wait consumer's cache of awaited names,
    so every event is seen by one or the other; the wait stays locked meanwhile."""
    async with uow:
        waits = await uow.timers.not_caught_up(limit, utcnow() - timedelta(seconds=2 * AWAITED_SECONDS))
        for wait in waits:
            since = (wait.since or utcnow()) - LOOK_BACK_SLACK
            async with aclosing(events.since(wait.team_id, wait.event, since)) as earlier:
                async for event in earlier:
                    if await _resume(event, wait, uow):
                        break
                else:
                    await uow.timers.caught_up(wait)
        if waits:
            await uow.commit()
    return len(waits)


async def list_feed(
    team_id: str, external_id: str, limit: int, unread_only: bool, uow: ExecutorUnitOfWork
) -> list[FeedItem]:
    limit = limit or FEED_LIMIT
    if not 1 <= limit <= MAX_FEED_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_FEED_LIMIT}", reason="INVALID_LIMIT")
    async with uow:
        return await uow.feed.newest(team_id, external_id, limit, unread_only)


async def mark_feed_read(team_id: str, external_id: str, ids: list[str], uow: ExecutorUnitOfWork) -> int:
    """Mark the contact's feed items read; no ids marks every item. How many changed."""
    parsed = []
    for index, text in enumerate(ids):
        try:
            parsed.append(uuid.UUID(text))
        except ValueError:
            raise InvalidArgument(
                f"ids[{index}]: {text[:64]!r} is not a feed item id", reason="INVALID_FEED_ITEM_ID"
            ) from None
    async with uow:
        changed = await uow.feed.mark_read(team_id, external_id, parsed, utcnow())
        await uow.commit()
    return changed


DEAD_LETTER_STATUSES = (DeadLetterStatus.DEAD, DeadLetterStatus.REPLAYED)


def _bad_parameter(parameter: str, message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="INVALID_PARAMETER", metadata={"parameter": parameter})


async def list_dead_letters(
    team_id: str,
    limit: int,
    uow: ExecutorUnitOfWork,
    *,
    status: str = "",
    channel: str = "",
    cursor: str = "",
) -> DeadLetterPage:
    """A page of the project's dead letters, newest first, with the filters given, and the DLQ's
    size (letters in status dead)."""
    limit = limit or FEED_LIMIT
    if not 1 <= limit <= MAX_FEED_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_FEED_LIMIT}", reason="INVALID_LIMIT")
    if status and status not in DEAD_LETTER_STATUSES:
        raise _bad_parameter("status", f"status must be dead or replayed; got {status[:40]!r}")
    if channel and channel not in CHANNEL_OF_STEP_TYPE.values():
        raise _bad_parameter(
            "channel",
            f"channel must be one of {', '.join(CHANNEL_OF_STEP_TYPE.values())}; got {channel[:40]!r}",
        )
    after = decode_cursor(cursor)
    try:
        position = (after[0], uuid.UUID(after[1])) if after else None
    except ValueError:
        raise _bad_parameter("cursor", "cursor is not one this API gave: start again without it") from None
    query = DeadLetterQuery(limit + 1, status, channel, position)
    async with uow:
        letters = await uow.dead_letters.newest(team_id, query)
        total = await uow.dead_letters.count_dead(team_id)
    page = letters[:limit]
    next_after = (page[-1].failed_at, page[-1].id) if len(letters) > limit else None
    return DeadLetterPage(page, next_after, total)


async def get_dead_letter(team_id: str, letter_id: str, uow: ExecutorUnitOfWork) -> DeadLetter:
    """One of the project's dead letters; NotFound for an unknown id or another project's."""
    try:
        parsed = uuid.UUID(letter_id)
    except ValueError:
        parsed = None
    async with uow:
        letter = await uow.dead_letters.get(team_id, parsed) if parsed else None
    if letter is None:
        raise NotFound(
            "Dead letter not found", reason="DEAD_LETTER_NOT_FOUND", metadata={"id": letter_id[:64]}
        )
    return letter


async def replay_dead_letter(team_id: str, letter_id: str, uow: ExecutorUnitOfWork) -> DeadLetter:
    """Queue a dead delivery again with a fresh set of attempts; the run carries on from it. A
    delivery that was sent is never sent again."""
    try:
        parsed = uuid.UUID(letter_id)
    except ValueError:
        raise NotFound("Dead letter not found", reason="DEAD_LETTER_NOT_FOUND") from None
    async with uow:
        found = await uow.dead_letters.get(team_id, parsed)
        # The run first, then the letter: the order perform_step takes them in.
        run = await uow.runs.lock(found.run_id) if found else None
        letter = await uow.dead_letters.lock(team_id, parsed) if run else None
        if letter is None:
            raise NotFound(
                "Dead letter not found", reason="DEAD_LETTER_NOT_FOUND", metadata={"id": letter_id}
            )
        step = run.step(letter.step_id) if run else None
        if run is None or step is None:
            raise NotFound("The dead letter's run is gone", reason="RUN_NOT_FOUND")
        if letter.status == DeadLetterStatus.REPLAYED or step.status != StepStatus.FAILED:
            raise FailedPrecondition(
                f"Dead letter {letter_id} was replayed already: its delivery is {step.status}",
                reason="DEAD_LETTER_REPLAYED",
            )
        now = utcnow()
        letter.status, letter.replays, letter.replayed_at = DeadLetterStatus.REPLAYED, letter.replays + 1, now
        run.replays += 1
        run.status, run.finished_at = RunStatus.RUNNING, None
        step.status, step.attempts, step.finished_at = StepStatus.QUEUED, 0, None
        step.detail = f"replayed from the dead letters ({letter.replays}): {letter.error}"[:2000]
        uow.publish(messages.step_task(run, step))
        await uow.dead_letters.save(letter)
        await uow.runs.save(run)
        await uow.commit()
    return letter


async def channel_settings(team_id: str, uow: ExecutorUnitOfWork) -> ChannelSettings:
    """The project's SMS and push providers and its webhook signing secret (created on first use)."""
    async with uow:
        settings = ChannelSettings(
            sms=await uow.channels.provider(team_id, "sms"),
            push=await uow.channels.provider(team_id, "push"),
            webhook_secret=await uow.channels.webhook_secret(team_id),
        )
        await uow.commit()
    return settings


async def put_provider(
    team_id: str, channel: str, url: str, headers: dict[str, str], uow: ExecutorUnitOfWork
) -> ProviderSettings:
    """Set the project's HTTP provider for `channel` (sms or push)."""
    problems = Problems()
    if channel not in PROVIDER_CHANNELS:
        raise NotFound(
            f"No channel {channel[:40]!r} takes a provider: use sms or push", reason="CHANNEL_NOT_FOUND"
        )
    if not is_http_url(url.strip()):
        problems.add("url", f"{url[:200]!r} is not an http:// or https:// URL")
    headers = dict(checked_headers(headers, "headers", problems))
    problems.raise_if_any("provider")
    async with uow:
        stored = await uow.channels.put_provider(
            ProviderSettings(team_id, channel, url.strip(), dict(headers))
        )
        await uow.commit()
    return stored


async def set_webhook_secret(team_id: str, secret: str, uow: ExecutorUnitOfWork) -> str:
    """Replace the webhook signing secret: `secret` (whsec_ and base64) or, when empty, a new one."""
    if secret and not is_webhook_secret(secret):
        raise InvalidArgument(
            "signing_secret must be whsec_ followed by 24 to 64 bytes in base64; send none for a new one",
            reason="INVALID_SIGNING_SECRET",
        )
    if not secret:
        secret = new_webhook_secret()
    async with uow:
        await uow.channels.set_webhook_secret(team_id, secret)
        await uow.commit()
    return secret


async def list_dev_messages(
    team_id: str, channel: str, limit: int, uow: ExecutorUnitOfWork
) -> list[tuple[OutgoingText, datetime]]:
    if channel and channel not in PROVIDER_CHANNELS:
        raise InvalidArgument("channel must be sms or push", reason="INVALID_CHANNEL")
    limit = limit or FEED_LIMIT
    if not 1 <= limit <= MAX_FEED_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_FEED_LIMIT}", reason="INVALID_LIMIT")
    async with uow:
        return await uow.dev_messages.newest(team_id, channel, limit)


async def get_run(team_id: str, run_id: str, uow: ExecutorUnitOfWork) -> Run:
    run, _ = await describe_run(team_id, run_id, uow, with_timers=False)
    return run


async def describe_run(
    team_id: str, run_id: str, uow: ExecutorUnitOfWork, *, with_timers: bool = True
) -> tuple[Run, list[Timer]]:
    """The run, and the timers of its waiting steps (a delay's end, a wait's event and timeout)."""
    try:
        parsed = uuid.UUID(run_id)
    except ValueError:
        raise NotFound("Run not found", reason="RUN_NOT_FOUND") from None
    async with uow:
        run = await uow.runs.get(team_id, parsed)
        if run is None:
            raise NotFound("Run not found", reason="RUN_NOT_FOUND", metadata={"run_id": run_id})
        running = with_timers and run.status == RunStatus.RUNNING
        timers = await uow.timers.of_run(run.id) if running else []
    return run, timers
