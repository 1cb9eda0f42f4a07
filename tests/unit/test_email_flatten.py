"""The executor writes an email's bytes itself (a faster policy for headers that fit a line): the
same bytes as aiosmtplib's own flattening, for every form `compose` builds."""

from __future__ import annotations

import re

import pytest
from aiosmtplib.email import flatten_message

from services.executor.domain import OutgoingEmail
from services.executor.senders import SMTP_COMPAT32, compose, flatten

MAIL_FROM = "Herald <noreply@herald.test>"
BOUNDARY = re.compile(rb"=+\d+==")


def email(**changes: object) -> OutgoingEmail:
    fields: dict[str, object] = {
        "to": "jane@example.com",
        "subject": "Welcome, Jane",
        "text": "Hello Jane",
        "html": "",
        "message_id": "<run.step@herald.test>",
        "headers": {},
    }
    return OutgoingEmail(**{**fields, **changes})  # type: ignore[arg-type]


CASES = {
    "text only": email(),
    "text and html": email(html="<p>Hello <b>Jane</b></p>"),
    "a subject longer than a folded line": email(subject="Welcome " * 20),
    "a subject that is not ascii": email(subject="Grüße, Jürgen — bienvenue"),
    "extra headers, one of them long": email(
        headers={"List-Unsubscribe": "<https://example.com/u/" + "x" * 120 + ">", "X-Herald-Run": "r-1"}
    ),
    "text that is not ascii": email(text="Grüße\nzweite Zeile", html="<p>Grüße</p>"),
    "a line starting with From": email(text="From here on\nthe second line"),
    "long lines": email(text="word " * 400),
    "spacing kept as written": email(subject="two  spaces\tand a tab "),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_bytes_are_those_aiosmtplib_would_send(case: OutgoingEmail) -> None:
    message = compose(case, MAIL_FROM)
    ours = flatten(message)
    theirs = flatten_message(message, cte_type="7bit").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    assert BOUNDARY.sub(b"BOUNDARY", ours) == BOUNDARY.sub(b"BOUNDARY", theirs)
    assert b"\r\n" in ours and b"\n" not in ours.replace(b"\r\n", b"")


def test_a_header_too_long_for_a_line_is_folded_by_the_stock_policy() -> None:
    value = "word " * 30
    folded = SMTP_COMPAT32.fold_binary("Subject", value)

    assert folded.count(b"\r\n") > 1
    assert all(len(line) <= 78 for line in folded.split(b"\r\n"))
