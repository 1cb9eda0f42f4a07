"""Tracking records: the facts every service reports about a trigger, for the tracker.

A handler announces each fact as a message of its own (`tracking_message`). The unit of work
then folds the facts of its transaction into one TrackingBatch per project (`in_batches`), so
that a transaction's facts cost one outbox row, one publish and one delivery to the tracker
rather than one each. A batch's payload is its records' bytes as they are, each behind the tag
and length of the repeated field: nothing is parsed again. Its message id is derived from its
facts' own ids, so republishing it (the outbox relay) is dropped by JetStream as a duplicate;
the tracker applies each fact once whichever message brought it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from herald.bus.v1 import tracking_pb2
from kernel.bus import OutgoingMessage
from kernel.clock import to_timestamp, utcnow

PREFIX = "tracking."
BATCH = "batch"
# A batch's payload at most; a transaction with more facts sends several batches. NATS refuses
# a message above its max_payload (1 MiB by default, headers included).
MAX_BATCH_BYTES = 256 * 1024
# TrackingBatch.records: field 1, length-delimited.
_RECORDS_TAG = bytes([tracking_pb2.TrackingBatch.RECORDS_FIELD_NUMBER << 3 | 2])


def record_subject(project_id: str, kind: str) -> str:
    """The subject of a record of `kind` alone (as published before batches)."""
    return f"{PREFIX}{project_id}.{kind}"


def batch_subject(project_id: str) -> str:
    return f"{PREFIX}{project_id}.{BATCH}"


def is_batch(subject: str) -> bool:
    return subject.startswith(PREFIX) and subject.endswith("." + BATCH)


def tracking_message(record: tracking_pb2.TrackingRecord, fact_id: str) -> OutgoingMessage:
    """The bus message for `record`; `fact_id` names the fact, so a repeated fact is kept once."""
    kind = record.WhichOneof("kind")
    if kind is None:
        raise ValueError("a tracking record needs a kind")
    if not record.HasField("recorded_at"):
        record.recorded_at.CopyFrom(to_timestamp(utcnow()))
    return OutgoingMessage(
        subject=record_subject(record.project_id, kind),
        payload=record.SerializeToString(),
        msg_id=f"{kind}:{fact_id}",
        project_id=record.project_id,
    )


def in_batches(messages: Sequence[OutgoingMessage]) -> list[OutgoingMessage]:
    """`messages` with their tracking records folded into a TrackingBatch per project (several
    when they exceed MAX_BATCH_BYTES), after the other messages, which keep their order: the
    work a transaction asks for goes on the bus before what it reports. A fact announced twice
    (the same message id) is kept once."""
    others: list[OutgoingMessage] = []
    facts: dict[str, dict[str, OutgoingMessage]] = {}
    for message in messages:
        if message.subject.startswith(PREFIX) and not is_batch(message.subject):
            facts.setdefault(message.project_id, {}).setdefault(message.msg_id, message)
        else:
            others.append(message)
    for project_id, by_id in facts.items():
        others += _batches(project_id, list(by_id.values()))
    return others


def _batches(project_id: str, facts: list[OutgoingMessage]) -> list[OutgoingMessage]:
    batches: list[OutgoingMessage] = []
    fields: list[bytes] = []
    fact_ids: list[str] = []
    size = 0
    for fact in facts:
        field = _field(fact.payload)
        if fields and size + len(field) > MAX_BATCH_BYTES:
            batches.append(_batch(project_id, fields, fact_ids))
            fields, fact_ids, size = [], [], 0
        fields.append(field)
        fact_ids.append(fact.msg_id)
        size += len(field)
    batches.append(_batch(project_id, fields, fact_ids))
    return batches


def _batch(project_id: str, fields: list[bytes], fact_ids: list[str]) -> OutgoingMessage:
    digest = hashlib.sha256("\n".join([project_id, *fact_ids]).encode()).hexdigest()
    return OutgoingMessage(
        subject=batch_subject(project_id),
        payload=b"".join(fields),
        msg_id=f"{BATCH}:{digest}",
        project_id=project_id,
    )


def _field(record: bytes) -> bytes:
    """A serialized record as an element of TrackingBatch.records."""
    return _RECORDS_TAG + _varint(len(record)) + record


def _varint(value: int) -> bytes:
    """`value` as a Protobuf base-128 varint."""
    encoded = bytearray()
    while value > 0x7F:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def batch_without(payload: bytes, names: Sequence[str]) -> bytes:
    """A batch's payload without the records whose bytes contain one of `names` (Protobuf writes
    strings as plain UTF-8): what is left of it once a contact is erased."""
    encoded = [name.encode() for name in names if name]
    batch = tracking_pb2.TrackingBatch.FromString(payload)
    records = (record.SerializeToString() for record in batch.records)
    return b"".join(_field(record) for record in records if not any(name in record for name in encoded))
