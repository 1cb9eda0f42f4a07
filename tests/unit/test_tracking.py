"""Folding a transaction's tracking records into one TrackingBatch per project."""

from __future__ import annotations

import uuid

from herald.bus.v1 import tracking_pb2
from kernel import tracking
from kernel.bus import OutgoingMessage
from kernel.tracking import MAX_BATCH_BYTES, batch_without, in_batches, tracking_message


def accepted(project_id: str, contact_id: str = "", detail_bytes: int = 0) -> OutgoingMessage:
    trigger_id = str(uuid.uuid4())
    record = tracking_pb2.TrackingRecord(
        trigger_id=trigger_id,
        project_id=project_id,
        trigger_accepted=tracking_pb2.TriggerAccepted(
            event_id=str(uuid.uuid4()), event_name="x" * max(1, detail_bytes), contact_id=contact_id
        ),
    )
    return tracking_message(record, fact_id=trigger_id)


def run_started(project_id: str) -> OutgoingMessage:
    run_id = str(uuid.uuid4())
    record = tracking_pb2.TrackingRecord(
        trigger_id=str(uuid.uuid4()),
        project_id=project_id,
        run_started=tracking_pb2.RunStarted(run_id=run_id),
    )
    return tracking_message(record, fact_id=run_id)


def work(subject: str, project_id: str) -> OutgoingMessage:
    return OutgoingMessage(subject, b"work", str(uuid.uuid4()), project_id)


def records(message: OutgoingMessage) -> list[tracking_pb2.TrackingRecord]:
    return list(tracking_pb2.TrackingBatch.FromString(message.payload).records)


def test_a_transactions_facts_of_one_project_are_one_batch_holding_every_record() -> None:
    facts = [accepted("team-1"), accepted("team-1"), run_started("team-1")]

    [batch] = in_batches(facts)

    assert batch.subject == "tracking.team-1.batch"
    assert batch.project_id == "team-1"
    assert records(batch) == [tracking_pb2.TrackingRecord.FromString(fact.payload) for fact in facts]


def test_each_project_has_its_own_batch() -> None:
    facts = [accepted("team-1"), accepted("team-2"), run_started("team-1")]

    first, second = in_batches(facts)

    assert (first.subject, second.subject) == ("tracking.team-1.batch", "tracking.team-2.batch")
    assert [r.project_id for r in records(first)] == ["team-1", "team-1"]
    assert [r.project_id for r in records(second)] == ["team-2"]


def test_other_messages_keep_their_order_ahead_of_the_batches() -> None:
    event, run = work("events.team-1.user_signup", "team-1"), work("runs.team-1", "team-1")
    fact = accepted("team-1")

    folded = in_batches([fact, event, run])

    assert folded[:2] == [event, run]
    assert [m.subject for m in folded] == [
        "events.team-1.user_signup",
        "runs.team-1",
        "tracking.team-1.batch",
    ]


def test_without_facts_the_messages_are_untouched() -> None:
    messages = [work("events.team-1.user_signup", "team-1"), work("steps.email.team-1", "team-1")]

    assert in_batches(messages) == messages
    assert in_batches([]) == []


def test_a_batch_is_left_as_it_is() -> None:
    [batch] = in_batches([accepted("team-1")])

    assert in_batches([batch]) == [batch]


def test_the_batch_id_is_derived_from_its_facts_ids() -> None:
    facts = [accepted("team-1"), run_started("team-1")]

    [batch] = in_batches(facts)
    [again] = in_batches(list(facts))
    [other] = in_batches([facts[0]])
    [elsewhere] = in_batches([accepted("team-1"), facts[1]])

    assert batch.msg_id == again.msg_id  # a republish is dropped by JetStream's duplicate window
    assert batch.msg_id.startswith("batch:")
    assert len({batch.msg_id, other.msg_id, elsewhere.msg_id}) == 3
    assert len(batch.msg_id) <= 200  # the outbox's msg_id column


def test_a_fact_announced_twice_is_kept_once() -> None:
    fact = accepted("team-1")

    [batch] = in_batches([fact, fact])
    [alone] = in_batches([fact])

    assert len(records(batch)) == 1
    assert batch == alone


def test_many_facts_are_split_into_batches_below_the_bound_deterministically() -> None:
    facts = [accepted("team-1", detail_bytes=5000) for _ in range(200)]  # ~1 MB of records

    batches = in_batches(facts)
    again = in_batches(facts)

    assert len(batches) > 1
    assert all(len(batch.payload) <= MAX_BATCH_BYTES for batch in batches)
    assert [r for batch in batches for r in records(batch)] == [
        tracking_pb2.TrackingRecord.FromString(fact.payload) for fact in facts
    ]
    assert [b.msg_id for b in batches] == [b.msg_id for b in again]
    assert len({b.msg_id for b in batches}) == len(batches)


def test_a_record_larger_than_the_bound_travels_in_a_batch_of_its_own() -> None:
    small, large, last = (
        accepted("team-1"),
        accepted("team-1", detail_bytes=MAX_BATCH_BYTES),
        accepted("team-1"),
    )

    batches = in_batches([small, large, last])

    assert [len(records(batch)) for batch in batches] == [1, 1, 1]
    assert records(batches[1])[0] == tracking_pb2.TrackingRecord.FromString(large.payload)


def test_erasing_a_contact_from_a_batch_keeps_the_other_contacts_facts() -> None:
    gone, kept = str(uuid.uuid4()), str(uuid.uuid4())
    [batch] = in_batches([accepted("team-1", gone), accepted("team-1", kept), accepted("team-1", gone)])

    left = batch_without(batch.payload, [gone, ""])

    assert [r.trigger_accepted.contact_id for r in tracking_pb2.TrackingBatch.FromString(left).records] == [
        kept
    ]
    assert batch_without(left, [kept]) == b""


def test_subjects() -> None:
    assert tracking.is_batch("tracking.team-1.batch")
    assert not tracking.is_batch("tracking.team-1.run_started")
    assert not tracking.is_batch("events.team-1.batch")
    assert accepted("team-1").subject == tracking.record_subject("team-1", "trigger_accepted")
