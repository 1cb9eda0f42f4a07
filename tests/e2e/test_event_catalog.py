"""The event catalog through the real processes: differently shaped events give schema hints
with drift, likely personal data is flagged by kind and redacted in the examples (no raw value
anywhere in the tracker's tables), owners confirm and dismiss flags, and the list filters."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from tests.conftest import Infrastructure
from tests.e2e.conftest import RunningStack
from tests.e2e.support import eventually

SEND = "/api/v1/events/send"
CATALOG = "/api/v1/catalog/events"


def send(running: RunningStack, name: str, data: dict[str, Any], **fields: Any) -> None:
    body = {"event_name": name, "event_data": data, **fields}
    answer = running.http.post(SEND, json=body, headers=running.credentials.headers)
    assert answer.status_code == 201, answer.text


def catalogued(running: RunningStack, name: str, count: int) -> dict[str, Any]:
    """The event's catalog entry once it has counted `count` events."""

    def probe() -> dict[str, Any] | None:
        answer = running.http.get(f"{CATALOG}/{name}", headers=running.credentials.headers)
        if answer.status_code != 200:
            return None
        body: dict[str, Any] = answer.json()
        return body if body["count"] >= count else None

    found = eventually(probe)
    assert found["count"] == count
    return found


def schema_of(event: dict[str, Any]) -> dict[str, tuple[bool, dict[str, bool]]]:
    return {p["path"]: (p["drift"], {t["type"]: t["drift"] for t in p["types"]}) for p in event["schema"]}


def test_schema_hints_and_drift_from_differently_shaped_events(running: RunningStack) -> None:
    name = "catalog.order_placed"
    first = {"total": 10, "items": [{"sku": "MUG-1", "qty": 2}]}
    send(
        running,
        name,
        first,
        user_info={"contact_external_id": "cat-1"},
        source={"type": "web_signup"},
        variables={"greeting": "Hi"},
    )
    catalogued(running, name, 1)
    # Later: a number becomes a string, a new field appears, an array element gains a field.
    later = {"total": "10.00", "items": [{"sku": "MUG-2", "qty": 1, "gift": True}], "coupon": "WELCOME"}
    send(running, name, later, user_info={"contact_external_id": "cat-1"})
    answer = running.http.post(
        "/v1/events",
        json={"event": name, "external_id": "cat-1", "payload": {"total": 7}},
        headers={"Authorization": f"Bearer {running.credentials.api_key}"},
    )
    assert answer.status_code == 202, answer.text
    event = catalogued(running, name, 3)

    assert schema_of(event) == {
        "data.coupon": (True, {"string": True}),
        "data.items": (False, {"array": False}),
        "data.items[]": (False, {"object": False}),
        "data.items[].gift": (True, {"boolean": True}),
        "data.items[].qty": (False, {"number": False}),
        "data.items[].sku": (False, {"string": False}),
        "data.total": (False, {"number": False, "string": True}),
        "user_info.external_id": (False, {"string": False}),
        "variables.greeting": (False, {"string": False}),
    }
    counts = {p["path"]: p["count"] for p in event["schema"]}
    assert (counts["data.total"], counts["data.coupon"], counts["user_info.external_id"]) == (3, 1, 3)
    total = next(p for p in event["schema"] if p["path"] == "data.total")
    assert [t["count"] for t in total["types"]] == [2, 1]
    assert total["types"][1]["first_seen"] > event["first_seen"] == total["first_seen"]
    assert event["drift"] is True
    assert {s["type"]: s["count"] for s in event["sources"]} == {"web_signup": 1, "unknown": 2}
    assert [e["payload"]["data"].get("total") for e in event["examples"]] == [7, "10.00", 10]
    # (`latency` is absent until the tracker has the triggers: it may lag the catalog a little.)
    assert set(event) | {"latency"} == {
        "name", "first_seen", "last_seen", "count", "sources", "pii_paths", "drift", "schema", "pii",
        "examples", "truncated", "latency", "latency_window",
    }  # fmt: skip
    # The page carries the event's latency over the last hour: its three triggers, matched.
    latency = eventually(lambda: _latency_once_matched(running, name, 3))
    assert (latency["event_name"], latency["count"], event["latency_window"]) == (name, 3, "PT1H")
    figures = latency["accepted_to_matched"]
    assert 0 <= figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    answer = running.http.get(f"{CATALOG}/{name}?window=P30D", headers=running.credentials.headers)
    assert answer.status_code == 400 and "window" in answer.json()["message"], answer.text


def _latency_once_matched(running: RunningStack, name: str, count: int) -> dict[str, Any] | None:
    answer = running.http.get(f"{CATALOG}/{name}?window=PT2H", headers=running.credentials.headers)
    assert answer.status_code == 200, answer.text
    latency: dict[str, Any] | None = answer.json().get("latency")
    return latency if latency and latency["matched"] == count else None


PII = {
    "email": "zelda.quorn@example.org",
    "note": "Contact zelda.quorn@example.org if the parcel is late",
    "mobile": "+1 415 555 2671",
    "client_ip": "203.0.113.77",
    "client_ip6": "2001:db8:85a3::8a2e:370:7334",
    "card": "4539 1488 0343 6467",
    "order_ref": "4539148803436468",  # fails the Luhn check: an order reference, not a card
    "first_name": "Zelda",
    "shipping": {"street": "742 Evergreen Terrace", "postcode": "SW1A 2AA", "city": "Lunaville"},
    "plan": "pro",
}
USER_INFO = {
    "contact_external_id": "zq-1",
    "email": "zelda.q@example.net",
    "name": "Zelda Quorn",
    "phone": "+14155550123",
}
RAW_VALUES = [
    "zelda.quorn@example.org",
    "zelda.q@example.net",
    "415 555 2671",
    "4155552671",
    "4155550123",
    "203.0.113.77",
    "2001:db8:85a3::8a2e:370:7334",
    "4539 1488 0343 6467",
    "4539148803436467",
    "Zelda",
    "Quorn",
    "742 Evergreen Terrace",
    "SW1A 2AA",
    "Lunaville",
]


def test_pii_is_flagged_by_kind_redacted_in_examples_and_stored_nowhere_raw(
    running: RunningStack, infrastructure: Infrastructure
) -> None:
    name = "catalog.pii_checked"
    send(running, name, PII, user_info=USER_INFO, source={"type": "checkout", "ip": "203.0.113.77"})
    event = catalogued(running, name, 1)

    flags = {flag["path"]: (flag["kinds"], flag["status"]) for flag in event["pii"]}
    assert flags == {
        "data.email": (["email"], "detected"),
        "data.note": (["email"], "detected"),
        "data.mobile": (["phone"], "detected"),
        "data.client_ip": (["ip"], "detected"),
        "data.client_ip6": (["ip"], "detected"),
        "data.card": (["card"], "detected"),
        "data.first_name": (["name"], "detected"),
        "data.shipping.street": (["address"], "detected"),
        "data.shipping.postcode": (["address"], "detected"),
        "data.shipping.city": (["address"], "detected"),
        "user_info.email": (["email"], "detected"),
        "user_info.name": (["name"], "detected"),
        "user_info.phone": (["phone"], "detected"),
    }
    assert event["pii_paths"] == len(flags)
    (example,) = event["examples"]
    assert example["payload"]["data"] == {
        "email": "z***@example.org",
        "note": "Contact z***@example.org if the parcel is late",
        "mobile": "[REDACTED:phone]",
        "client_ip": "[REDACTED:ip]",
        "client_ip6": "[REDACTED:ip]",
        "card": "[REDACTED:card]",
        "order_ref": "4539148803436468",
        "first_name": "[REDACTED:name]",
        "shipping": {
            "street": "[REDACTED:address]",
            "postcode": "[REDACTED:address]",
            "city": "[REDACTED:address]",
        },
        "plan": "pro",
    }
    assert example["payload"]["user_info"] == {
        "external_id": "zq-1",
        "email": "z***@example.net",
        "name": "[REDACTED:name]",
        "phone": "[REDACTED:phone]",
    }
    assert example["source"] == "checkout"
    # The contact's creation is a herald.* event, catalogued like any other.
    system = running.http.get(CATALOG, params={"source": "herald"}, headers=running.credentials.headers)
    assert "herald.contact.created" in [e["name"] for e in system.json()["events"]]

    found = raw_values_in_schema(infrastructure, "tracker", RAW_VALUES)
    assert found == [], f"raw personal data stored in the tracker's tables: {found}"
    assert raw_values_in_schema(infrastructure, "ingest", ["Lunaville"]), "the search itself finds values"


def raw_values_in_schema(infrastructure: Infrastructure, schema: str, values: list[str]) -> list[str]:
    """(table.column, value) of every text, varchar, json, jsonb or array column of every table of
    `schema` that holds one of `values`."""
    found = []
    with psycopg.connect(infrastructure.database_url) as connection:
        columns = connection.execute(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c "
            "JOIN information_schema.tables t "
            "ON t.table_schema = c.table_schema AND t.table_name = c.table_name "
            "WHERE c.table_schema = %s AND t.table_type = 'BASE TABLE' "
            "AND c.data_type IN ('text', 'character varying', 'json', 'jsonb', 'ARRAY', 'character')",
            (schema,),
        ).fetchall()
        assert columns
        for table, column in columns:
            for value in values:
                query = sql.SQL("SELECT count(*) FROM {}.{} WHERE {}::text LIKE %s").format(
                    sql.Identifier(schema), sql.Identifier(table), sql.Identifier(column)
                )
                row = connection.execute(query, (f"%{value}%",)).fetchone()
                if row and row[0]:
                    found.append(f"{table}.{column}: {value}")
    return found


def test_owners_confirm_and_dismiss_flags_and_bad_reviews_are_refused(running: RunningStack) -> None:
    headers, http = running.credentials.headers, running.http
    name = "catalog.reviewed"
    send(running, name, {"product": {"name": "Blue mug"}, "tier": "gold", "email": "ann@example.com"})
    catalogued(running, name, 1)

    dismissed = http.post(
        f"{CATALOG}/{name}/pii", json={"path": "data.product.name", "action": "dismiss"}, headers=headers
    )
    assert dismissed.status_code == 200, dismissed.text
    confirmed = http.post(
        f"{CATALOG}/{name}/pii", json={"path": "data.tier", "action": "confirm"}, headers=headers
    )
    assert confirmed.status_code == 200, confirmed.text
    flags = {f["path"]: (f["kinds"], f["status"]) for f in confirmed.json()["pii"]}
    assert flags == {
        "data.product.name": (["name"], "dismissed"),
        "data.tier": ([], "confirmed"),
        "data.email": (["email"], "detected"),
    }
    assert all(f.get("reviewed_at") for f in confirmed.json()["pii"] if f["status"] != "detected")

    send(running, name, {"product": {"name": "Red mug"}, "tier": "silver", "email": "ann@example.com"})
    event = catalogued(running, name, 2)
    assert {f["path"]: f["status"] for f in event["pii"]}["data.product.name"] == "dismissed"
    assert event["examples"][0]["payload"]["data"] == {
        "product": {"name": "Red mug"},  # dismissed: no longer redacted by its key
        "tier": "[REDACTED:pii]",  # confirmed: redacted though it looks harmless
        "email": "a***@example.com",
    }
    assert event["pii_paths"] == 2

    def review(target: str, body: dict[str, Any]) -> tuple[int, str]:
        answer = http.post(f"{CATALOG}/{target}/pii", json=body, headers=headers)
        return answer.status_code, answer.json()["message"]

    assert review(name, {"path": "data.tier", "action": "forget"}) == (
        400,
        "action must be 'confirm' or 'dismiss', got 'forget'",
    )
    assert review(name, {"action": "confirm"}) == (
        400,
        "path is required: one of the event's paths, e.g. 'data.email'",
    )
    assert review(name, {"path": "data.nope", "action": "confirm"}) == (
        404,
        "Event 'catalog.reviewed' has no path 'data.nope' in the catalog",
    )
    missing = http.post(
        f"{CATALOG}/catalog.never_sent/pii", json={"path": "data.x", "action": "confirm"}, headers=headers
    )
    assert missing.json() == {
        "statusCode": 404,
        "message": "Event 'catalog.never_sent' is not in the catalog",
        "error": "Not Found",
    }
    assert review(name, {"path": "data.tier", "action": "confirm", "extra": 1})[0] == 400
    unknown = http.get(f"{CATALOG}/catalog.never_sent", headers=headers)
    assert unknown.status_code == 404
    assert unknown.json()["message"] == "Event 'catalog.never_sent' is not in the catalog"
    assert http.get(f"{CATALOG}/{name}").status_code == 401


def test_the_list_filters_by_name_source_and_pii_a_page_at_a_time(running: RunningStack) -> None:
    headers, http = running.credentials.headers, running.http
    send(running, "filter.order.paid", {"amount": 5}, source={"type": "webhook"})
    send(running, "filter.order.refunded", {"email": "r@example.com"})
    send(running, "filter.payment_failed", {"card": "4111111111111111"}, source={"type": "webhook"})
    for name in ("filter.order.paid", "filter.order.refunded", "filter.payment_failed"):
        catalogued(running, name, 1)

    def names(**params: Any) -> list[str]:
        answer = http.get(CATALOG, params=params, headers=headers)
        assert answer.status_code == 200, answer.text
        return [e["name"] for e in answer.json()["events"] if e["name"].startswith("filter.")]

    everything = ["filter.order.paid", "filter.order.refunded", "filter.payment_failed"]
    assert names(name="filter.") == everything
    assert names(name="filter.order.") == ["filter.order.paid", "filter.order.refunded"]
    assert names(name="*pay*") == ["filter.payment_failed"]
    assert names(name="filter.*paid") == ["filter.order.paid"]
    assert names(name="filter.", source="webhook") == ["filter.order.paid", "filter.payment_failed"]
    assert names(name="filter.", pii="true") == ["filter.order.refunded", "filter.payment_failed"]
    assert names(name="filter.", pii="false") == ["filter.order.paid"]

    listed = http.get(CATALOG, params={"name": "filter.order.paid"}, headers=headers).json()["events"]
    assert listed[0]["sources"] == [{"type": "webhook", "count": 1}]
    assert (listed[0]["count"], listed[0]["pii_paths"], listed[0]["drift"]) == (1, 0, False)

    paged, cursor = [], ""
    while True:
        params = {"name": "filter.", "limit": "1", **({"cursor": cursor} if cursor else {})}
        page = http.get(CATALOG, params=params, headers=headers).json()
        paged += [e["name"] for e in page["events"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert paged == everything

    def refused(params: dict[str, str]) -> str:
        answer = http.get(CATALOG, params=params, headers=headers)
        assert answer.status_code == 400, answer.text
        message: str = answer.json()["message"]
        return message

    assert refused({"limit": "500"}) == "limit must be 1 to 200 (default 50); got 500"
    assert refused({"cursor": "%%%"}).startswith("cursor is not valid")
    assert refused({"pii": "maybe"}) == "Query parameter 'pii' must be true or false"
    assert refused({"match": "contains"}).startswith("Unknown query parameter 'match'")
    assert refused({"name": "x" * 129}) == "name must be at most 128 characters"
