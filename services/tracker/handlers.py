"""The tracker's use cases: apply each reported fact once, and answer what became of a trigger."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Protocol

from herald.bus.v1 import tracking_pb2
from kernel.clock import from_timestamp, utcnow
from kernel.errors import NotFound
from kernel.unit_of_work import UnitOfWork
from services.tracker.domain import Progress, TriggerState, TriggerView, cancel, next_status


class TriggerRepository(Protocol):
    async def lock(self, trigger_id: uuid.UUID, team_id: str) -> TriggerState:
        """The trigger (created empty if no fact named it yet), locked until the unit of work ends."""
        ...

    async def save(self, state: TriggerState) -> None: ...

    async def record_accepted(self, trigger_id: uuid.UUID, fact: tracking_pb2.TriggerAccepted) -> None: ...

    async def record_matched(
        self, trigger_id: uuid.UUID, fact: tracking_pb2.EventMatched, at: datetime
    ) -> None: ...

    async def record_run_started(
        self, trigger_id: uuid.UUID, fact: tracking_pb2.RunStarted, at: datetime
    ) -> None: ...

    async def record_run_finished(
        self, trigger_id: uuid.UUID, fact: tracking_pb2.RunFinished, at: datetime
    ) -> None: ...

    async def record_delivery(
        self, trigger_id: uuid.UUID, fact: tracking_pb2.DeliveryRecorded, at: datetime
    ) -> None: ...

    async def progress(self, trigger_id: uuid.UUID) -> Progress: ...

    async def view(self, team_id: str, trigger_id: uuid.UUID) -> TriggerView | None: ...


class TrackerUnitOfWork(UnitOfWork, Protocol):
    @property
    def triggers(self) -> TriggerRepository: ...


class TriggerRecords(Protocol):
    """Ingest's own record of a trigger, for one the tracker has not heard of yet."""

    async def find(self, trigger_id: str) -> TriggerView | None: ...


async def record_fact(record: tracking_pb2.TrackingRecord, uow: TrackerUnitOfWork) -> None:
    """Apply one tracking record to its trigger and move the trigger's status on."""
    trigger_id = uuid.UUID(record.trigger_id)
    at = from_timestamp(record.recorded_at) if record.HasField("recorded_at") else utcnow()
    kind = record.WhichOneof("kind")
    async with uow:
        trigger = await uow.triggers.lock(trigger_id, record.project_id)
        repository = uow.triggers
        if kind == "trigger_accepted":
            await repository.record_accepted(trigger_id, record.trigger_accepted)
            trigger.scheduled_for = (
                from_timestamp(record.trigger_accepted.scheduled_for)
                if record.trigger_accepted.HasField("scheduled_for")
                else None
            )
        elif kind == "event_matched":
            await repository.record_matched(trigger_id, record.event_matched, at)
        elif kind == "run_started":
            await repository.record_run_started(trigger_id, record.run_started, at)
        elif kind == "run_finished":
            await repository.record_run_finished(trigger_id, record.run_finished, at)
        elif kind == "delivery_recorded":
            await repository.record_delivery(trigger_id, record.delivery_recorded, at)
        elif kind == "trigger_cancelled":
            cancel(trigger, from_timestamp(record.trigger_cancelled.cancelled_at))
        next_status(trigger, await repository.progress(trigger_id), at, now=utcnow())
        await repository.save(trigger)
        await uow.commit()


async def get_trigger(
    team_id: str, trigger_id: str, uow: TrackerUnitOfWork, records: TriggerRecords
) -> TriggerView:
    try:
        parsed = uuid.UUID(trigger_id)
    except ValueError:
        raise NotFound(
            "Trigger not found", reason="TRIGGER_NOT_FOUND", metadata={"trigger_id": trigger_id}
        ) from None
    async with uow:
        view = await uow.triggers.view(team_id, parsed)
    if view is None:
        view = await records.find(trigger_id)
    if view is None:
        raise NotFound("Trigger not found", reason="TRIGGER_NOT_FOUND", metadata={"trigger_id": trigger_id})
    return view
