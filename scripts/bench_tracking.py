"""The tracker's fact path alone: the facts of emailed events applied as the TRACKING consumer
applies its fetches, on an embedded PostgreSQL (fsync off), without the rest of the platform.

    .venv/bin/python -m scripts.bench_tracking [--emails 4000] [--window-ms 150]

Each emailed event reports what the email benchmark's do: its trigger accepted, matched (one
run), the run started, the email delivered and the run finished, 0 to 92 ms apart; and four system
events' triggers, each accepted and then matched by no workflow. Events start 5 ms apart (200/s);
every fact recorded in one window of `--window-ms` goes into one fetch, applied by
`handlers.record_facts` in one transaction (150 ms holds ~390 facts, as a fetch at 200 events/s
does). The fetches are then applied again (a redelivery: nothing may change). It prints, per
emailed event, this process's CPU time (the tracker's Python), PostgreSQL's (its backends) and
the rows PostgreSQL inserted and updated. Figures depend on the machine; nothing here asserts a
target.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import psutil
import psycopg
import structlog

from herald.bus.v1 import tracking_pb2 as pb
from kernel.clock import to_timestamp, utcnow
from kernel.database import create_engine, session_factory
from kernel.migrations import upgrade_all
from scripts.cpu import cpu_seconds
from services.tracker.adapters import TrackerSqlUnitOfWork
from services.tracker.handlers import record_facts
from stack.embedded import EmbeddedPostgres

TEAM = "bench-team"
Fact = tuple[datetime, pb.TrackingRecord]


def record(trigger_id: uuid.UUID, at: datetime, **kind: object) -> Fact:
    return at, pb.TrackingRecord(
        trigger_id=str(trigger_id),
        project_id=TEAM,
        recorded_at=to_timestamp(at),
        **kind,  # type: ignore[arg-type]
    )


def email_facts(start: datetime) -> list[Fact]:
    """The facts one emailed event reports, each with when it is recorded."""
    trigger_id, event_id, run_id, contact_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), str(uuid.uuid4())

    def at(milliseconds: float) -> datetime:
        return start + timedelta(milliseconds=milliseconds)

    decision = pb.MatchDecision(
        workflow_key="welcome",
        workflow_version=1,
        outcome=pb.MATCH_OUTCOME_MATCHED,
        run_id=str(run_id),
        contact_id=contact_id,
    )
    facts = [
        record(trigger_id, at(0), trigger_accepted=pb.TriggerAccepted(
            event_id=str(event_id), event_name="user_signup", contact_id=contact_id,
            created_at=to_timestamp(at(0)))),
        record(trigger_id, at(30), event_matched=pb.EventMatched(
            event_id=str(event_id), event_name="user_signup", decisions=[decision])),
        record(trigger_id, at(45), run_started=pb.RunStarted(
            run_id=str(run_id), workflow_key="welcome", workflow_version=1, contact_id=contact_id)),
        record(trigger_id, at(90), delivery_recorded=pb.DeliveryRecorded(
            delivery_id=str(uuid.uuid5(run_id, "greet")), run_id=str(run_id), step_id="greet",
            channel="email", outcome=pb.DELIVERY_OUTCOME_SENT, attempts=1, detail="250 OK")),
        record(trigger_id, at(92), run_finished=pb.RunFinished(
            run_id=str(run_id), outcome=pb.RUN_OUTCOME_COMPLETED)),
    ]  # fmt: skip
    for offset in (40, 50, 95, 100):  # the herald.* events its run reports
        system_trigger, system_event = uuid.uuid4(), uuid.uuid4()
        facts += [
            record(system_trigger, at(offset), trigger_accepted=pb.TriggerAccepted(
                event_id=str(system_event), event_name="herald.run.started", contact_id=contact_id,
                created_at=to_timestamp(at(offset)))),
            record(system_trigger, at(offset + 30), event_matched=pb.EventMatched(
                event_id=str(system_event), event_name="herald.run.started")),
        ]  # fmt: skip
    return facts


def fetches(emails: int, window: timedelta) -> list[list[pb.TrackingRecord]]:
    """The facts of `emails` events 5 ms apart, a fetch per window in which they are recorded."""
    start = utcnow()
    facts = sorted(
        (fact for index in range(emails) for fact in email_facts(start + timedelta(milliseconds=5 * index))),
        key=lambda fact: fact[0],
    )
    batches: dict[int, list[pb.TrackingRecord]] = {}
    for at, fact in facts:
        batches.setdefault((at - start) // window, []).append(fact)
    return list(batches.values())


def database_counts(url: str) -> dict[str, float]:
    with psycopg.connect(url, autocommit=True) as connection:
        inserted, updated = connection.execute(
            "SELECT tup_inserted, tup_updated FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone() or (0, 0)
        triggers, hot = connection.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
            "WHERE schemaname = 'tracker' AND relname = 'triggers'"
        ).fetchone() or (0, 0)
    return {
        "rows inserted": inserted,
        "rows updated": updated,
        "tracker.triggers rows updated": triggers,
        "of which HOT": hot,
    }


async def apply_all(url: str, emails: int, window: timedelta) -> None:
    engine = create_engine(url)
    sessions = session_factory(engine)
    with psycopg.connect(url, autocommit=True) as connection:
        postgres = psutil.Process(connection.info.backend_pid).parent()  # the postmaster
    assert postgres is not None
    try:
        for batch in fetches(300, window):  # warm up: connections, prepared statements
            await record_facts(batch, TrackerSqlUnitOfWork(sessions))
        batches = fetches(emails, window)
        facts = sum(len(batch) for batch in batches)
        print(f"{emails} emailed events: {facts} facts in {len(batches)} fetches of ~{facts // len(batches)}")
        counts_before = database_counts(url)
        for name in ("applied", "applied again (redelivered)"):
            python, database, began = time.process_time(), cpu_seconds(postgres), time.perf_counter()
            for batch in batches:
                await record_facts(batch, TrackerSqlUnitOfWork(sessions))
            python, database = time.process_time() - python, cpu_seconds(postgres) - database
            wall = (time.perf_counter() - began) * 1000 / len(batches)
            print(
                f"{name}: {wall:.1f} ms per fetch; CPU ms per emailed event: "
                f"tracker {python * 1000 / emails:.3f}, PostgreSQL {database * 1000 / emails:.3f}"
            )
        await asyncio.sleep(1.5)  # PostgreSQL's statistics are flushed within a second or so
        counts_after = database_counts(url)
        print("PostgreSQL rows per emailed event, both rounds:")
        for key, value in counts_after.items():
            print(f"  {key:<30} {(value - counts_before[key]) / emails:7.2f}")
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--emails", type=int, default=4000)
    parser.add_argument("--window-ms", type=float, default=150.0)
    options = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as directory:
        postgres = EmbeddedPostgres(Path(directory) / "postgres", durable=False)
        url = postgres.start()
        try:
            upgrade_all(url)
            asyncio.run(apply_all(url, options.emails, timedelta(milliseconds=options.window_ms)))
        finally:
            postgres.stop()


if __name__ == "__main__":
    main()
