"""The transactional outbox: publish to the bus exactly what a transaction committed.

A unit of work writes its outgoing messages into its schema's `outbox` table in the same
transaction as the state they announce. After the commit they are published at once (with
`Nats-Msg-Id`); the rows of acknowledged messages are deleted in the background, many in one
statement, off the caller's path. Whatever a crash or a bus outage left behind, the relay
publishes later (a message published twice is dropped by JetStream's duplicate window). The
relay claims rows with `FOR UPDATE SKIP LOCKED`, never by an id cursor, so rows that commit out
of order are never skipped and several replicas never publish one row twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import structlog
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Column,
    DateTime,
    Identity,
    LargeBinary,
    MetaData,
    String,
    Table,
    any_,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel import tracking
from kernel.bus import BusPublisher, OutgoingMessage, PublishRejected
from kernel.database import driver, insert_many
from kernel.errors import Unavailable
from kernel.loops import every
from kernel.metrics import OUTBOX_PENDING, OUTBOX_PUBLISHED

log = structlog.get_logger(__name__)

# Acknowledged rows deleted by one statement, at most; and how long acknowledgements gather
# before a statement deletes them (one DELETE per commit would cost more than the commits).
DELETE_BATCH = 2000
DELETE_PAUSE_SECONDS = 0.05

Receipts = dict[str, int]
"""Stream sequence of each published message, by message id."""


def outbox_table(metadata: MetaData) -> Table:
    """The `outbox` table of the schema `metadata` belongs to."""
    return Table(
        "outbox",
        metadata,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("msg_id", String(200), nullable=False, unique=True),
        Column("subject", String(500), nullable=False),
        Column("project_id", String(64), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


async def delete_naming(
    session: AsyncSession, table: Table, project_id: str, identifiers: Sequence[str]
) -> int:
    """Delete the project's outbox rows whose payload contains one of `identifiers` (Protobuf
    writes strings as plain UTF-8): right to erasure, for what a crash or an outage left
    unpublished. A tracking batch holds other contacts' facts too: only its records naming one
    of `identifiers` go (the row with them when none is left). How many rows changed."""
    values = [value for value in identifiers if value]
    if not values:
        return 0
    named = or_(
        *(func.position(func.convert_to(value, "UTF8").op("IN")(table.c.payload)) > 0 for value in values)
    )
    rows = (
        await session.execute(
            select(table.c.id, table.c.subject, table.c.payload)
            .where(table.c.project_id == project_id, named)
            .with_for_update()
        )
    ).all()
    gone: list[int] = []
    for row in rows:
        kept = tracking.batch_without(row.payload, values) if tracking.is_batch(row.subject) else b""
        if kept:
            await session.execute(update(table).where(table.c.id == row.id).values(payload=kept))
        else:
            gone.append(row.id)
    if gone:
        await session.execute(delete(table).where(table.c.id.in_(gone)))
    return len(rows)


class Outbox:
    def __init__(self, table: Table, sessions: async_sessionmaker[AsyncSession], publisher: BusPublisher):
        self._table = table
        self._sessions = sessions
        self._publisher = publisher
        # One text for every batch (an IN list would be a new statement for each size).
        self._delete = delete(table).where(table.c.msg_id == any_(bindparam("msg_ids", type_=ARRAY(String))))
        # Message ids acknowledged by the bus whose rows are still to be deleted.
        self._acknowledged: list[str] = []
        self._deleter: asyncio.Task[None] | None = None
        schema = table.schema or "public"
        self._published_at_commit = OUTBOX_PUBLISHED.labels(schema, "commit")
        self._published_by_relay = OUTBOX_PUBLISHED.labels(schema, "relay")
        self._pending = OUTBOX_PENDING.labels(schema)
        self._count = select(func.count()).select_from(table)

    async def stage(self, session: AsyncSession, messages: Sequence[OutgoingMessage]) -> None:
        """Write `messages` in the caller's transaction; a message id already staged is kept once."""
        if not messages:
            return
        rows = [
            {"msg_id": m.msg_id, "subject": m.subject, "project_id": m.project_id, "payload": m.payload}
            for m in messages
        ]
        await insert_many(
            await driver(session), self._table, rows, on_conflict="ON CONFLICT (msg_id) DO NOTHING"
        )

    async def publish_committed(self, messages: Sequence[OutgoingMessage]) -> Receipts:
        """Publish messages whose rows are committed; the relay retries whatever fails here."""
        outcomes = await self._publisher.publish_many(messages)
        receipts: Receipts = {}
        for message, outcome in zip(messages, outcomes, strict=True):
            if isinstance(outcome, int):
                receipts[message.msg_id] = outcome
            elif isinstance(outcome, Unavailable):
                log.warning("outbox.publish_deferred", msg_id=message.msg_id, error=outcome.message)
            else:
                log.error("outbox.publish_rejected", msg_id=message.msg_id, error=str(outcome))
        if receipts:
            self._published_at_commit.inc(len(receipts))
            self._acknowledged += receipts
            if self._deleter is None:
                self._deleter = asyncio.create_task(self._delete_acknowledged(), name="outbox.delete")
        return receipts

    async def _delete_acknowledged(self) -> None:
        """Delete acknowledged rows until none is left; what arrives meanwhile goes in the next batch."""
        try:
            while self._acknowledged:
                await asyncio.sleep(DELETE_PAUSE_SECONDS)
                batch = self._acknowledged[:DELETE_BATCH]
                self._acknowledged = self._acknowledged[DELETE_BATCH:]
                try:
                    async with self._sessions() as session, session.begin():
                        await session.execute(self._delete, {"msg_ids": batch})
                except Exception as error:
                    # Left behind, the rows are published again by the relay, and dropped as duplicates.
                    log.warning("outbox.delete_failed", rows=len(batch), error=repr(error))
        finally:
            self._deleter = None

    async def settled(self) -> None:
        """Wait until the rows of every acknowledged message are deleted."""
        while self._deleter is not None:
            await asyncio.shield(self._deleter)

    async def relay_once(self, *, older_than: timedelta = timedelta(seconds=5), batch: int = 200) -> int:
        """Publish up to `batch` rows left behind for longer than `older_than`; returns how many."""
        table = self._table
        async with self._sessions() as session, session.begin():
            rows = (
                await session.execute(
                    select(table.c.id, table.c.msg_id, table.c.subject, table.c.project_id, table.c.payload)
                    .where(table.c.created_at < func.now() - older_than)
                    .order_by(table.c.id)
                    .limit(batch)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            published: list[int] = []
            for row in rows:
                message = OutgoingMessage(row.subject, row.payload, row.msg_id, row.project_id)
                try:
                    await self._publisher.publish(message)
                except Unavailable:
                    break  # the bus is away: try again next round
                except PublishRejected as error:
                    # Never publishable: keep the row for an operator to look at, go on with the rest.
                    log.error("outbox.publish_rejected", msg_id=row.msg_id, error=str(error))
                    continue
                published.append(row.id)
            if published:
                await session.execute(delete(table).where(table.c.id.in_(published)))
        if published:
            self._published_by_relay.inc(len(published))
            log.info("outbox.relayed", count=len(published))
        return len(published)

    async def sample_pending(self) -> None:
        """Set the pending-rows gauge (kernel.metrics): rows published and not deleted yet, and
        rows the relay has still to publish."""
        async with self._sessions() as session:
            self._pending.set((await session.execute(self._count)).scalar_one())

    async def run_relay(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        await every(interval, "outbox.relay", self.relay_once, stop)
        await self.settled()
