"""What the bus reads from a delivered message's ack subject, against nats-py's own reading."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from kernel.bus import ack_subject_counts

V1 = "$JS.ACK.EVENTS.matcher.3.123456.98765.1733550000000000000.17"
V2 = "$JS.ACK.hub.ACCOUNTHASH.EVENTS.matcher.2.4242.77.1733550000000000000.0"
V2_WITH_TOKEN = f"{V2}.a1b2c3"


@pytest.mark.parametrize("reply", [V1, V2, V2_WITH_TOKEN])
def test_the_counts_are_those_nats_py_reads(reply: str) -> None:
    metadata = Msg(_client=None, subject="events.p.x", reply=reply).metadata  # type: ignore[arg-type]

    assert ack_subject_counts(reply) == (metadata.num_delivered, metadata.sequence.stream)


def test_the_forms_give_their_own_fields() -> None:
    assert ack_subject_counts(V1) == (3, 123456)
    assert ack_subject_counts(V2) == (2, 4242)


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "_INBOX.abc.1",
        "$JS.ACK.EVENTS.matcher",
        "$JS.ACK.EVENTS.matcher.x.y.1.2.3",
        "$JS.API.a.b.c.d.e.f.g",
    ],
)
def test_a_subject_of_neither_form_counts_as_a_first_delivery(reply: str) -> None:
    assert ack_subject_counts(reply) == (1, 0)
