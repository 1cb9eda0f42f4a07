"""kernel.database.insert_many against real PostgreSQL: every column type ingest and the outbox
store, NULLs, text that needs escaping, conflicts, and nothing at all."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from kernel import database
from kernel.database import (
    DriverStatement,
    create_engine,
    driver,
    insert_many,
    insert_many_returning,
    update_many,
)
from kernel.errors import is_unavailable
from tests.conftest import Infrastructure


@pytest.fixture
async def table(engine: AsyncEngine) -> AsyncIterator[Table]:
    metadata = MetaData()
    table = Table(
        f"insert_many_{uuid.uuid4().hex[:8]}",
        metadata,
        Column("id", UUID(as_uuid=True), primary_key=True),
        Column("name", String(64), nullable=False),
        Column("count", Integer),
        Column("document", JSONB),
        Column("at", DateTime(timezone=True)),
        Column("payload", LargeBinary),
    )
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield table
    async with engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)


def row(**changes: Any) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "name": "plain",
        "count": 1,
        "document": {"a": [1, 2.5, None, True], "nested": {"text": "x"}},
        "at": datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "payload": b"\x00\x01binary\xff",
        **changes,
    }


async def stored(sessions: async_sessionmaker[AsyncSession], table: Table) -> dict[uuid.UUID, dict[str, Any]]:
    async with sessions() as session:
        return {r.id: dict(r._mapping) for r in await session.execute(select(table))}


async def test_rows_of_every_type_come_back_as_they_were_given(
    sessions: async_sessionmaker[AsyncSession], table: Table
) -> None:
    rows = [
        row(),
        row(name="quotes ' \" and \\ backslash, unicode é 中文 🎉", document={"k": 'it\'s "q"'}),
        row(count=None, document=None, at=None, payload=None),
        row(document={"empty": {}, "list": []}, payload=b""),
    ]
    async with sessions() as session, session.begin():
        await insert_many(await driver(session), table, rows)
    assert await stored(sessions, table) == {r["id"]: r for r in rows}


async def test_the_statement_is_part_of_the_session_transaction(
    sessions: async_sessionmaker[AsyncSession], table: Table
) -> None:
    async with sessions() as session:
        await insert_many(await driver(session), table, [row()])
        await session.rollback()
    assert await stored(sessions, table) == {}


async def test_on_conflict_is_applied_and_no_rows_is_no_statement(
    sessions: async_sessionmaker[AsyncSession], table: Table
) -> None:
    first = row(name="first")
    async with sessions() as session, session.begin():
        await insert_many(await driver(session), table, [first])
        await insert_many(await driver(session), table, [])
        await insert_many(
            await driver(session),
            table,
            [{**first, "name": "second"}],
            on_conflict="ON CONFLICT (id) DO NOTHING",
        )
    assert [r["name"] for r in (await stored(sessions, table)).values()] == ["first"]


async def test_a_value_json_cannot_carry_is_refused_before_anything_is_sent(
    sessions: async_sessionmaker[AsyncSession], table: Table
) -> None:
    async with sessions() as session:
        with pytest.raises(TypeError, match="cannot store a set"):
            await insert_many(await driver(session), table, [row(document={"tags": {"a"}})])


async def test_a_driver_statement_binds_its_parameters_and_its_literals(
    sessions: async_sessionmaker[AsyncSession], table: Table
) -> None:
    rows = [row(name="a", count=1), row(name="b", count=2), row(name="a", count=3)]
    async with sessions() as session, session.begin():
        await insert_many(await driver(session), table, rows)
    named = DriverStatement.of(
        select(table.c.count)
        .where(table.c.name == bindparam("name", type_=String), table.c.count > 1)  # 1: a literal bind
        .order_by(table.c.count)
    )

    async with sessions() as session, session.begin():
        found = await named.rows(session, name="a")

    assert [r.count for r in found] == [3]


async def test_a_driver_statement_without_rows_answers_how_many_it_changed(
    sessions: async_sessionmaker[AsyncSession], table: Table
) -> None:
    rows = [row(name="a", count=1), row(name="b", count=2), row(name="a", count=3)]
    async with sessions() as session, session.begin():
        await insert_many(await driver(session), table, rows)
    rename = DriverStatement.of(
        update(table)
        .where(table.c.name == bindparam("old", type_=String))
        .values(name=bindparam("new", type_=String))
    )

    async with sessions() as session, session.begin():
        assert await rename.execute(session, old="a", new="c") == 2
        assert await rename.execute(session, old="nothing", new="d") == 0

    assert sorted(r["name"] for r in (await stored(sessions, table)).values()) == ["b", "c", "c"]


async def test_insert_many_returning_answers_only_the_rows_inserted(
    sessions: async_sessionmaker[AsyncSession], table: Table
) -> None:
    existing = row(name="old")
    async with sessions() as session, session.begin():
        await insert_many(await driver(session), table, [existing])
    new = row(name="new", count=7)

    async with sessions() as session, session.begin():
        answered = await insert_many_returning(
            await driver(session), table, [existing, new], "id, count", on_conflict="ON CONFLICT DO NOTHING"
        )

    assert answered == [(new["id"], 7)]
    async with sessions() as session:
        assert await insert_many_returning(await driver(session), table, [], "id") == []


def test_a_driver_statement_cannot_expand_a_list(table: Table) -> None:
    with pytest.raises(ValueError, match="cannot expand a list parameter"):
        DriverStatement.of(select(table.c.id).where(table.c.name.in_(["a", "b"])))


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def terminate(sessions: async_sessionmaker[AsyncSession], pid: int) -> None:
    async with sessions() as session:
        await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


async def test_a_pooled_connection_the_server_dropped_while_idle_is_replaced_unnoticed(
    infrastructure: Infrastructure,
    sessions: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = create_engine(infrastructure.database_url, pool_size=1)
    try:
        first = await backend_pid(engine)
        await terminate(sessions, first)
        monkeypatch.setattr(database, "PING_AFTER_IDLE_SECONDS", 0.0)

        second = await backend_pid(engine)  # pinged, found dead, replaced: no error

        assert second != first
    finally:
        await engine.dispose()


async def test_a_busy_connection_dropped_fails_one_statement_as_unavailable_then_is_replaced(
    infrastructure: Infrastructure,
    sessions: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = create_engine(infrastructure.database_url, pool_size=1)
    monkeypatch.setattr(database, "PING_AFTER_IDLE_SECONDS", 3600.0)
    try:
        first = await backend_pid(engine)
        await terminate(sessions, first)

        with pytest.raises(sqlalchemy.exc.DBAPIError) as raised:
            await backend_pid(engine)
        assert is_unavailable(raised.value)
        assert await backend_pid(engine) != first
    finally:
        await engine.dispose()


async def test_the_driver_connection_follows_the_sessions_transactions(
    sessions: async_sessionmaker[AsyncSession], table: Table
) -> None:
    committed, rolled_back = row(name="committed"), row(name="rolled back")
    async with sessions() as session:
        first = await driver(session)
        assert await driver(session) is first
        await insert_many(first, table, [committed])
        await session.commit()
        # A new transaction: the statement belongs to it, and goes when it is rolled back.
        assert not session.in_transaction()
        await insert_many(await driver(session), table, [rolled_back])
        assert session.in_transaction()  # a cached connection of the old one would begin none
        await session.rollback()

    assert [r["name"] for r in (await stored(sessions, table)).values()] == ["committed"]


async def test_update_many_reads_the_table_through_its_key_whatever_the_plan(
    sessions: async_sessionmaker[AsyncSession], table: Table
) -> None:
    """A prepared statement's generic plan takes jsonb_to_recordset for 100 rows: joined on the
    key alone, it would read a table of a few thousand rows from end to end for every update."""
    rows = [row(name=f"n{index}") for index in range(5000)]
    async with sessions() as session, session.begin():
        await insert_many(await driver(session), table, rows)
        await session.execute(text(f"ANALYZE {table.name}"))

    count_scans = text("SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables WHERE relname = :name")
    async with sessions() as session, session.begin():
        connection = await driver(session)
        await session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        before = (await session.execute(count_scans, {"name": table.name})).one()
        threshold, connection.prepare_threshold = connection.prepare_threshold, 0  # prepared at once
        try:
            for start in range(0, 60, 10):
                changes = [{"id": r["id"], "count": 7} for r in rows[start : start + 10]]
                await update_many(connection, table, changes, "count = r.count")
        finally:
            connection.prepare_threshold = threshold
        after = (await session.execute(count_scans, {"name": table.name})).one()

    assert after.seq_scan - before.seq_scan == 0
    assert after.idx_scan - before.idx_scan >= 6
    assert sorted(r["count"] for r in (await stored(sessions, table)).values())[-60:] == [7] * 60


async def test_update_many_updates_each_row_from_its_values_and_answers_what_it_changed(
    sessions: async_sessionmaker[AsyncSession], table: Table
) -> None:
    rows = [row(name="a", count=1), row(name="b", count=2), row(name="c", count=None)]
    async with sessions() as session, session.begin():
        await insert_many(await driver(session), table, rows)
    changes = [
        {"id": rows[0]["id"], "count": 10, "name": "a2"},
        {"id": rows[1]["id"], "count": 20, "name": "b2"},
        {"id": rows[2]["id"], "count": 30, "name": "c2"},  # left out by the condition
        {"id": uuid.uuid4(), "count": 40, "name": "nobody"},  # matches no row
    ]

    async with sessions() as session, session.begin():
        answered = await update_many(
            await driver(session),
            table,
            changes,
            "count = t.count + r.count, name = r.name",
            where="t.count IS NOT NULL",
            returning="t.id, t.count",
        )

    assert sorted((r.id, r.count) for r in answered) == sorted([(rows[0]["id"], 11), (rows[1]["id"], 22)])
    after = await stored(sessions, table)
    assert [(after[r["id"]]["name"], after[r["id"]]["count"]) for r in rows] == [
        ("a2", 11),
        ("b2", 22),
        ("c", None),
    ]
