"""The dashboard's list and toggle use cases: workflows activated and paused, the contact search,
and the dead-letter list's filters, pages and size; bad input gets a clear error naming it."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from kernel.cursors import encode_cursor
from kernel.errors import InvalidArgument, NotFound
from services.executor.domain import DeadLetter
from services.executor.handlers import get_dead_letter, list_dead_letters
from services.ingest.handlers import ContactProfile, list_contacts, put_contact
from services.matcher.handlers import create_workflow, get_workflow, list_versions, set_workflow_active
from tests.unit.fakes import FakeExecutorUnitOfWork, FakeIngestUnitOfWork, FakeMatcherUnitOfWork
from tests.unit.test_matcher_handlers import TEAM, a_definition

START = datetime(2026, 1, 1, tzinfo=UTC)


def ticking() -> FakeIngestUnitOfWork:
    moments = (START + timedelta(seconds=n) for n in itertools.count())
    return FakeIngestUnitOfWork(clock=lambda: next(moments))


async def test_pausing_and_activating_store_a_new_version_each_and_repeating_changes_nothing() -> None:
    uow = FakeMatcherUnitOfWork()
    created = await create_workflow(TEAM, a_definition(), uow)

    paused, stored = await set_workflow_active(TEAM, created.key, False, uow)
    again, stored_again = await set_workflow_active(TEAM, created.key, False, uow)
    active, reactivated = await set_workflow_active(TEAM, created.key, True, uow)

    assert (paused.version, paused.definition.active, stored) == (2, False, True)
    assert (again.version, stored_again) == (2, False)
    assert (active.version, active.definition.active, reactivated) == (3, True, True)
    assert active.definition.steps == created.definition.steps
    assert [w.version for w in await list_versions(TEAM, created.key, uow)] == [3, 2, 1]
    assert (await get_workflow(TEAM, created.key, uow)).definition.active is True


async def test_toggling_an_unknown_workflow_is_not_found() -> None:
    with pytest.raises(NotFound, match="Workflow 'nope' not found"):
        await set_workflow_active(TEAM, "nope", False, FakeMatcherUnitOfWork())


async def test_the_contact_search_finds_by_external_id_or_email_prefix_newest_first_a_page_at_a_time() -> (
    None
):
    uow = ticking()
    for external_id, email in [("user-1", "ada@example.com"), ("user-2", "Bob@Example.com"), ("adm-3", "")]:
        await put_contact(ContactProfile(TEAM, external_id, email=email), uow, 65536)

    every = await list_contacts(TEAM, "", 0, "", uow)
    by_id = await list_contacts(TEAM, "user-", 0, "", uow)
    by_email = await list_contacts(TEAM, "BOB@", 0, "", uow)
    ad = await list_contacts(TEAM, "ad", 0, "", uow)
    first = await list_contacts(TEAM, "", 2, "", uow)
    assert first.next_after is not None

    second = await list_contacts(
        TEAM, "", 2, encode_cursor(first.next_after[0], str(first.next_after[1])), uow
    )

    assert [c.external_id for c in every.contacts] == ["adm-3", "user-2", "user-1"]
    assert every.next_after is None
    assert [c.external_id for c in by_id.contacts] == ["user-2", "user-1"]
    assert [c.external_id for c in by_email.contacts] == ["user-2"]
    assert [c.external_id for c in ad.contacts] == ["adm-3", "user-1"]
    assert [c.external_id for c in first.contacts + second.contacts] == ["adm-3", "user-2", "user-1"]
    assert second.next_after is None


@pytest.mark.parametrize(
    ("q", "limit", "cursor", "parameter"),
    [
        ("", 201, "", "limit"),
        ("", -1, "", "limit"),
        ("x" * 321, 0, "", "q"),
        ("", 0, "not-a-cursor", "cursor"),
    ],
)
async def test_bad_contact_list_requests_name_the_parameter(
    q: str, limit: int, cursor: str, parameter: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await list_contacts(TEAM, q, limit, cursor, FakeIngestUnitOfWork())
    assert refused.value.metadata == {"parameter": parameter}
    assert parameter in refused.value.message


def a_letter(n: int, *, status: str = "dead", channel: str = "email", team: str = TEAM) -> DeadLetter:
    return DeadLetter(
        id=uuid.uuid4(),
        team_id=team,
        run_id=uuid.uuid4(),
        trigger_id=uuid.uuid4(),
        step_id=f"step-{n}",
        channel=channel,
        error="HTTP 503",
        attempts=3,
        failed_at=START + timedelta(minutes=n),
        status=status,
    )


async def test_dead_letters_filter_page_and_count_the_dead_ones() -> None:
    uow = FakeExecutorUnitOfWork()
    letters = [
        a_letter(1),
        a_letter(2, channel="sms"),
        a_letter(3, status="replayed"),
        a_letter(4),
        a_letter(5, team="other"),
    ]
    for letter in letters:
        await uow.dead_letters.add(letter)

    default = await list_dead_letters(TEAM, 0, uow)
    dead = await list_dead_letters(TEAM, 0, uow, status="dead")
    sms = await list_dead_letters(TEAM, 0, uow, channel="sms")
    first = await list_dead_letters(TEAM, 2, uow)
    assert first.next_after is not None

    cursor = encode_cursor(first.next_after[0], str(first.next_after[1]))
    second = await list_dead_letters(TEAM, 2, uow, cursor=cursor)

    assert [letter.step_id for letter in default.letters] == ["step-4", "step-3", "step-2", "step-1"]
    assert (default.total, default.next_after) == (3, None)
    assert [letter.step_id for letter in dead.letters] == ["step-4", "step-2", "step-1"]
    assert [letter.step_id for letter in sms.letters] == ["step-2"]
    assert sms.total == 3
    assert [letter.step_id for letter in first.letters + second.letters] == [
        "step-4",
        "step-3",
        "step-2",
        "step-1",
    ]
    assert second.next_after is None
    assert (await get_dead_letter(TEAM, str(letters[0].id), uow)).step_id == "step-1"


@pytest.mark.parametrize(
    ("status", "channel", "cursor", "parameter"),
    [("lost", "", "", "status"), ("", "fax", "", "channel"), ("", "", "%%%", "cursor")],
)
async def test_bad_dead_letter_list_requests_name_the_parameter(
    status: str, channel: str, cursor: str, parameter: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await list_dead_letters(
            TEAM, 0, FakeExecutorUnitOfWork(), status=status, channel=channel, cursor=cursor
        )
    assert refused.value.metadata == {"parameter": parameter}
    assert parameter in refused.value.message


@pytest.mark.parametrize("letter_id", ["not-a-uuid", "", "of-another-team"])
async def test_an_unknown_or_foreign_dead_letter_is_not_found(letter_id: str) -> None:
    uow = FakeExecutorUnitOfWork()
    foreign = a_letter(1, team="other")
    await uow.dead_letters.add(foreign)
    with pytest.raises(NotFound, match="Dead letter not found"):
        await get_dead_letter(TEAM, str(foreign.id) if letter_id == "of-another-team" else letter_id, uow)
