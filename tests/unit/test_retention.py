"""The shared retention job (kernel.retention): bounded rounds per project, the report and its log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from kernel.errors import InvalidArgument
from kernel.retention import ContactNames, Retention, RetentionSettings

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


class Store:
    """Rows by project, each with its age in days; purge deletes the oldest first, `limit` a call."""

    def __init__(self, rows: dict[str, list[int]]):
        self.rows = rows
        self.calls: list[tuple[str, datetime, int]] = []

    async def projects(self) -> list[tuple[str, int]]:
        return [("team-b", 30), ("team-a", 7)]

    async def purge(self, team_id: str, before: datetime, limit: int) -> dict[str, int]:
        self.calls.append((team_id, before, limit))
        ages = self.rows.get(team_id, [])
        old = [age for age in ages if NOW - timedelta(days=age) < before][:limit]
        for age in old:
            ages.remove(age)
        return {"svc.items": len(old), "svc.other": 0}


async def test_a_pass_purges_each_project_with_its_own_cutoff_until_no_batch_is_full() -> None:
    store = Store({"team-a": [1, 8, 9, 10, 11, 12], "team-b": [8, 31, 40]})
    retention = Retention("svc", store.projects, store.purge, RetentionSettings(batch=2, pause_seconds=0))

    with capture_logs() as logs:
        report = await retention.run_pass(NOW)

    assert store.rows == {"team-a": [1], "team-b": [8]}
    assert report.purged("team-a") == {"svc.items": 5, "svc.other": 0}
    assert report.purged("team-b") == {"svc.items": 2, "svc.other": 0}
    # team-a: 2 + 2 + 1 (short: done); team-b: 2, then 0 (short: done).
    assert [(team, limit) for team, _, limit in store.calls] == [("team-a", 2)] * 3 + [("team-b", 2)] * 2
    assert {team: before for team, before, _ in store.calls} == {
        "team-a": NOW - timedelta(days=7),
        "team-b": NOW - timedelta(days=30),
    }
    assert retention.last_report is report and report.total == 7
    [line] = [log for log in logs if log["event"] == "retention.purged"]
    assert line["service"] == "svc" and line["total"] == 7 and line["incomplete"] == []
    assert line["projects"] == [
        {
            "team_id": "team-a",
            "retention_days": 7,
            "cutoff": "2030-05-25T12:00:00.000Z",
            "purged": {"svc.items": 5, "svc.other": 0},
            "complete": True,
        },
        {
            "team_id": "team-b",
            "retention_days": 30,
            "cutoff": "2030-05-02T12:00:00.000Z",
            "purged": {"svc.items": 2, "svc.other": 0},
            "complete": True,
        },
    ]


async def test_a_project_stops_at_its_budget_of_rounds_and_the_next_pass_goes_on() -> None:
    store = Store({"team-a": [10] * 7, "team-b": [40]})
    retention = Retention(
        "svc", store.projects, store.purge, RetentionSettings(batch=2, max_rounds=2, pause_seconds=0)
    )

    first = await retention.run_pass(NOW)
    second = await retention.run_pass(NOW)

    assert first.purged("team-a")["svc.items"] == 4
    assert [p.complete for p in first.projects] == [False, True]
    assert first.purged("team-b")["svc.items"] == 1, "one project's backlog does not hold up another"
    assert second.purged("team-a")["svc.items"] == 3
    assert store.rows["team-a"] == []


async def test_a_pass_that_purges_nothing_reports_no_project() -> None:
    store = Store({})
    retention = Retention("svc", store.projects, store.purge, RetentionSettings(pause_seconds=0))

    report = await retention.run_pass(NOW)

    assert report.total == 0
    assert report.document()["projects"] == []


def test_contact_names_need_a_contact_id_and_trim_the_rest() -> None:
    request = SimpleNamespace(
        contact_id=" 0b8e7f0c-4b7a-4f55-8f0e-6a1c2d3e4f50 ", external_id=" u-1 ", email="", phone="+1415"
    )

    names = ContactNames.of(request)

    assert names == ContactNames("0b8e7f0c-4b7a-4f55-8f0e-6a1c2d3e4f50", "u-1", "", "+1415")
    assert names.identifiers == ["0b8e7f0c-4b7a-4f55-8f0e-6a1c2d3e4f50", "u-1", "+1415"]
    with pytest.raises(InvalidArgument) as raised:
        ContactNames.of(SimpleNamespace(contact_id="u-1", external_id="", email="", phone=""))
    assert raised.value.message == "contact_id must be the contact's id (a UUID), got 'u-1'"
