"""The executor's use cases: starting runs, performing their steps once, reporting every fact."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from herald.bus.v1 import event_pb2, run_pb2, tracking_pb2
from herald.workflow.v1 import workflow_pb2
from kernel.bus import OutgoingMessage, Poison, RetryLater
from kernel.errors import NotFound
from kernel.structs import to_struct
from services.executor.domain import (
    DELIVERY_ID_NAMESPACE,
    DeadLetterQuery,
    OutgoingEmail,
    RunStatus,
    StepStatus,
    delivery_id,
)
from services.executor.handlers import Channels, get_run, perform_step, perform_steps, start_run, start_runs
from tests.unit.fakes import FakeEmailSender, FakeExecutorUnitOfWork, FakeTextSender, FakeWebhookSender

TEAM = "team-1"
RUN_ID = uuid.UUID("5b0d1d0e-64a3-4a43-9d43-46e0c1c1a001")
TRIGGER_ID = uuid.UUID("5b0d1d0e-64a3-4a43-9d43-46e0c1c1a002")
WELCOME = workflow_pb2.Step(
    id="welcome",
    type="email",
    subject="Welcome, {{name}}!",
    body=to_struct({"v": "Hi {{contact.name}}, you chose the {{event.data.plan}} plan."}).fields["v"],
    html="<p>Hi {{contact.name}}</p>",
)
FOLLOW_UP = workflow_pb2.Step(
    id="follow-up",
    type="email",
    subject="Still there, {{name}}?",
    body=to_struct({"v": "Your score is {{score}}."}).fields["v"],
)


def a_run_start(
    *steps: workflow_pb2.Step, email: str = "ada@example.com", run_id: uuid.UUID = RUN_ID
) -> run_pb2.RunStart:
    event = event_pb2.Event(
        event_id=str(uuid.uuid4()),
        trigger_id=str(TRIGGER_ID),
        project_id=TEAM,
        name="user_signup",
        contact=event_pb2.Contact(id="contact-1", email=email, name="Ada Lovelace"),
        data=to_struct({"plan": "pro"}),
        variables=to_struct({"name": "Ada", "score": 95}),
    )
    workflow = workflow_pb2.Workflow(
        key="welcome-email",
        name="Welcome Email",
        active=True,
        trigger=workflow_pb2.WorkflowTrigger(event="user_signup"),
        steps=list(steps or [WELCOME]),
        version=3,
    )
    return run_pb2.RunStart(
        run_id=str(run_id), trigger_id=str(TRIGGER_ID), project_id=TEAM, workflow=workflow, event=event
    )


def a_task(step_id: str = "welcome", run_id: uuid.UUID = RUN_ID) -> run_pb2.StepTask:
    return run_pb2.StepTask(
        run_id=str(run_id), trigger_id=str(TRIGGER_ID), project_id=TEAM, step_id=step_id, channel="email"
    )


def tracking(message: OutgoingMessage) -> tracking_pb2.TrackingRecord:
    return tracking_pb2.TrackingRecord.FromString(message.payload)


def run_facts(messages: list[OutgoingMessage]) -> list[OutgoingMessage]:
    """The tracking facts about the run itself (not the triggers of the system events it emits)."""
    return [
        m
        for m in messages
        if m.subject.startswith("tracking.") and not m.subject.endswith("trigger_accepted")
    ]


def system_events(messages: list[OutgoingMessage]) -> list[event_pb2.Event]:
    return [event_pb2.Event.FromString(m.payload) for m in messages if m.subject.startswith("events.")]


def step_tasks(messages: list[OutgoingMessage]) -> list[run_pb2.StepTask]:
    return [run_pb2.StepTask.FromString(m.payload) for m in messages if m.subject.startswith("steps.")]


def channels_with(email: Any, **settings: Any) -> Channels:
    return Channels(email=email, text=FakeTextSender(), webhook=FakeWebhookSender(), **settings)


async def started(*steps: workflow_pb2.Step, **fields: Any) -> FakeExecutorUnitOfWork:
    uow = FakeExecutorUnitOfWork()
    await start_run(a_run_start(*steps, **fields), uow)
    return uow


# --------------------------------------------------------------------------------------------
# start_run
# --------------------------------------------------------------------------------------------


async def test_start_run_reports_the_run_and_queues_its_first_step() -> None:
    uow = FakeExecutorUnitOfWork()

    await start_run(a_run_start(WELCOME, FOLLOW_UP), uow)

    assert uow.subjects() == ["tracking.team-1.run_started", "steps.email.team-1"]
    started_record = tracking(uow.published[0])
    assert started_record.trigger_id == str(TRIGGER_ID)
    assert started_record.run_started.run_id == str(RUN_ID)
    assert started_record.run_started.workflow_key == "welcome-email"
    assert started_record.run_started.workflow_version == 3
    assert started_record.run_started.contact_id == "contact-1"
    assert uow.published[0].msg_id == f"run_started:{RUN_ID}"
    [task] = step_tasks(uow.published)
    assert (task.run_id, task.step_id, task.channel, task.project_id) == (
        str(RUN_ID),
        "welcome",
        "email",
        TEAM,
    )
    assert uow.published[1].msg_id == f"{RUN_ID}:welcome"


async def test_start_run_stores_the_run_with_its_first_step_queued() -> None:
    uow = await started(WELCOME, FOLLOW_UP)

    run = await get_run(TEAM, str(RUN_ID), uow)

    assert run.status == RunStatus.RUNNING
    assert run.created_at is not None
    assert [(s.spec.id, s.status) for s in run.steps] == [
        ("welcome", StepStatus.QUEUED),
        ("follow-up", StepStatus.PENDING),
    ]
    assert run.context["contact"]["email"] == "ada@example.com"
    assert run.context["name"] == "Ada"
    assert run.context["event"]["data"] == {"plan": "pro"}


async def test_starting_the_same_run_twice_does_nothing_the_second_time() -> None:
    uow = await started()
    published = list(uow.published)
    before = await get_run(TEAM, str(RUN_ID), uow)

    await start_run(a_run_start(), uow)

    assert uow.published == published
    assert await get_run(TEAM, str(RUN_ID), uow) == before


async def test_a_batch_of_run_starts_starts_each_new_run_once_in_one_transaction() -> None:
    uow = await started()
    published, commits = len(uow.published), uow.commits
    second, third = uuid.uuid4(), uuid.uuid4()

    await start_runs(
        [a_run_start(run_id=second), a_run_start(), a_run_start(run_id=third), a_run_start(run_id=second)],
        uow,
    )

    assert [task.run_id for task in step_tasks(uow.published[published:])] == [str(second), str(third)]
    assert uow.commits == commits + 1
    for run_id in (second, third):
        run = await get_run(TEAM, str(run_id), uow)
        assert [(s.spec.id, s.status) for s in run.steps] == [("welcome", StepStatus.QUEUED)]


# --------------------------------------------------------------------------------------------
# perform_step
# --------------------------------------------------------------------------------------------


async def test_perform_step_sends_the_rendered_email_once() -> None:
    uow = await started()
    sender = FakeEmailSender()

    await perform_step(a_task(), uow, channels_with(email=sender, message_domain="example.com"))

    [email] = sender.sent
    expected_delivery = uuid.uuid5(DELIVERY_ID_NAMESPACE, f"{RUN_ID}/welcome")
    assert email.to == "ada@example.com"
    assert email.subject == "Welcome, Ada!"
    assert email.text == "Hi Ada Lovelace, you chose the pro plan."
    assert email.html == "<p>Hi Ada Lovelace</p>"
    assert email.message_id == f"<{expected_delivery}@example.com>"
    assert delivery_id(RUN_ID, "welcome") == expected_delivery
    assert email.headers == {
        "X-Herald-Project": TEAM,
        "X-Herald-Trigger": str(TRIGGER_ID),
        "X-Herald-Run": str(RUN_ID),
        "X-Herald-Delivery": str(expected_delivery),
    }


async def test_a_sent_last_step_completes_the_run_and_reports_both_facts() -> None:
    uow = await started()
    sender = FakeEmailSender()
    already = len(uow.published)

    await perform_step(a_task(), uow, channels_with(email=sender))

    run = await get_run(TEAM, str(RUN_ID), uow)
    [step] = run.steps
    assert (step.status, step.attempts) == (StepStatus.SENT, 1)
    assert step.detail.startswith("250 2.0.0")
    assert step.finished_at is not None
    assert run.status == RunStatus.COMPLETED
    assert run.finished_at is not None
    delivery, finished = run_facts(uow.published[already:])
    assert delivery.subject == "tracking.team-1.delivery_recorded"
    recorded = tracking(delivery).delivery_recorded
    assert recorded.outcome == tracking_pb2.DELIVERY_OUTCOME_SENT
    assert (recorded.run_id, recorded.step_id, recorded.channel) == (str(RUN_ID), "welcome", "email")
    assert recorded.delivery_id == str(delivery_id(RUN_ID, "welcome"))
    assert recorded.attempts == 1
    assert delivery.msg_id == f"delivery_recorded:{recorded.delivery_id}"
    assert finished.subject == "tracking.team-1.run_finished"
    assert tracking(finished).run_finished.outcome == tracking_pb2.RUN_OUTCOME_COMPLETED
    assert tracking(finished).run_finished.detail == ""


async def test_performing_a_sent_step_again_sends_nothing() -> None:
    uow = await started()
    sender = FakeEmailSender()
    await perform_step(a_task(), uow, channels_with(email=sender))
    published = list(uow.published)

    await perform_step(a_task(), uow, channels_with(email=sender))

    assert len(sender.sent) == 1
    assert sender.tries == 1
    assert uow.published == published


async def test_a_transient_failure_asks_for_a_retry_and_keeps_the_attempt() -> None:
    uow = await started()
    sender = FakeEmailSender()
    sender.fail_next()
    already = len(uow.published)

    with pytest.raises(RetryLater, match="SMTP server unreachable"):
        await perform_step(a_task(), uow, channels_with(email=sender, max_attempts=3))

    run = await get_run(TEAM, str(RUN_ID), uow)
    [step] = run.steps
    assert (step.status, step.attempts) == (StepStatus.QUEUED, 1)
    assert step.detail == "attempt 1 of 3: SMTP server unreachable: timed out"
    assert run.status == RunStatus.RUNNING
    assert uow.published[already:] == []
    assert sender.sent == []


async def test_a_retry_after_a_transient_failure_sends_and_counts_both_attempts() -> None:
    uow = await started()
    sender = FakeEmailSender()
    sender.fail_next()
    channels = channels_with(email=sender, max_attempts=3)
    with pytest.raises(RetryLater):
        await perform_step(a_task(), uow, channels)

    await perform_step(a_task(), uow, channels)

    run = await get_run(TEAM, str(RUN_ID), uow)
    assert (run.steps[0].status, run.steps[0].attempts) == (StepStatus.SENT, 2)
    assert run.status == RunStatus.COMPLETED
    assert len(sender.sent) == 1
    delivery = next(m for m in uow.published if m.subject.endswith("delivery_recorded"))
    assert tracking(delivery).delivery_recorded.attempts == 2


async def test_the_last_allowed_attempt_fails_the_step_and_the_run() -> None:
    uow = await started()
    sender = FakeEmailSender()
    sender.fail_next(times=3)
    channels = channels_with(email=sender, max_attempts=3)
    for _ in range(2):
        with pytest.raises(RetryLater):
            await perform_step(a_task(), uow, channels)
    already = len(uow.published)

    await perform_step(a_task(), uow, channels)

    run = await get_run(TEAM, str(RUN_ID), uow)
    [step] = run.steps
    assert (step.status, step.attempts) == (StepStatus.FAILED, 3)
    assert run.status == RunStatus.FAILED
    delivery, finished = run_facts(uow.published[already:])
    assert tracking(delivery).delivery_recorded.outcome == tracking_pb2.DELIVERY_OUTCOME_FAILED
    assert tracking(delivery).delivery_recorded.attempts == 3
    assert tracking(delivery).delivery_recorded.detail == "attempt 3 of 3: SMTP server unreachable: timed out"
    assert tracking(finished).run_finished.outcome == tracking_pb2.RUN_OUTCOME_FAILED
    assert tracking(finished).run_finished.detail == (
        "step 'welcome' failed: attempt 3 of 3: SMTP server unreachable: timed out"
    )
    assert [event.name for event in system_events(uow.published[already:])] == [
        "herald.mail.delivery",
        "herald.workflow.failed",
    ]
    [letter] = await uow.dead_letters.newest(TEAM, DeadLetterQuery(10))
    assert (letter.step_id, letter.attempts, letter.channel) == ("welcome", 3, "email")
    assert sender.sent == []


async def test_a_contact_without_email_fails_at_once_without_retry() -> None:
    uow = await started(email="")
    sender = FakeEmailSender()

    await perform_step(a_task(), uow, channels_with(email=sender, max_attempts=5))

    run = await get_run(TEAM, str(RUN_ID), uow)
    [step] = run.steps
    assert (step.status, step.attempts) == (StepStatus.FAILED, 1)
    assert step.detail == "attempt 1 of 5: the contact has no email address"
    assert run.status == RunStatus.FAILED
    assert sender.tries == 0
    outcomes = [tracking(m).WhichOneof("kind") for m in run_facts(uow.published[2:])]
    assert outcomes == ["delivery_recorded", "run_finished"]


async def test_a_permanent_refusal_by_the_server_fails_at_once() -> None:
    uow = await started()
    sender = FakeEmailSender()
    sender.fail_next(permanent=True)

    await perform_step(a_task(), uow, channels_with(email=sender, max_attempts=5))

    run = await get_run(TEAM, str(RUN_ID), uow)
    assert (run.steps[0].status, run.steps[0].attempts) == (StepStatus.FAILED, 1)
    assert run.steps[0].detail == "attempt 1 of 5: SMTP 550: mailbox unavailable"
    assert run.status == RunStatus.FAILED


async def test_a_workflow_with_two_email_steps_sends_them_in_order() -> None:
    uow = await started(WELCOME, FOLLOW_UP)
    sender = FakeEmailSender()
    channels = channels_with(email=sender)

    await perform_step(a_task("welcome"), uow, channels)
    after_first = len(uow.published)

    [first_task, second_task] = step_tasks(uow.published)
    assert (first_task.step_id, second_task.step_id) == ("welcome", "follow-up")
    assert step_tasks(uow.published[after_first - 1 :]) == [second_task]
    assert (await get_run(TEAM, str(RUN_ID), uow)).status == RunStatus.RUNNING
    assert not any(m.subject.endswith("run_finished") for m in uow.published)

    await perform_step(a_task("follow-up"), uow, channels)

    assert [email.subject for email in sender.sent] == ["Welcome, Ada!", "Still there, Ada?"]
    assert sender.sent[1].text == "Your score is 95."
    assert sender.sent[0].message_id != sender.sent[1].message_id
    run = await get_run(TEAM, str(RUN_ID), uow)
    assert [s.status for s in run.steps] == [StepStatus.SENT, StepStatus.SENT]
    assert run.status == RunStatus.COMPLETED
    assert tracking(run_facts(uow.published)[-1]).run_finished.outcome == tracking_pb2.RUN_OUTCOME_COMPLETED


async def test_a_failed_first_step_fails_the_run_and_never_queues_the_second() -> None:
    uow = await started(WELCOME, FOLLOW_UP)
    sender = FakeEmailSender()
    sender.fail_next(permanent=True)

    await perform_step(a_task("welcome"), uow, channels_with(email=sender))

    run = await get_run(TEAM, str(RUN_ID), uow)
    assert [s.status for s in run.steps] == [StepStatus.FAILED, StepStatus.PENDING]
    assert run.status == RunStatus.FAILED
    assert [t.step_id for t in step_tasks(uow.published)] == ["welcome"]


async def test_an_unexpected_sender_error_is_counted_and_retried() -> None:
    class CrashingSender(FakeEmailSender):
        async def send(self, email: OutgoingEmail) -> str:
            raise ConnectionResetError("connection reset by peer")

    uow = await started()
    published = list(uow.published)

    with pytest.raises(RetryLater):
        await perform_step(a_task(), uow, channels_with(email=CrashingSender()))

    run = await get_run(TEAM, str(RUN_ID), uow)
    assert run.steps[0].attempts == 1
    assert run.steps[0].status == "queued"
    assert "sending failed unexpectedly" in run.steps[0].detail
    assert "connection reset by peer" in run.steps[0].detail
    assert uow.published == published


async def test_a_task_for_an_unknown_step_is_poison() -> None:
    uow = await started()

    with pytest.raises(Poison):
        await perform_step(a_task("no-such-step"), uow, channels_with(email=FakeEmailSender()))


async def test_a_task_whose_run_is_gone_sends_nothing_and_is_done() -> None:
    """A run erased with its contact (right to erasure) before its step ran."""
    uow = await started()
    published = list(uow.published)
    sender = FakeEmailSender()

    await perform_step(a_task("welcome", run_id=uuid.uuid4()), uow, channels_with(email=sender))

    assert (sender.sent, sender.tries) == ([], 0)
    assert uow.published == published


async def test_plain_text_parts_are_not_html_escaped() -> None:
    step = workflow_pb2.Step(
        id="welcome",
        type="email",
        subject="Welcome to {{company}}",
        body=to_struct({"v": "Dear {{contact.name}}"}).fields["v"],
        html="<p>{{company}}</p>",
    )
    start = a_run_start(step)
    start.event.variables.update({"company": "Smith & Sons"})
    start.event.contact.name = "Dara O'Brien"
    uow = FakeExecutorUnitOfWork()
    await start_run(start, uow)
    sender = FakeEmailSender()

    await perform_step(a_task(), uow, channels_with(email=sender))

    [email] = sender.sent
    assert email.html == "<p>Smith &amp; Sons</p>"
    assert email.subject == "Welcome to Smith & Sons"
    assert email.text == "Dear Dara O'Brien"


# --------------------------------------------------------------------------------------------
# perform_steps: a channel worker's whole fetch
# --------------------------------------------------------------------------------------------

ADA, BOB, CY = (uuid.UUID(f"5b0d1d0e-64a3-4a43-9d43-46e0c1c1b00{n}") for n in range(1, 4))
ADDRESSES = {ADA: "ada@example.com", BOB: "bob@example.com", CY: "cy@example.com"}


async def three_runs(*steps: workflow_pb2.Step) -> FakeExecutorUnitOfWork:
    """Three started runs (ADA, BOB and CY), each with its own contact's address."""
    uow = FakeExecutorUnitOfWork()
    await start_runs([a_run_start(*steps, email=ADDRESSES[r], run_id=r) for r in (ADA, BOB, CY)], uow)
    return uow


async def test_a_fetch_sends_each_task_once_in_one_transaction() -> None:
    uow = await three_runs()
    sender = FakeEmailSender()
    commits, already = uow.commits, len(uow.published)

    outcomes = await perform_steps(
        [a_task(run_id=r) for r in (ADA, BOB, CY)], uow, channels_with(email=sender)
    )

    assert outcomes == [StepStatus.SENT] * 3
    assert sorted(email.to for email in sender.sent) == sorted(ADDRESSES.values())
    assert uow.commits == commits + 1
    for run_id in (ADA, BOB, CY):
        run = await get_run(TEAM, str(run_id), uow)
        assert (run.steps[0].status, run.steps[0].attempts, run.status) == (
            StepStatus.SENT,
            1,
            RunStatus.COMPLETED,
        )
    facts = [tracking(m) for m in run_facts(uow.published[already:])]
    assert sorted(f.delivery_recorded.run_id for f in facts if f.HasField("delivery_recorded")) == sorted(
        str(r) for r in (ADA, BOB, CY)
    )


async def test_the_sends_of_a_fetch_are_under_way_at_once() -> None:
    class Gathering(FakeEmailSender):
        """Answers only once all three emails are being sent."""

        def __init__(self) -> None:
            super().__init__()
            self.in_flight = 0
            self.all_in_flight = asyncio.Event()

        async def send(self, email: OutgoingEmail) -> str:
            self.in_flight += 1
            if self.in_flight == 3:
                self.all_in_flight.set()
            await asyncio.wait_for(self.all_in_flight.wait(), timeout=2)
            return await super().send(email)

    uow = await three_runs()
    sender = Gathering()

    outcomes = await perform_steps(
        [a_task(run_id=r) for r in (ADA, BOB, CY)], uow, channels_with(email=sender)
    )

    assert outcomes == [StepStatus.SENT] * 3


async def test_tasks_repeating_a_step_of_the_same_fetch_send_it_once() -> None:
    uow = await three_runs()
    sender = FakeEmailSender()

    outcomes = await perform_steps(
        [a_task(run_id=ADA), a_task(run_id=BOB), a_task(run_id=ADA), a_task(run_id=ADA)],
        uow,
        channels_with(email=sender),
    )

    assert outcomes == [StepStatus.SENT, StepStatus.SENT, None, None]
    assert sorted(email.to for email in sender.sent) == ["ada@example.com", "bob@example.com"]
    assert (await get_run(TEAM, str(ADA), uow)).steps[0].attempts == 1


async def test_a_transient_failure_in_a_fetch_retries_that_task_alone() -> None:
    uow = await three_runs()
    sender = FakeEmailSender()
    sender.fail_to("bob@example.com")
    channels = channels_with(email=sender, max_attempts=3)
    already = len(uow.published)

    outcomes = await perform_steps([a_task(run_id=r) for r in (ADA, BOB, CY)], uow, channels)

    sent, retry, also_sent = outcomes
    assert (sent, also_sent) == (StepStatus.SENT, StepStatus.SENT)
    assert isinstance(retry, RetryLater)
    assert str(retry) == "SMTP server unreachable: timed out"
    assert retry.delay is not None and 1.0 <= retry.delay <= 2.0
    bob = await get_run(TEAM, str(BOB), uow)
    assert (bob.steps[0].status, bob.steps[0].attempts, bob.status) == (
        StepStatus.QUEUED,
        1,
        RunStatus.RUNNING,
    )
    assert bob.steps[0].detail == "attempt 1 of 3: SMTP server unreachable: timed out"
    recorded = [
        tracking(m).delivery_recorded.run_id
        for m in uow.published[already:]
        if m.subject.endswith("delivery_recorded")
    ]
    assert sorted(recorded) == sorted([str(ADA), str(CY)])

    # The bus brings the failed task back (with, say, a duplicate of a sent one): only Bob's is sent.
    sender = FakeEmailSender()
    again = await perform_steps([a_task(run_id=BOB), a_task(run_id=ADA)], uow, channels_with(email=sender))

    assert again == [StepStatus.SENT, None]
    assert [email.to for email in sender.sent] == ["bob@example.com"]
    bob = await get_run(TEAM, str(BOB), uow)
    assert (bob.steps[0].status, bob.steps[0].attempts, bob.status) == (
        StepStatus.SENT,
        2,
        RunStatus.COMPLETED,
    )


async def test_a_permanent_failure_in_a_fetch_dead_letters_and_fails_that_run_alone() -> None:
    uow = await three_runs()
    sender = FakeEmailSender()
    sender.fail_to("cy@example.com", permanent=True)

    outcomes = await perform_steps(
        [a_task(run_id=r) for r in (ADA, BOB, CY)], uow, channels_with(email=sender)
    )

    assert outcomes == [StepStatus.SENT, StepStatus.SENT, StepStatus.FAILED]
    cy = await get_run(TEAM, str(CY), uow)
    assert (cy.steps[0].status, cy.status) == (StepStatus.FAILED, RunStatus.FAILED)
    [letter] = await uow.dead_letters.newest(TEAM, DeadLetterQuery(10))
    assert (letter.run_id, letter.step_id, letter.error) == (
        CY,
        "welcome",
        "attempt 1 of 5: SMTP 550: mailbox unavailable",
    )
    assert (await get_run(TEAM, str(ADA), uow)).status == RunStatus.COMPLETED


async def test_the_last_attempt_in_a_fetch_fails_the_step_for_good() -> None:
    uow = await three_runs()
    sender = FakeEmailSender()
    sender.fail_to("ada@example.com")
    channels = channels_with(email=sender, max_attempts=2)
    tasks = [a_task(run_id=r) for r in (ADA, BOB, CY)]

    first = await perform_steps(tasks, uow, channels)
    second = await perform_steps(tasks[:1], uow, channels)

    assert isinstance(first[0], RetryLater) and first[1:] == [StepStatus.SENT, StepStatus.SENT]
    assert second == [StepStatus.FAILED]
    ada = await get_run(TEAM, str(ADA), uow)
    assert (ada.steps[0].status, ada.steps[0].attempts, ada.status) == (
        StepStatus.FAILED,
        2,
        RunStatus.FAILED,
    )
    [letter] = await uow.dead_letters.newest(TEAM, DeadLetterQuery(10))
    assert (letter.run_id, letter.attempts) == (ADA, 2)


async def test_poison_tasks_in_a_fetch_do_not_stop_the_others() -> None:
    uow = await three_runs()
    sender = FakeEmailSender()
    malformed = run_pb2.StepTask(run_id="not-a-run", step_id="welcome", project_id=TEAM, channel="email")

    outcomes = await perform_steps(
        [malformed, a_task(run_id=ADA), a_task("no-such-step", run_id=BOB)], uow, channels_with(email=sender)
    )

    no_run, sent, no_step = outcomes
    assert isinstance(no_run, Poison) and "not-a-run" in str(no_run)
    assert isinstance(no_step, Poison) and "no-such-step" in str(no_step)
    assert sent == StepStatus.SENT
    assert [email.to for email in sender.sent] == ["ada@example.com"]
    assert (await get_run(TEAM, str(BOB), uow)).steps[0].status == StepStatus.QUEUED


async def test_a_fetch_passes_over_erased_runs_and_steps_already_sent() -> None:
    uow = await three_runs()
    sender = FakeEmailSender()
    await perform_steps([a_task(run_id=ADA)], uow, channels_with(email=sender))
    published = len(uow.published)

    outcomes = await perform_steps(
        [a_task(run_id=ADA), a_task(run_id=uuid.uuid4()), a_task(run_id=CY)], uow, channels_with(email=sender)
    )

    assert outcomes == [None, None, StepStatus.SENT]
    assert [email.to for email in sender.sent] == ["ada@example.com", "cy@example.com"]
    recorded = [m for m in uow.published[published:] if m.subject.endswith("delivery_recorded")]
    assert [tracking(m).delivery_recorded.run_id for m in recorded] == [str(CY)]


async def test_a_fetch_with_nothing_to_send_commits_nothing() -> None:
    uow = await three_runs()
    commits = uow.commits

    outcomes = await perform_steps([a_task(run_id=uuid.uuid4())], uow, channels_with(email=FakeEmailSender()))

    assert outcomes == [None]
    assert uow.commits == commits


# --------------------------------------------------------------------------------------------
# get_run
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("team", "run_id"), [(TEAM, "not-a-uuid"), (TEAM, str(uuid.uuid4())), ("team-2", str(RUN_ID))]
)
async def test_get_run_of_a_malformed_unknown_or_foreign_run_is_not_found(team: str, run_id: str) -> None:
    uow = await started()

    with pytest.raises(NotFound) as raised:
        await get_run(team, run_id, uow)

    assert raised.value.reason == "RUN_NOT_FOUND"
