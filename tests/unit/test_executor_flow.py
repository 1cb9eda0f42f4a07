"""The executor's flow steps (branch, exit, delay, wait_for_event), its other channels (sms, push,
webhook, in-app), dead letters and replays, and the system events it emits."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from herald.bus.v1 import event_pb2, run_pb2
from herald.workflow.v1 import workflow_pb2
from kernel.bus import OutgoingMessage, RetryLater
from kernel.clock import to_timestamp, utcnow
from kernel.errors import FailedPrecondition, InvalidArgument, NotFound
from kernel.steps import StepSpec
from kernel.structs import to_struct
from services.executor.domain import (
    DeliveryError,
    OutgoingWebhook,
    ProviderSettings,
    Run,
    RunStatus,
    StepState,
    StepStatus,
    Timer,
    TimerKind,
)
from services.executor.domain import waiting as waits_for
from services.executor.handlers import (
    Channels,
    catch_up_waits,
    fire_timers,
    get_run,
    list_dead_letters,
    list_dev_messages,
    list_feed,
    mark_feed_read,
    perform_step,
    perform_steps,
    put_provider,
    replay_dead_letter,
    resume_waits,
    retry_delay,
    set_webhook_secret,
    start_run,
)
from tests.unit.fakes import (
    FakeEmailSender,
    FakeExecutorUnitOfWork,
    FakeRunRepository,
    FakeTextSender,
    FakeWebhookSender,
)

TEAM = "team-1"
RUN_ID = uuid.UUID("7b0d1d0e-64a3-4a43-9d43-46e0c1c1a001")
TRIGGER_ID = uuid.UUID("7b0d1d0e-64a3-4a43-9d43-46e0c1c1a002")
EVENT_ID = uuid.UUID("7b0d1d0e-64a3-4a43-9d43-46e0c1c1a003")
CONTACT = "contact-1"


def step(step_id: str, step_type: str, **fields: Any) -> workflow_pb2.Step:
    body = fields.pop("body", None)
    other = fields.pop("else_", None)
    message = workflow_pb2.Step(id=step_id, type=step_type, **fields)
    if body is not None:
        message.body.CopyFrom(to_struct({"v": body}).fields["v"])
    if other is not None:
        setattr(message, "else", other)
    return message


EMAIL = step("hello", "email", subject="Hi {{contact.name}}", body="Hello")


def an_event(name: str = "user_signup", **fields: Any) -> event_pb2.Event:
    defaults: dict[str, Any] = {
        "event_id": str(EVENT_ID),
        "trigger_id": str(TRIGGER_ID),
        "project_id": TEAM,
        "name": name,
        "contact": event_pb2.Contact(
            id=CONTACT,
            external_id="ada",
            email="ada@example.com",
            phone="+14155550100",
            name="Ada",
            custom_fields=to_struct({"plan": "Pro"}),
        ),
        "data": to_struct({"amount": 150, "order_id": "o-1"}),
        "variables": to_struct({"coupon": "WELCOME10"}),
        "accepted_at": to_timestamp(utcnow() - timedelta(seconds=1)),
    }
    return event_pb2.Event(**{**defaults, **fields})


async def started(
    *steps: workflow_pb2.Step,
    event: event_pb2.Event | None = None,
    run_id: uuid.UUID = RUN_ID,
    uow: FakeExecutorUnitOfWork | None = None,
) -> FakeExecutorUnitOfWork:
    """A run of a workflow of `steps` started (in `uow`, or in a new one)."""
    workflow = workflow_pb2.Workflow(
        key="flow",
        name="Flow",
        trigger=workflow_pb2.WorkflowTrigger(event="user_signup"),
        steps=steps,
        version=1,
    )
    uow = uow or FakeExecutorUnitOfWork()
    start = run_pb2.RunStart(
        run_id=str(run_id),
        trigger_id=str(TRIGGER_ID),
        project_id=TEAM,
        workflow=workflow,
        event=event or an_event(),
    )
    await start_run(start, uow)
    return uow


def statuses(uow: FakeExecutorUnitOfWork) -> dict[str, str]:
    return {state.spec.id: state.status for state in uow.runs.rows[RUN_ID].steps}


def queued(uow: FakeExecutorUnitOfWork) -> list[str]:
    return [
        run_pb2.StepTask.FromString(m.payload).step_id
        for m in uow.published
        if m.subject.startswith("steps.")
    ]


def events(messages: list[OutgoingMessage]) -> list[event_pb2.Event]:
    return [event_pb2.Event.FromString(m.payload) for m in messages if m.subject.startswith("events.")]


def task(step_id: str, run_id: uuid.UUID = RUN_ID) -> run_pb2.StepTask:
    return run_pb2.StepTask(run_id=str(run_id), trigger_id=str(TRIGGER_ID), project_id=TEAM, step_id=step_id)


@dataclasses.dataclass
class Senders:
    email: FakeEmailSender = dataclasses.field(default_factory=FakeEmailSender)
    text: FakeTextSender = dataclasses.field(default_factory=FakeTextSender)
    webhook: FakeWebhookSender = dataclasses.field(default_factory=FakeWebhookSender)

    def channels(self, max_attempts: int = 3) -> Channels:
        return Channels(email=self.email, text=self.text, webhook=self.webhook, max_attempts=max_attempts)


def make_due(uow: FakeExecutorUnitOfWork) -> None:
    """Every timer is due now."""
    for key, (timer, done) in list(uow.timers.rows.items()):
        uow.timers.rows[key] = (dataclasses.replace(timer, due_at=utcnow() - timedelta(seconds=1)), done)


# -- branch and exit ---------------------------------------------------------------------------


async def test_a_true_branch_jumps_to_then_and_skips_the_steps_between() -> None:
    uow = await started(
        step("check", "branch", condition="event.data.amount > 100", then="big", else_="small"),
        step("small", "email", subject="Small", body="x"),
        step("big", "email", subject="Big", body="x"),
    )

    assert statuses(uow) == {"check": "done", "small": "skipped", "big": "queued"}
    assert queued(uow) == ["big"]
    detail = uow.runs.rows[RUN_ID].steps[0].detail
    assert detail == "condition was true [event.data.amount = 150]: then → big"


async def test_a_false_branch_without_else_goes_on_with_the_next_step() -> None:
    uow = await started(
        step("check", "branch", condition="contact.custom_fields.plan == 'Free'", then="last"),
        step("next", "email", subject="Next", body="x"),
        step("last", "exit"),
    )

    assert statuses(uow) == {"check": "done", "next": "queued", "last": "pending"}


async def test_a_branch_condition_that_cannot_be_evaluated_takes_the_else_path() -> None:
    uow = await started(
        step("check", "branch", condition="event.data.missing > 1", then="yes", else_="no"),
        step("yes", "exit"),
        step("no", "email", subject="No", body="x"),
    )

    assert statuses(uow) == {"check": "done", "yes": "skipped", "no": "queued"}
    assert "could not be evaluated (no field 'missing')" in uow.runs.rows[RUN_ID].steps[0].detail


async def test_exit_completes_the_run_and_skips_the_rest() -> None:
    uow = await started(step("stop", "exit"), EMAIL)

    run = uow.runs.rows[RUN_ID]
    assert run.status == RunStatus.COMPLETED
    assert statuses(uow) == {"stop": "done", "hello": "skipped"}
    assert queued(uow) == []
    [completed] = events(uow.published)
    assert completed.name == "herald.workflow.completed"
    assert completed.depth == 1
    assert completed.contact.email == "ada@example.com"


# -- delay ---------------------------------------------------------------------------------------


async def test_a_delay_waits_for_its_timer_then_moves_on() -> None:
    uow = await started(step("pause", "delay", duration="PT1H"), EMAIL)

    assert statuses(uow) == {"pause": "waiting", "hello": "pending"}
    [timer] = uow.timers.timers
    assert timer.kind == TimerKind.DELAY
    assert timedelta(minutes=59) < timer.due_at - utcnow() <= timedelta(hours=1)
    assert await fire_timers(lambda: uow) == 0

    make_due(uow)
    assert await fire_timers(lambda: uow) == 1

    assert statuses(uow) == {"pause": "done", "hello": "queued"}
    assert uow.timers.timers == []
    assert await fire_timers(lambda: uow) == 0


async def test_a_delay_until_a_past_time_does_not_wait() -> None:
    uow = await started(
        step("pause", "delay", until="{{event.data.when}}"),
        EMAIL,
        event=an_event(data=to_struct({"when": "2020-01-01T00:00:00Z"})),
    )

    assert statuses(uow) == {"pause": "done", "hello": "queued"}


async def test_a_delay_until_a_future_time_from_the_event_waits_until_then() -> None:
    uow = await started(
        step("pause", "delay", until="{{event.data.when}}"),
        EMAIL,
        event=an_event(data=to_struct({"when": "2099-05-01T08:30:00+02:00"})),
    )

    [timer] = uow.timers.timers
    assert timer.due_at == datetime.fromisoformat("2099-05-01T06:30:00+00:00")


@pytest.mark.parametrize(
    ("when", "error"),
    [
        ("next tuesday", "which is not an RFC 3339 timestamp"),
        ("2099-05-01T08:30:00", "which has no time zone"),
    ],
)
async def test_a_delay_until_something_that_is_not_a_time_fails_the_run(when: str, error: str) -> None:
    uow = await started(
        step("pause", "delay", until="{{event.data.when}}"),
        EMAIL,
        event=an_event(data=to_struct({"when": when})),
    )

    run = uow.runs.rows[RUN_ID]
    assert run.status == RunStatus.FAILED
    assert error in run.steps[0].detail
    assert statuses(uow)["hello"] == "pending"


# -- wait_for_event ------------------------------------------------------------------------------

WAIT = step(
    "activated",
    "wait_for_event",
    event="user.activated",
    timeout="P3D",
    match="event.data.plan != ''",
    on_timeout="nudge",
)


async def waiting() -> FakeExecutorUnitOfWork:
    return await started(
        WAIT,
        step("thanks", "email", subject="Thanks", body="x"),
        step("done", "exit"),
        step("nudge", "sms", body="Come back, {{contact.name}}"),
    )


def activation(**fields: Any) -> event_pb2.Event:
    defaults: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "trigger_id": str(uuid.uuid4()),
        "data": to_struct({"plan": "pro"}),
        "accepted_at": to_timestamp(utcnow()),
    }
    return an_event("user.activated", **{**defaults, **fields})


async def test_a_wait_registers_for_the_event_of_its_contact() -> None:
    uow = await waiting()

    [wait] = uow.timers.timers
    assert (wait.kind, wait.event, wait.contact_id, wait.team_id) == (
        TimerKind.WAIT,
        "user.activated",
        CONTACT,
        TEAM,
    )
    assert timedelta(days=3) - timedelta(minutes=1) < wait.due_at - utcnow() <= timedelta(days=3)
    assert statuses(uow)["activated"] == "waiting"


async def test_a_matching_event_resumes_the_run_with_the_next_step() -> None:
    uow = await waiting()
    event = activation()

    assert await resume_waits(event, uow) == 1

    assert statuses(uow) == {"activated": "done", "thanks": "queued", "done": "pending", "nudge": "pending"}
    assert uow.timers.timers == []
    assert event.event_id in uow.runs.rows[RUN_ID].steps[0].detail
    assert await resume_waits(activation(), uow) == 0


@pytest.mark.parametrize(
    "event",
    [
        activation(data=to_struct({"plan": ""})),  # the match is false
        activation(data=to_struct({})),  # the match cannot be evaluated
        activation(contact=event_pb2.Contact(id="someone-else")),
        activation(accepted_at=to_timestamp(utcnow() - timedelta(hours=1))),  # before the run's event
    ],
    ids=["match-false", "match-error", "other-contact", "older"],
)
async def test_an_event_that_is_not_the_awaited_one_leaves_the_run_waiting(event: event_pb2.Event) -> None:
    uow = await waiting()

    assert await resume_waits(event, uow) == 0

    assert statuses(uow)["activated"] == "waiting"
    assert len(uow.timers.timers) == 1


async def test_the_runs_own_event_never_ends_its_wait() -> None:
    uow = await started(step("again", "wait_for_event", event="user_signup", timeout="PT1H"), EMAIL)

    assert await resume_waits(an_event(accepted_at=to_timestamp(utcnow())), uow) == 0
    assert statuses(uow)["again"] == "waiting"


async def test_a_timeout_takes_the_on_timeout_path() -> None:
    uow = await waiting()
    make_due(uow)

    assert await fire_timers(lambda: uow) == 1

    assert statuses(uow) == {"activated": "done", "thanks": "skipped", "done": "skipped", "nudge": "queued"}
    assert "timed out after P3D waiting for user.activated: → nudge" in uow.runs.rows[RUN_ID].steps[0].detail
    assert await resume_waits(activation(), uow) == 0


async def test_a_timeout_without_on_timeout_ends_the_run() -> None:
    uow = await started(step("wait", "wait_for_event", event="user.activated", timeout="PT1H"), EMAIL)
    make_due(uow)

    await fire_timers(lambda: uow)

    run = uow.runs.rows[RUN_ID]
    assert run.status == RunStatus.COMPLETED
    assert statuses(uow) == {"wait": "done", "hello": "skipped"}


class ListedEvents:
    def __init__(self, *found: event_pb2.Event) -> None:
        self.found = found
        self.asked: list[tuple[str, str, datetime]] = []

    async def since(self, team_id: str, event: str, since: datetime) -> AsyncGenerator[event_pb2.Event, None]:
        self.asked.append((team_id, event, since))
        for found in self.found:
            yield found


async def test_the_look_back_ends_a_wait_with_an_event_that_arrived_before_it() -> None:
    uow = await waiting()
    earlier = ListedEvents(activation(contact=event_pb2.Contact(id="someone-else")), activation())

    assert await catch_up_waits(uow, earlier) == 1

    assert statuses(uow)["activated"] == "done"
    [(team, name, since)] = earlier.asked
    assert (team, name) == (TEAM, "user.activated")
    assert since < utcnow() - timedelta(seconds=5)
    assert await catch_up_waits(uow, earlier) == 0


async def test_a_look_back_that_finds_nothing_runs_once() -> None:
    uow = await waiting()
    nothing = ListedEvents()

    assert await catch_up_waits(uow, nothing) == 1
    assert await catch_up_waits(uow, nothing) == 0

    assert statuses(uow)["activated"] == "waiting"
    assert len(nothing.asked) == 1


# -- sms, push, webhook, in-app ------------------------------------------------------------------


async def test_an_sms_without_a_provider_goes_to_the_development_provider() -> None:
    uow = await started(step("text", "sms", body="Hi {{contact.name}}, use {{coupon}}"))
    senders = Senders()

    await perform_step(task("text"), uow, senders.channels())

    [(message, _)] = await uow.dev_messages.newest(TEAM, "sms", 10)
    assert (message.to, message.body) == ("+14155550100", "Hi Ada, use WELCOME10")
    assert senders.text.sent == []
    assert "captured by the development sms provider" in uow.runs.rows[RUN_ID].steps[0].detail
    assert uow.runs.rows[RUN_ID].status == RunStatus.COMPLETED
    assert [event.name for event in events(uow.published)] == ["herald.sms.send", "herald.workflow.completed"]


async def test_a_push_goes_to_the_projects_provider_with_a_stable_idempotency_key() -> None:
    uow = await started(
        step("ping", "push", title="Hello {{contact.name}}", body="Order {{event.data.order_id}}")
    )
    provider = ProviderSettings(TEAM, "push", "https://push.example.com/send", {"Authorization": "Bearer k"})
    await uow.channels.put_provider(provider)
    senders = Senders()

    await perform_step(task("ping"), uow, senders.channels())

    [(message, used)] = senders.text.sent
    assert (message.to, message.title, message.body) == ("ada", "Hello Ada", "Order o-1")
    assert used.url == provider.url
    assert message.idempotency_key == str(
        uuid.uuid5(uuid.UUID("0b8e7f0c-4b7a-4f55-8f0e-6a1c2d3e4f50"), f"{RUN_ID}/ping")
    )


async def test_an_sms_to_a_contact_without_a_phone_fails_for_good() -> None:
    event = an_event(contact=event_pb2.Contact(id=CONTACT, email="ada@example.com"))
    uow = await started(step("text", "sms", body="Hi"), event=event)

    await perform_step(task("text"), uow, Senders().channels())

    assert uow.runs.rows[RUN_ID].status == RunStatus.FAILED
    assert "the contact has no phone number" in uow.runs.rows[RUN_ID].steps[0].detail


async def test_a_webhook_renders_its_body_and_headers_and_is_signed_with_the_project_secret() -> None:
    hook = step(
        "hook",
        "webhook",
        url="https://hooks.example.com/{{contact.external_id}}",
        method="PUT",
        headers={"X-Order": "{{event.data.order_id}}"},
        body={"order": "{{event.data.order_id}}", "n": [1, "{{coupon}}"]},
    )
    uow = await started(hook)
    senders = Senders()

    await perform_step(task("hook"), uow, senders.channels())

    [(request, secret)] = senders.webhook.sent
    assert (request.url, request.method) == ("https://hooks.example.com/ada", "PUT")
    assert request.headers == {"X-Order": "o-1"}
    assert request.body == {"order": "o-1", "n": [1, "WELCOME10"]}
    assert request.webhook_id.startswith("msg_")
    assert secret == await uow.channels.webhook_secret(TEAM)
    assert secret.startswith("whsec_")


async def test_a_webhook_without_a_body_sends_the_event_contact_and_variables() -> None:
    uow = await started(step("hook", "webhook", url="https://hooks.example.com/x"))
    senders = Senders()

    await perform_step(task("hook"), uow, senders.channels())

    [(request, _)] = senders.webhook.sent
    assert request.method == "POST"
    assert request.body["event"]["data"] == {"amount": 150, "order_id": "o-1"}
    assert request.body["contact"]["external_id"] == "ada"
    assert request.body["variables"] == {"coupon": "WELCOME10"}


async def test_a_429_is_retried_after_the_providers_retry_after() -> None:
    uow = await started(step("hook", "webhook", url="https://hooks.example.com/x", max_attempts=4))
    senders = Senders()
    senders.webhook.failures.append(DeliveryError("HTTP 429: slow down", retry_after=30.0))

    with pytest.raises(RetryLater) as retry:
        await perform_step(task("hook"), uow, senders.channels(max_attempts=2))

    assert retry.value.delay == 30.0
    assert uow.runs.rows[RUN_ID].steps[0].detail == "attempt 1 of 4: HTTP 429: slow down"


async def test_an_in_app_message_lands_in_the_contacts_feed_once() -> None:
    uow = await started(step("note", "in_app", title="Welcome", body="Hi {{contact.name}}", url="/start"))

    await perform_step(task("note"), uow, Senders().channels())
    await perform_step(task("note"), uow, Senders().channels())

    [item] = await list_feed(TEAM, "ada", 0, False, uow)
    assert (item.title, item.body, item.url, item.read_at) == ("Welcome", "Hi Ada", "/start", None)
    assert await list_feed(TEAM, "someone-else", 0, False, uow) == []
    assert await mark_feed_read(TEAM, "ada", [], uow) == 1
    assert await mark_feed_read(TEAM, "ada", [str(item.id)], uow) == 0
    assert await list_feed(TEAM, "ada", 10, True, uow) == []


async def test_a_fetch_reads_each_projects_provider_and_secret_once() -> None:
    texts, hooks, notes = [uuid.uuid4() for _ in range(3)], [uuid.uuid4() for _ in range(2)], [uuid.uuid4()]
    uow = FakeExecutorUnitOfWork()
    for run_id in texts:
        await started(step("text", "sms", body="Hi {{contact.name}}"), run_id=run_id, uow=uow)
    for run_id in hooks:
        await started(step("hook", "webhook", url="https://hooks.example.com/x"), run_id=run_id, uow=uow)
    await started(step("note", "in_app", body="Hi"), run_id=notes[0], uow=uow)
    await uow.channels.put_provider(ProviderSettings(TEAM, "sms", "https://sms.example.com/send"))
    senders = Senders()
    tasks = [task("text", r) for r in texts] + [task("hook", r) for r in hooks] + [task("note", notes[0])]

    outcomes = await perform_steps(tasks, uow, senders.channels())

    assert outcomes == [StepStatus.SENT] * 6
    assert uow.channels.reads == [(TEAM, "sms"), (TEAM, "webhook")]
    assert len(senders.text.sent) == 3
    assert len({secret for _, secret in senders.webhook.sent}) == 1 and len(senders.webhook.sent) == 2
    assert [item.run_id for item in await list_feed(TEAM, "ada", 0, False, uow)] == notes


async def test_feed_requests_with_bad_input_are_refused() -> None:
    uow = FakeExecutorUnitOfWork()
    with pytest.raises(InvalidArgument, match="limit must be between 1 and 200"):
        await list_feed(TEAM, "ada", 500, False, uow)
    with pytest.raises(InvalidArgument, match="ids\\[1\\]: 'nope' is not a feed item id"):
        await mark_feed_read(TEAM, "ada", [str(uuid.uuid4()), "nope"], uow)


# -- dead letters --------------------------------------------------------------------------------


async def test_a_dead_delivery_is_replayed_once_and_the_run_carries_on() -> None:
    uow = await started(step("hook", "webhook", url="https://hooks.example.com/x", max_attempts=1), EMAIL)
    senders = Senders()
    senders.webhook.failures.append(DeliveryError("HTTP 503: down"))
    await perform_step(task("hook"), uow, senders.channels())
    [letter] = (await list_dead_letters(TEAM, 0, uow)).letters
    assert (letter.status, letter.attempts, letter.error) == ("dead", 1, "attempt 1 of 1: HTTP 503: down")
    assert uow.runs.rows[RUN_ID].status == RunStatus.FAILED
    before = len(uow.published)

    replayed = await replay_dead_letter(TEAM, str(letter.id), uow)

    assert (replayed.status, replayed.replays) == ("replayed", 1)
    assert uow.runs.rows[RUN_ID].status == RunStatus.RUNNING
    [again] = [m for m in uow.published[before:] if m.subject.startswith("steps.")]
    assert again.msg_id == f"{RUN_ID}:hook:replay-1"
    with pytest.raises(FailedPrecondition, match="was replayed already"):
        await replay_dead_letter(TEAM, str(letter.id), uow)

    await perform_step(task("hook"), uow, senders.channels())
    await perform_step(task("hello"), uow, senders.channels())

    run = await get_run(TEAM, str(RUN_ID), uow)
    assert run.status == RunStatus.COMPLETED
    assert len(senders.webhook.sent) == 1
    assert len(senders.email.sent) == 1
    finished = [m.msg_id for m in uow.published if m.subject.endswith("run_finished")]
    assert finished == [f"run_finished:{RUN_ID}", f"run_finished:{RUN_ID}:replay-1"]


async def test_replaying_an_unknown_dead_letter_is_not_found() -> None:
    uow = FakeExecutorUnitOfWork()
    with pytest.raises(NotFound):
        await replay_dead_letter(TEAM, str(uuid.uuid4()), uow)
    with pytest.raises(NotFound):
        await replay_dead_letter(TEAM, "not-an-id", uow)


async def test_a_steps_max_attempts_overrides_the_channel_default() -> None:
    uow = await started(step("hook", "webhook", url="https://hooks.example.com/x", max_attempts=2))
    senders = Senders()
    senders.webhook.failures.extend([DeliveryError("HTTP 500"), DeliveryError("HTTP 500")])

    with pytest.raises(RetryLater):
        await perform_step(task("hook"), uow, senders.channels(max_attempts=10))
    await perform_step(task("hook"), uow, senders.channels(max_attempts=10))

    assert uow.runs.rows[RUN_ID].steps[0].status == StepStatus.FAILED
    assert len((await list_dead_letters(TEAM, 10, uow)).letters) == 1


async def test_one_event_never_ends_two_waits_of_a_run() -> None:
    uow = await started(
        step("first", "wait_for_event", event="user.activated", timeout="P1D"),
        step("second", "wait_for_event", event="user.activated", timeout="P1D"),
    )
    event = activation()

    assert await resume_waits(event, uow) == 1
    assert statuses(uow) == {"first": "done", "second": "waiting"}
    assert await catch_up_waits(uow, ListedEvents(event)) == 1
    assert statuses(uow)["second"] == "waiting"

    assert await resume_waits(activation(accepted_at=to_timestamp(utcnow() + timedelta(seconds=1))), uow) == 1
    assert uow.runs.rows[RUN_ID].status == RunStatus.COMPLETED


async def test_an_in_app_message_for_a_contact_without_an_external_id_fails_for_good() -> None:
    event = an_event(contact=event_pb2.Contact(id=CONTACT, email="ada@example.com"))
    uow = await started(step("note", "in_app", body="Hi"), event=event)

    await perform_step(task("note"), uow, Senders().channels())

    assert uow.runs.rows[RUN_ID].status == RunStatus.FAILED
    assert "the contact has no external_id" in uow.runs.rows[RUN_ID].steps[0].detail


@pytest.mark.parametrize(("attempt", "low", "high"), [(1, 1.0, 2.0), (3, 4.0, 8.0), (20, 150.0, 300.0)])
def test_retries_back_off_exponentially_with_jitter(attempt: int, low: float, high: float) -> None:
    delays = [retry_delay(attempt) for _ in range(50)]
    assert all(low <= delay <= high for delay in delays)
    assert retry_delay(1, retry_after=0) >= 1.0  # Retry-After: 0 never means "at once, again and again"
    assert retry_delay(1, retry_after=7200) == 3600.0


class BrokenRunRepository(FakeRunRepository):
    """Fails to lock one run, as a corrupt row would."""

    def __init__(self, broken: uuid.UUID) -> None:
        super().__init__()
        self.broken = broken

    async def lock(self, run_id: uuid.UUID) -> Run | None:
        if run_id == self.broken:
            raise RuntimeError("cannot read this run")
        return await super().lock(run_id)


async def test_a_timer_that_fails_is_postponed_and_does_not_hold_up_the_others() -> None:
    uow = await started(step("pause", "delay", duration="PT1H"), EMAIL)
    other = uuid.UUID("7b0d1d0e-64a3-4a43-9d43-46e0c1c1a0ff")
    broken_timer = Timer(other, "pause", TEAM, TimerKind.DELAY, utcnow() - timedelta(hours=1))
    await uow.timers.add(broken_timer)
    runs = BrokenRunRepository(other)
    runs.rows = uow.runs.rows
    uow._runs = runs
    make_due(uow)

    assert await fire_timers(lambda: uow) == 1

    assert statuses(uow)["hello"] == "queued"
    [postponed] = uow.timers.timers
    assert postponed.run_id == other
    assert timedelta(seconds=50) < postponed.due_at - utcnow() <= timedelta(minutes=1)


class SlowSender(FakeWebhookSender):
    """Takes a while to answer and records how many sends were under way at once."""

    def __init__(self) -> None:
        super().__init__()
        self.under_way = 0
        self.most_under_way = 0

    async def send(self, request: OutgoingWebhook, secret: str) -> str:
        self.under_way += 1
        self.most_under_way = max(self.most_under_way, self.under_way)
        await asyncio.sleep(0.05)
        self.under_way -= 1
        return await super().send(request, secret)


async def test_deliveries_under_way_at_once_are_bounded_by_the_slots() -> None:
    hook = step("hook", "webhook", url="https://hooks.example.com/x")
    runs = [await started(hook) for _ in range(4)]
    sender = SlowSender()
    channels = Channels(
        email=FakeEmailSender(), text=FakeTextSender(), webhook=sender, slots=asyncio.Semaphore(2)
    )

    await asyncio.gather(*(perform_step(task("hook"), uow, channels) for uow in runs))

    assert len(sender.sent) == 4
    assert sender.most_under_way == 2


async def test_channel_and_listing_requests_with_bad_input_are_refused_and_change_nothing() -> None:
    uow = FakeExecutorUnitOfWork()
    with pytest.raises(InvalidArgument, match="channel must be sms or push"):
        await list_dev_messages(TEAM, "fax", 0, uow)
    with pytest.raises(InvalidArgument, match="limit must be between 1 and 200"):
        await list_dev_messages(TEAM, "sms", 201, uow)
    with pytest.raises(InvalidArgument, match="limit must be between 1 and 200"):
        await list_dead_letters(TEAM, -1, uow)
    with pytest.raises(NotFound, match="use sms or push"):
        await put_provider(TEAM, "webhook", "https://x.example", {}, uow)
    with pytest.raises(InvalidArgument) as refused:
        headers = {"Bad Name": "1", "Webhook-Id": "2", "X-Key": "a\nb", "Idempotency-Key": "3"}
        await put_provider(TEAM, "sms", "http://[::1", headers, uow)
    assert refused.value.reason == "INVALID_PROVIDER"
    for problem in (
        "url: 'http://[::1' is not an http:// or https:// URL",
        "headers: 'Bad Name' is not a valid header name",
        "headers.Webhook-Id: is set by Herald",
        "headers.Idempotency-Key: is set by Herald",
        "headers.X-Key: a value has at most 4096 characters and no line breaks",
    ):
        assert problem in refused.value.message
    with pytest.raises(InvalidArgument, match="at most 20 headers"):
        await put_provider(TEAM, "push", "https://x.example", {f"X-{n}": "v" for n in range(21)}, uow)
    assert await uow.channels.provider(TEAM, "sms") is None
    with pytest.raises(InvalidArgument, match="whsec_ followed by 24 to 64 bytes"):
        await set_webhook_secret(TEAM, "whsec_c2hvcnQ=", uow)


def test_an_unfinished_step_says_what_it_waits_for_and_until_when() -> None:
    due = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    wait = StepSpec(id="w", type="wait_for_event", event="a.b", timeout="PT1H", on_timeout="n")
    delay = StepSpec(id="d", type="delay", duration="PT1M")
    email = StepSpec(id="e", type="email", subject="s", body="b")
    timers = [
        Timer(RUN_ID, "w", TEAM, TimerKind.WAIT, due, contact_id="c", event="a.b"),
        Timer(RUN_ID, "d", TEAM, TimerKind.DELAY, due),
    ]
    assert waits_for(StepState(wait, 0, StepStatus.WAITING), timers) == (
        "event 'a.b' from the same contact; on timeout, then step 'n'",
        due,
    )
    assert waits_for(StepState(delay, 1, StepStatus.WAITING), timers) == ("the end of the delay", due)
    queued = StepState(email, 2, StepStatus.QUEUED)
    assert waits_for(queued, timers) == ("delivery on the email channel", None)
    assert waits_for(StepState(email, 2, StepStatus.QUEUED, attempts=2), timers) == (
        "delivery on the email channel (attempt 3)",
        None,
    )
    assert waits_for(StepState(email, 2, StepStatus.SENT), timers) == ("", None)
    assert waits_for(StepState(wait, 0, StepStatus.WAITING), []) == ("", None)
