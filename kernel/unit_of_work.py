"""The unit of work: one transaction, and the messages it announces, committed together.

It rolls back unless `commit()` is called. Services subclass it to add their repositories. The
tracking records a transaction announces reach the outbox folded into one message per project
(kernel.tracking.in_batches).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.bus import OutgoingMessage
from kernel.database import pipelined
from kernel.outbox import Outbox, Receipts
from kernel.tracking import in_batches

Publication = Callable[[], Awaitable[Receipts]]
"""Publishes what a unit of work committed; returns the receipts."""


class UnitOfWork(Protocol):
    """What every service's handlers need of a unit of work; each service's own protocol adds
    its repositories. `SqlUnitOfWork` is the real one, tests use in-memory fakes."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def publish(self, message: OutgoingMessage) -> None: ...

    async def commit(self) -> Receipts: ...


class SqlUnitOfWork:
    session: AsyncSession

    def __init__(self, sessions: async_sessionmaker[AsyncSession], outbox: Outbox | None = None):
        self._sessions = sessions
        self._outbox = outbox
        self._pending: list[OutgoingMessage] = []
        self._staged: list[OutgoingMessage] = []

    async def __aenter__(self) -> Self:
        self.session = self._sessions()
        self._pending = []
        self._staged = []
        self.open_repositories(self.session)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.session.rollback()
        await self.session.close()

    def open_repositories(self, session: AsyncSession) -> None:
        """Subclasses create their repositories on `session` here."""

    def publish(self, message: OutgoingMessage) -> None:
        """Publish `message` if, and only if, this unit of work commits."""
        if self._outbox is None:
            raise TypeError(f"{type(self).__name__} has no outbox to publish {message.subject} through")
        self._pending.append(message)

    async def commit(self) -> Receipts:
        publication = await self.commit_unpublished()
        return await publication()

    def together(self) -> AbstractAsyncContextManager[None]:
        """The statements run inside reach the database in one round trip (kernel.database
        `pipelined`): a handler's last writes and `stage_pending`, say, before `commit`."""
        return pipelined(self.session)

    async def stage_pending(self) -> None:
        """Write the messages announced so far into the outbox now, rather than at the commit
        (they are still published only if this unit of work commits): a caller can then send
        them along with its other statements (the ingest group writer, in one pipeline)."""
        if self._outbox is None or not self._pending:
            return
        messages = in_batches(self._pending)
        await self._outbox.stage(self.session, messages)
        self._staged += messages
        self._pending = []

    async def commit_unpublished(self) -> Publication:
        """Commit, and return what publishes the committed messages: a caller that has more to
        commit (the ingest group writer) starts its next transaction while the bus acknowledges."""
        await self.stage_pending()
        staged, self._staged = self._staged, []
        await self.session.commit()
        if self._outbox is None or not staged:
            return _nothing_published
        outbox = self._outbox

        async def publish() -> Receipts:
            return await outbox.publish_committed(staged)

        return publish

    async def rollback(self) -> None:
        self._pending = []
        self._staged = []
        await self.session.rollback()


async def _nothing_published() -> Receipts:
    return {}
