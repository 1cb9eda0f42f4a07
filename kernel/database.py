"""PostgreSQL through SQLAlchemy 2 (asyncio) and psycopg 3."""

from __future__ import annotations

import base64
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import (
    ClauseElement,
    ColumnElement,
    LargeBinary,
    MetaData,
    Table,
    delete,
    event,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg as psycopg_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

# One naming convention for every schema, so migrations name constraints predictably.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def schema_metadata(schema: str) -> MetaData:
    """The MetaData of one service's schema: a service writes only its own."""
    return MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


def table_of(model: Any) -> Table:
    """The Core table of a declarative model, for statements that need no ORM bookkeeping."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


def sqlalchemy_url(url: str) -> str:
    """Accept postgres://, postgresql:// or postgresql+psycopg:// and use psycopg 3."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"HERALD_DATABASE_URL must be a PostgreSQL URL, got {parsed.get_backend_name()!r}")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


# A pooled connection idle this long is checked (a round trip) before it is handed out again.
PING_AFTER_IDLE_SECONDS = 5.0


def create_engine(url: str, *, pool_size: int = 16) -> AsyncEngine:
    """An engine whose pool keeps `pool_size` connections (a consumer's concurrency: a busy
    consumer reuses them rather than open and close extra ones) and opens at most half as many
    more for bursts.

    A connection that was idle for PING_AFTER_IDLE_SECONDS is pinged before use and replaced
    if the server is gone (a restart, a dropped socket); a busy one is not, which saves a round
    trip per transaction. A connection that breaks in use anyway fails that one statement
    (a transient error, which every caller retries) and makes the pool replace all its older
    connections."""
    engine = create_async_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size // 2,
        pool_recycle=1800,
    )
    dialect = engine.dialect

    @event.listens_for(engine.sync_engine, "checkin")
    def note_idle(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:  # whatever the driver raises for a dead connection
            raise DisconnectionError(f"a pooled connection no longer answers: {error}") from error

    return engine


async def changed_rows(
    session: AsyncSession, statement: Any, parameters: Mapping[str, Any] | None = None
) -> int:
    """Run an UPDATE or DELETE in the session's transaction; how many rows it changed."""
    result = await session.execute(statement, dict(parameters or {}))
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_some(
    session: AsyncSession,
    table: Table,
    key: Sequence[ColumnElement[Any]],
    *where: ColumnElement[bool],
    limit: int,
) -> int:
    """Delete at most `limit` rows of `table` that match `where`, chosen by their `key` columns
    (a bounded batch, as retention purges); how many went."""
    chosen = select(*key).where(*where).limit(limit)
    target = key[0].in_(chosen) if len(key) == 1 else tuple_(*key).in_(chosen)
    return await changed_rows(session, delete(table).where(target))


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def insert_many(
    connection: psycopg.AsyncConnection[Any],
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    on_conflict: str = "",
) -> int:
    """INSERT `rows` (dicts with the same keys, column name -> value) on `connection` (see
    `driver`) with one statement: `INSERT … SELECT … FROM jsonb_to_recordset(%s)`, the rows travelling as one
    JSON document. The statement's text is the same whatever the number of rows (PostgreSQL
    prepares it once), and building its one parameter is a single `json.dumps`: far cheaper than
    an executemany (one INSERT per row) or per-value array parameters. `on_conflict` is appended
    as is (e.g. "ON CONFLICT (msg_id) DO NOTHING"). Returns how many rows were inserted (or
    updated, by an ON CONFLICT DO UPDATE); in pipeline mode that is known only once the
    pipeline has synced."""
    if not rows:
        return 0
    statement = _recordset_insert(table, tuple(rows[0]), on_conflict)
    cursor = await connection.execute(statement, (_document(rows),))
    return cursor.rowcount


async def insert_many_returning(
    connection: psycopg.AsyncConnection[Any],
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    returning: str,
    *,
    on_conflict: str = "",
) -> list[Any]:
    """`insert_many`, answering the columns `returning` (names, comma-separated) of each row
    inserted, as tuples (a row an `on_conflict` DO NOTHING skipped answers nothing)."""
    if not rows:
        return []
    statement = _recordset_insert(table, tuple(rows[0]), on_conflict, returning)
    cursor = await connection.execute(statement, (_document(rows),))
    return list(await cursor.fetchall())


async def update_many(
    connection: psycopg.AsyncConnection[Any],
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    assignments: str,
    *,
    key: str = "id",
    where: str = "",
    returning: str = "",
) -> list[Any]:
    """UPDATE `table` from `rows` (dicts with the same keys: `key` and the values the update
    reads) in one statement: `UPDATE … SET <assignments> FROM jsonb_to_recordset(%s) AS r(…)
    WHERE t.<key> = r.<key> AND t.<key> = ANY(<the rows' keys>) [AND <where>]`. In `assignments`
    and `where` the table is `t` and the row `r` (e.g. "hits = t.hits + r.hits"). The rows' columns
    take the types of the table's columns of those names. Answers the columns `returning` (SQL over
    `t`, comma-separated) of each row updated, as named tuples; a row matching none updates nothing.

    The keys are also passed as an array so that the table is read through the key's index: the
    planner takes jsonb_to_recordset for 100 rows whatever the document holds, and a prepared
    statement's generic plan would otherwise join them to a sequential scan of any table that it
    thinks has a few thousand rows."""
    if not rows:
        return []
    statement = _recordset_update(table, tuple(rows[0]), assignments, key, where, returning)
    keys = [row[key] for row in rows]
    async with connection.cursor(row_factory=namedtuple_row) as cursor:
        await cursor.execute(statement, (_document(rows), keys))
        return list(await cursor.fetchall()) if returning else []


@functools.cache
def _recordset_update(
    table: Table, names: tuple[str, ...], assignments: str, key: str, where: str, returning: str
) -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    quote = dialect.identifier_preparer.quote
    fields = ", ".join(f"{quote(name)} {table.c[name].type.compile(dialect=dialect)}" for name in names)
    key_type = table.c[key].type.compile(dialect=dialect)
    statement = (
        f"UPDATE {dialect.identifier_preparer.format_table(table)} AS t SET {assignments} "
        f"FROM jsonb_to_recordset(%s::jsonb) AS r({fields}) WHERE t.{quote(key)} = r.{quote(key)} "
        f"AND t.{quote(key)} = ANY(%s::{key_type}[])" + (f" AND {where}" if where else "")
    )
    return f"{statement} RETURNING {returning}" if returning else statement


def _document(rows: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(rows, default=_json_value, separators=(",", ":"))


@dataclass(frozen=True)
class DriverStatement:
    """A SQLAlchemy Core statement compiled once to psycopg's SQL, for `driver` connections: the
    hottest statements skip SQLAlchemy's per-execution work but keep one definition of the
    tables. Parameters are the statement's `bindparam` names; its literal values are bound too."""

    sql: str
    defaults: Mapping[str, Any]

    @classmethod
    def of(cls, statement: ClauseElement) -> DriverStatement:
        compiled = statement.compile(dialect=psycopg_dialect())  # type: ignore[no-untyped-call]
        sql = str(compiled)
        if "POSTCOMPILE" in sql:
            raise ValueError("A driver statement cannot expand a list parameter (IN): use = ANY(array)")
        return cls(sql, dict(compiled.params))

    def bound(self, **parameters: Any) -> tuple[str, Mapping[str, Any]]:
        """The statement and its parameters, for `read_together`."""
        return self.sql, {**self.defaults, **parameters}

    async def rows(self, session: AsyncSession, **parameters: Any) -> list[Any]:
        """The rows (named tuples) the statement returns, inside the session's transaction."""
        connection = await driver(session)
        async with connection.cursor(row_factory=namedtuple_row) as cursor:
            await cursor.execute(self.sql, {**self.defaults, **parameters})
            return await cursor.fetchall()

    async def execute(self, session: AsyncSession, **parameters: Any) -> int:
        """Run a statement that returns no rows, inside the session's transaction; how many rows
        it changed."""
        connection = await driver(session)
        cursor = await connection.execute(self.sql, {**self.defaults, **parameters})
        return cursor.rowcount


@asynccontextmanager
async def pipelined(session: AsyncSession) -> AsyncIterator[None]:
    """The statements run on the session's psycopg connection (`driver`) inside go to the
    server in one round trip (a psycopg pipeline, with the transaction's BEGIN when it is the
    first): their results are there once the block ends, and the first that failed raises then."""
    connection = await driver(session)
    async with connection.pipeline():
        yield


async def read_together(
    session: AsyncSession, reads: Sequence[tuple[str, Mapping[str, Any]]]
) -> list[list[Any]]:
    """The rows (named tuples) of each (statement, parameters), in one round trip (`pipelined`):
    PostgreSQL runs them one after the other, each seeing what the ones before it did and locked."""
    if not reads:
        return []
    connection = await driver(session)
    cursors = [connection.cursor(row_factory=namedtuple_row) for _ in reads]
    try:
        async with connection.pipeline():
            for cursor, (statement, parameters) in zip(cursors, reads, strict=True):
                await cursor.execute(statement, parameters)
        return [await cursor.fetchall() for cursor in cursors]
    finally:
        for cursor in cursors:
            await cursor.close()


async def driver(session: AsyncSession) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under `session`, inside the session's transaction: for the few
    hot statements that skip SQLAlchemy's per-statement work. A failed statement aborts the
    transaction as usual (the session's rollback ends it). Looked up once per transaction."""
    transaction = session.sync_session.get_transaction()
    cached = session.info.get(_DRIVER)
    if transaction is not None and cached is not None and cached[0] is transaction:
        return cached[1]  # type: ignore[no-any-return]
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver_connection = raw.driver_connection
    assert isinstance(driver_connection, psycopg.AsyncConnection)
    session.info[_DRIVER] = (session.sync_session.get_transaction(), driver_connection)
    return driver_connection


_DRIVER = "herald.driver_connection"


def _json_value(value: Any) -> Any:
    """The JSON form of the values json.dumps does not know, as `_recordset_insert` reads them."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"insert_many cannot store a {type(value).__name__}")


@functools.cache
def _recordset_insert(table: Table, names: tuple[str, ...], on_conflict: str, returning: str = "") -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    quote = dialect.identifier_preparer.quote
    fields, selected = [], []
    for name in names:
        column_type = table.c[name].type
        if isinstance(column_type, LargeBinary):
            fields.append(f"{quote(name)} text")
            selected.append(f"decode(r.{quote(name)}, 'base64')")
        else:
            fields.append(f"{quote(name)} {column_type.compile(dialect=dialect)}")
            selected.append(f"r.{quote(name)}")
    statement = (
        f"INSERT INTO {dialect.identifier_preparer.format_table(table)} "
        f"({', '.join(quote(name) for name in names)}) "
        f"SELECT {', '.join(selected)} FROM jsonb_to_recordset(%s::jsonb) AS r({', '.join(fields)}) "
        f"{on_conflict}"
    ).rstrip()
    if returning:
        statement += " RETURNING " + ", ".join(quote(name.strip()) for name in returning.split(","))
    return statement
