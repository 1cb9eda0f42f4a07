"""A channel worker's fetch on real PostgreSQL and a real SMTP server (aiosmtpd): many email
tasks in one transaction, each email sent exactly once, even by two workers at the same time."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from herald.bus.v1 import event_pb2, run_pb2
from herald.workflow.v1 import workflow_pb2
from kernel.bus import BusPublisher, RetryLater
from kernel.outbox import Outbox
from kernel.structs import to_struct
from services.executor.adapters import OUTBOX, ExecutorSqlUnitOfWork
from services.executor.domain import RunStatus, StepStatus
from services.executor.handlers import Channels, get_run, perform_steps, start_runs
from services.executor.senders import (
    Destinations,
    HttpTextSender,
    SmtpEmailSender,
    SmtpServer,
    WebhookHttpSender,
    http_client,
)
from stack.embedded import free_port
from tests.conftest import TeamCredentials

RUNS = 40


@dataclass
class Inbox:
    """An SMTP server's handler: keeps the Message-ID of what it accepts; refuses the recipients
    in `busy` for now (451)."""

    busy: set[str] = field(default_factory=set)
    message_ids: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.busy:
            return "451 4.3.0 mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = (envelope.original_content or b"").decode("utf-8", "replace")
        message_id = next(
            line.partition(":")[2].strip()
            for line in content.splitlines()
            if line.lower().startswith("message-id:")
        )
        with self.lock:
            self.message_ids[message_id] += 1
        return "250 Message accepted"


@pytest.fixture
async def inbox() -> AsyncIterator[tuple[Inbox, SmtpServer]]:
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    await asyncio.to_thread(controller.start)
    try:
        yield handler, SmtpServer(host="127.0.0.1", port=controller.port)
    finally:
        await asyncio.to_thread(controller.stop)


@pytest.fixture
async def channels(inbox: tuple[Inbox, SmtpServer]) -> AsyncIterator[Channels]:
    client = http_client()
    destinations = Destinations()
    try:
        yield Channels(
            email=SmtpEmailSender(inbox[1], "Herald <noreply@herald.test>"),
            text=HttpTextSender(client, destinations),
            webhook=WebhookHttpSender(client, destinations),
            message_domain="herald.test",
            max_attempts=5,
        )
    finally:
        await client.aclose()


def a_run_start(team_id: str, index: int) -> run_pb2.RunStart:
    run_id, trigger_id = uuid.uuid4(), uuid.uuid4()
    event = event_pb2.Event(
        event_id=str(uuid.uuid4()),
        trigger_id=str(trigger_id),
        project_id=team_id,
        name="user_signup",
        contact=event_pb2.Contact(id=str(uuid.uuid4()), email=f"contact.{index}@example.com"),
    )
    step = workflow_pb2.Step(
        id="welcome",
        type="email",
        subject="Welcome {{contact.email}}",
        body=to_struct({"v": "Hi"}).fields["v"],
    )
    workflow = workflow_pb2.Workflow(
        key="welcome",
        name="Welcome",
        active=True,
        trigger=workflow_pb2.WorkflowTrigger(event="user_signup"),
        steps=[step],
        version=1,
    )
    return run_pb2.RunStart(
        run_id=str(run_id), trigger_id=str(trigger_id), project_id=team_id, workflow=workflow, event=event
    )


def a_task(start: run_pb2.RunStart) -> run_pb2.StepTask:
    return run_pb2.StepTask(
        run_id=start.run_id,
        trigger_id=start.trigger_id,
        project_id=start.project_id,
        step_id="welcome",
        channel="email",
    )


async def test_two_workers_fetching_the_same_tasks_send_each_email_once(
    sessions: async_sessionmaker[AsyncSession],
    nats_client: NatsClient,
    team: TeamCredentials,
    inbox: tuple[Inbox, SmtpServer],
    channels: Channels,
) -> None:
    received, _ = inbox
    outbox = Outbox(OUTBOX, sessions, BusPublisher(nats_client))

    def unit_of_work() -> ExecutorSqlUnitOfWork:
        return ExecutorSqlUnitOfWork(sessions, outbox)

    starts = [a_run_start(team.team_id, index) for index in range(RUNS)]
    await start_runs(starts, unit_of_work())
    tasks = [a_task(start) for start in starts]
    received.busy.add("contact.7@example.com")
    # Two workers, each with every task in its own order (and one task twice), at the same time.
    first, second = tasks + tasks[:1], random.sample(tasks, len(tasks))

    outcomes = await asyncio.gather(
        perform_steps(first, unit_of_work(), channels), perform_steps(second, unit_of_work(), channels)
    )

    assert len(received.message_ids) == RUNS - 1
    assert set(received.message_ids.values()) == {1}
    sent = [outcome for outcome in outcomes[0] + outcomes[1] if outcome == StepStatus.SENT]
    assert len(sent) == RUNS - 1
    # Each worker tried the busy one in turn (its step was still queued when the second got it).
    retried = [outcome for outcome in outcomes[0] + outcomes[1] if isinstance(outcome, RetryLater)]
    assert len(retried) == 2 and all("451" in str(retry) for retry in retried)

    # The busy mailbox takes mail again; the bus brings every task back once more.
    received.busy.clear()
    again = await perform_steps(tasks, unit_of_work(), channels)

    assert [outcome for outcome in again if outcome is not None] == [StepStatus.SENT]
    assert again[7] == StepStatus.SENT
    assert len(received.message_ids) == RUNS
    assert set(received.message_ids.values()) == {1}
    for start in starts:
        run = await get_run(team.team_id, start.run_id, unit_of_work())
        [step] = run.steps
        assert (run.status, step.status) == (RunStatus.COMPLETED, StepStatus.SENT)
        assert step.attempts == (3 if start is starts[7] else 1)
    await outbox.settled()
