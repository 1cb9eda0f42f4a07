"""The dashboard in a real headless Chromium (Debian's chromium, driven by Playwright) against the
whole platform: sign in, watch a trigger complete and open its timeline, filter the catalog by
PII and dismiss a flag, pause a workflow, replay a dead letter, search a contact, keyboard use,
and the errors a user must understand (a wrong key, another team's trigger, no answer).

Each view is photographed into test-output/screenshots/ for a reviewer to look at."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect, sync_playwright

from tests.e2e.conftest import RunningStack
from tests.e2e.support import HttpSink, eventually

CHROMIUM = Path("/usr/bin/chromium")
HERALD = str(Path(sys.executable).parent / "herald")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser(running: RunningStack) -> Iterator[Browser]:
    """Started after the platform: Playwright's sync API marks an event loop as running in this
    thread while it is up, so the stack's own start-up (which runs a coroutine) must come first."""
    assert CHROMIUM.exists(), f"The browser tests need Debian's chromium at {CHROMIUM}: make setup"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile per test (its own sessionStorage), laptop-sized."""
    context = browser.new_context(viewport={"width": 1366, "height": 860})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    assert not errors, f"the page raised: {errors}"


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, running: RunningStack, view: str = "overview", key: str | None = None) -> None:
    page.goto(f"{running.stack.gateway_url}/dashboard#/{view}")
    page.get_by_label("API key").fill(key or running.credentials.api_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="Dashboard")).to_be_visible()


def api(running: RunningStack, method: str, path: str, **kwargs: Any) -> Any:
    answer = running.http.request(method, path, headers=running.credentials.headers, **kwargs)
    assert answer.status_code < 300, answer.text
    return answer.json()


def create_workflow(
    running: RunningStack, key: str, event: str, steps: list[dict[str, Any]], **extra: Any
) -> None:
    api(
        running,
        "POST",
        "/api/v1/workflows",
        json={"key": key, "name": key, "trigger": {"event": event}, "steps": steps, **extra},
    )


def send(running: RunningStack, event: str, external_id: str, with_email: bool = True, **data: Any) -> str:
    user_info = {"contact_external_id": external_id}
    if with_email:
        user_info["email"] = f"{external_id}@example.com"
    body = {
        "event_name": event,
        "user_info": user_info,
        "source": {"type": "dashboard_test"},
        "event_data": data,
    }
    trigger_id: str = api(running, "POST", "/api/v1/events/send", json=body)["trigger_id"]
    return trigger_id


def other_team_key(running: RunningStack) -> str:
    created = subprocess.run(
        [HERALD, "keys", "create", "--team", f"other-{uuid.uuid4().hex[:8]}"],
        env={**os.environ, "HERALD_DATABASE_URL": running.stack.database_url},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return created.stdout.split()[-1]


def test_the_gateway_serves_the_dashboard_with_its_own_scripts_only(running: RunningStack) -> None:
    page = running.http.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Cache-Control"] == "no-cache"
    policy = page.headers["Content-Security-Policy"]
    assert (
        "script-src 'self'" in policy
        and "connect-src 'self'" in policy
        and "frame-ancestors 'none'" in policy
    )
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert running.http.get("/dashboard", headers={"If-None-Match": page.headers["ETag"]}).status_code == 304
    found = re.search(r'<script type="module" src="/dashboard/([0-9a-f]{16})/app.js">', page.text)
    assert found, page.text
    version = found.group(1)
    script = running.http.get(f"/dashboard/{version}/app.js")
    assert script.status_code == 200
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert script.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert 'from "./api.js"' in script.text
    style = running.http.get(f"/dashboard/{version}/style.css")
    assert style.headers["Content-Type"] == "text/css; charset=utf-8"
    for path in (
        f"/dashboard/{version}/secrets.js",
        f"/dashboard/{version}/index.html",
        "/dashboard/0000000000000000/app.js",
        "/dashboard/static/app.js",
        f"/dashboard/{version}/..%2F..%2Fapp.py",
    ):
        missing = running.http.get(path)
        assert missing.status_code == 404, path
        assert missing.json()["statusCode"] == 404


def test_a_wrong_api_key_gets_a_clear_sign_in_error(page: Page, running: RunningStack) -> None:
    page.goto(f"{running.stack.gateway_url}/dashboard")
    expect(page.get_by_role("heading", name="Sign in to Herald")).to_be_visible()
    page.get_by_label("API key").fill("hk_not_a_real_key")
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("This API key was not accepted")
    expect(page.get_by_role("navigation", name="Dashboard")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    screenshot(page, "sign-in-error")

    page.get_by_label("API key").fill("two words")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("no spaces")


def test_signed_in_the_key_stays_in_the_tab_and_out_of_the_url(page: Page, running: RunningStack) -> None:
    sign_in(page, running)
    key = running.credentials.api_key
    assert key not in page.url
    assert page.evaluate("Object.values(sessionStorage)") == [key]
    assert page.evaluate("localStorage.length") == 0
    with page.expect_request(re.compile(r".*/api/v1/stats/timeline.*")) as request:
        page.get_by_role("button", name="Refresh now").click()
    assert request.value.headers["authorization"] == f"Bearer {key}"
    assert key not in request.value.url
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to Herald")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_a_trigger_appears_completes_and_shows_its_timeline(page: Page, running: RunningStack) -> None:
    create_workflow(
        running,
        "dash-welcome",
        "dash.signup",
        [{"id": "greet", "type": "email", "subject": "Hi", "body": "Hello"}],
    )
    gift = {"id": "gift", "type": "email", "subject": "Gift", "body": "For you"}
    create_workflow(running, "dash-vip", "dash.signup", [gift], filters={"tags_any": ["vip"]})
    sign_in(page, running, "triggers")
    expect(page.get_by_role("heading", name="Triggers")).to_be_visible()

    trigger_id = send(running, "dash.signup", "dash-ada", plan="pro")

    row = page.locator(f'tr[data-key="{trigger_id}"]')
    expect(row).to_be_visible()  # the list refreshes itself
    expect(row.locator("td").nth(2)).to_have_text("completed")
    expect(row.locator("td").nth(1)).to_have_text("dash.signup")
    screenshot(page, "triggers")

    row.get_by_role("link").click()
    expect(page).to_have_url(re.compile(f"#/triggers/{trigger_id}$"))
    expect(page.get_by_role("heading", name="Trigger", exact=True)).to_be_focused()
    timeline = page.get_by_role("list", name="Workflows considered")
    matched = timeline.locator("li.considered-matched")
    expect(matched).to_contain_text("dash-welcome")
    steps = matched.get_by_role("list", name="Steps of dash-welcome")
    expect(steps).to_contain_text("greet")
    expect(steps).to_contain_text("sent")
    expect(steps).to_contain_text("Message accepted")
    filtered = timeline.locator("li.considered-filtered")
    expect(filtered).to_contain_text("dash-vip")
    expect(filtered).to_contain_text("contact has none of the tags vip (tags_any)")
    expect(page.locator("dl.facts").first).to_contain_text("completed")
    screenshot(page, "trigger")

    # The list's filters go into the URL and narrow it down.
    page.goto(f"{running.stack.gateway_url}/dashboard#/triggers")
    page.get_by_label("failed").check()
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"#/triggers\?status=failed$"))
    expect(page.locator(f'tr[data-key="{trigger_id}"]')).to_have_count(0)
    page.get_by_label("Event name").fill("dash.signup")
    page.get_by_label("completed").check()
    page.get_by_label("failed").uncheck()
    page.get_by_role("button", name="Apply").click()
    expect(page.locator(f'tr[data-key="{trigger_id}"]')).to_be_visible()


def test_another_teams_trigger_is_not_found(page: Page, running: RunningStack) -> None:
    trigger_id = send(running, "dash.private", "dash-private")
    eventually(
        lambda: (
            running.http.get(
                f"/api/v1/triggers/{trigger_id}", headers=running.credentials.headers
            ).status_code
            == 200
        )
    )

    sign_in(page, running, f"triggers/{trigger_id}", key=other_team_key(running))

    expect(page.get_by_role("heading", name="Trigger not found")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("Trigger not found")
    screenshot(page, "trigger-not-found")


def test_the_overview_draws_the_last_hour(page: Page, running: RunningStack) -> None:
    send(running, "dash.overview", "dash-olga")
    sign_in(page, running)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    for caption in (
        "Events per second",
        "Triggers by status",
        "Deliveries by channel and outcome",
        "Processing latency (accepted → first step done)",
        "Queue lag: messages not delivered yet",
        "New dead letters per minute",
    ):
        expect(page.locator("figcaption", has_text=caption)).to_be_visible()
    events = page.locator("figure", has=page.locator("figcaption", has_text="Events per second"))
    expect(events.locator("svg[role=img] path")).to_have_count(1)
    expect(events.locator("svg title")).to_have_text("Events per second")
    events.get_by_text("Show the numbers").click()  # the figures as a table, built when opened
    numbers = events.get_by_role("table", name="Events per second")
    expect(numbers.locator("tbody tr").first).to_be_visible()
    assert numbers.locator("tbody tr").count() >= 60  # a row per minute of the hour
    statuses = page.locator("figure", has=page.locator("figcaption", has_text="Triggers by status"))
    expect(statuses.locator("svg desc")).to_contain_text(re.compile(r"completed: [1-9]"))
    expect(
        page.get_by_role("table", name="Processing latency per event name over the window")
    ).to_contain_text("dash.overview")
    screenshot(page, "overview")


def test_the_catalog_filters_by_pii_and_a_flag_can_be_dismissed(page: Page, running: RunningStack) -> None:
    send(running, "dash.contact_form", "dash-pii", phone="+14155550123", message="call me")
    send(running, "dash.plain", "dash-plain", with_email=False, count=3)
    eventually(
        lambda: (
            running.http.get(
                "/api/v1/catalog/events/dash.plain", headers=running.credentials.headers
            ).status_code
            == 200
        )
    )
    eventually(
        lambda: (
            running.http.get(
                "/api/v1/catalog/events/dash.contact_form", headers=running.credentials.headers
            ).status_code
            == 200
        )
    )
    sign_in(page, running, "catalog")

    page.get_by_label("Name").fill("dash.")
    page.get_by_label("PII").select_option("true")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"#/catalog\?name=dash\.&pii=true$"))
    results = page.get_by_role("table", name="Event names, in order")
    expect(results.get_by_role("link", name="dash.contact_form")).to_be_visible()
    expect(results.get_by_role("link", name="dash.plain")).to_have_count(0)
    screenshot(page, "catalog")

    page.get_by_label("PII").select_option("false")
    page.get_by_role("button", name="Apply").click()
    expect(results.get_by_role("link", name="dash.plain")).to_be_visible()
    expect(results.get_by_role("link", name="dash.contact_form")).to_have_count(0)

    page.goto(f"{running.stack.gateway_url}/dashboard#/catalog/dash.contact_form")
    flags = page.get_by_role("table", name="Paths flagged as likely personal data")
    flag = flags.locator('tr[data-key="data.phone"]')
    expect(flag).to_contain_text("detected")
    expect(page.get_by_role("table", name=re.compile("^Paths seen in the event"))).to_contain_text(
        "data.message"
    )
    expect(page.locator("ol.examples")).to_contain_text("[REDACTED:phone]")
    page.get_by_role("button", name="Dismiss the flag on data.phone").click()
    expect(flag).to_contain_text("dismissed")
    expect(page.get_by_role("button", name="Dismiss the flag on data.phone")).to_be_disabled()
    expect(page.get_by_role("button", name="Confirm data.phone as PII")).to_be_focused()
    screenshot(page, "catalog-event")
    stored = api(running, "GET", "/api/v1/catalog/events/dash.contact_form")
    assert [(f["path"], f["status"]) for f in stored["pii"] if f["path"] == "data.phone"] == [
        ("data.phone", "dismissed")
    ]


def test_a_dead_letter_is_listed_with_its_reason_and_replayed(
    page: Page, running: RunningStack, http_sink: HttpSink
) -> None:
    http_sink.answer("/dash-down", *([500] * 2))
    create_workflow(
        running,
        "dash-hook",
        "dash.hook",
        [{"id": "hook", "type": "webhook", "url": f"{http_sink.url}/dash-down", "max_attempts": 2}],
    )
    trigger_id = send(running, "dash.hook", "dash-hook-bob")

    def letter() -> dict[str, Any] | None:
        letters = api(running, "GET", "/api/v1/dlq", params={"limit": 200})["dead_letters"]
        return next((found for found in letters if found["trigger_id"] == trigger_id), None)

    dead = eventually(letter, timeout=60)
    sign_in(page, running, "dead-letters")
    row = page.locator(f'tr[data-key="{dead["id"]}"]')
    expect(row).to_contain_text("HTTP 500")
    expect(row).to_contain_text("webhook")
    expect(row.locator("td").nth(6)).to_have_text("dead")
    screenshot(page, "dead-letters")

    row.get_by_role("link").click()
    expect(page.get_by_role("heading", name="Dead letter")).to_be_focused()
    expect(page.locator("pre.detail-error")).to_contain_text("HTTP 500")
    screenshot(page, "dead-letter")
    page.get_by_role("button", name=f"Replay dead letter {dead['id']}").click()
    expect(page.locator(".ok")).to_contain_text("queued again")
    expect(page.locator("dl.facts")).to_contain_text("replayed")
    eventually(
        lambda: (
            api(running, "GET", f"/api/v1/triggers/{trigger_id}/workflow")["workflows"][0]["run_status"]
            == "completed"
        ),
        timeout=60,
    )
    assert len(http_sink.requests_to("/dash-down")) == 3
    page.reload()
    expect(page.get_by_role("button", name=f"Replay dead letter {dead['id']}")).to_be_disabled()


def test_a_workflow_is_shown_read_only_and_paused_then_activated(page: Page, running: RunningStack) -> None:
    definition = [
        {"id": "wait", "type": "delay", "duration": "PT1H"},
        {"id": "mail", "type": "email", "subject": "Later", "body": "<b>Hi</b>"},
    ]
    create_workflow(running, "dash-series", "dash.series", definition)
    sign_in(page, running, "workflows")
    workflows = page.get_by_role("table", name="The team's workflows (latest versions)")
    row = workflows.locator("tr", has=page.get_by_role("link", name="dash-series", exact=True))
    expect(row).to_contain_text("active")
    screenshot(page, "workflows")

    row.get_by_role("button", name="Pause dash-series").click()
    expect(row).to_contain_text("paused")
    expect(row.get_by_role("button", name="Activate dash-series")).to_be_focused()
    assert api(running, "GET", "/api/v1/workflows/dash-series")["active"] is False

    row.get_by_role("link", name="dash-series").click()
    steps = page.locator("ol.steps")
    expect(steps).to_contain_text("wait")
    expect(steps).to_contain_text("PT1H")
    expect(steps).to_contain_text("<b>Hi</b>")  # a template shown as text, not markup
    expect(page.get_by_role("table", name="Every version, newest first")).to_contain_text("paused")
    page.get_by_role("button", name="Activate dash-series").click()
    expect(page.get_by_role("button", name="Pause dash-series")).to_be_visible()
    assert api(running, "GET", "/api/v1/workflows/dash-series")["active"] is True
    screenshot(page, "workflow")


def test_a_contact_is_found_by_email_and_shows_its_timeline(page: Page, running: RunningStack) -> None:
    trigger_id = send(running, "dash.visit", "dash-carla")
    eventually(lambda: api(running, "GET", f"/api/v1/triggers/{trigger_id}")["status"] == "completed")
    sign_in(page, running, "contacts")
    page.get_by_label("External id or email").fill("DASH-CARLA@")
    page.get_by_role("button", name="Apply").click()
    results = page.locator("table")
    expect(results.get_by_role("link", name="dash-carla")).to_be_visible()
    expect(results).to_contain_text("dash-carla@example.com")
    screenshot(page, "contacts")

    results.get_by_role("link", name="dash-carla").click()
    timeline = page.get_by_role("list", name="Timeline, newest first")
    expect(timeline).to_contain_text("dash.visit")
    expect(timeline.locator(f'a[href="#/triggers/{trigger_id}"]').first).to_be_visible()
    expect(page.locator("section", has_text="Profile")).to_contain_text("dash-carla@example.com")
    screenshot(page, "contact")


def test_the_keyboard_reaches_the_navigation_and_opens_a_view(page: Page, running: RunningStack) -> None:
    page.goto(f"{running.stack.gateway_url}/dashboard")
    expect(page.get_by_label("API key")).to_be_focused()
    page.keyboard.type(running.credentials.api_key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("navigation", name="Dashboard")).to_be_visible()

    page.reload()  # signed in still (the tab's session), with the focus at the top of the page
    expect(page.get_by_role("navigation", name="Dashboard")).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Triggers":
            break
    triggers = page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Triggers")
    expect(triggers).to_be_focused()
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused link shows no outline"
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#/triggers$"))
    expect(page.get_by_role("heading", name="Triggers")).to_be_focused()
    expect(triggers).to_have_attribute("aria-current", "page")

    # The skip link takes the keyboard past the navigation.
    page.reload()
    expect(page.get_by_role("navigation", name="Dashboard")).to_be_visible()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()


def test_no_answer_and_server_errors_offer_a_retry(page: Page, running: RunningStack) -> None:
    sign_in(page, running, "workflows")
    expect(page.get_by_role("table", name="The team's workflows (latest versions)")).to_be_visible()

    def unreachable(route: Route) -> None:
        route.abort("connectionrefused")

    trigger_list = re.compile(r".*/api/v1/triggers\?.*")
    page.route(trigger_list, unreachable)
    page.goto(f"{running.stack.gateway_url}/dashboard#/triggers")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Herald could not be reached")
    screenshot(page, "error-no-answer")
    page.unroute(trigger_list, unreachable)
    alert.get_by_role("button", name="Try again").click()
    expect(page.get_by_role("table", name="Triggers, newest first")).to_be_visible()

    def unavailable(route: Route) -> None:
        route.fulfill(
            status=503,
            json={"statusCode": 503, "message": "Service unavailable", "error": "Service Unavailable"},
        )

    page.route(re.compile(r".*/api/v1/catalog/events\?.*"), unavailable)
    page.goto(f"{running.stack.gateway_url}/dashboard#/catalog")
    expect(page.get_by_role("alert")).to_contain_text("Herald answered 503")
    expect(page.get_by_role("alert").get_by_role("button", name="Try again")).to_be_visible()


def test_api_text_is_shown_as_text_never_as_markup(page: Page, running: RunningStack) -> None:
    hostile = "<img src=x onerror=document.body.dataset.owned=1>"
    send(running, "dash.hostile", "dash-mallory", note=hostile)
    eventually(
        lambda: (
            running.http.get(
                "/api/v1/catalog/events/dash.hostile", headers=running.credentials.headers
            ).status_code
            == 200
        )
    )
    sign_in(page, running, "catalog/dash.hostile")
    expect(page.locator("ol.examples")).to_contain_text(hostile)
    assert page.locator("main img").count() == 0
    assert page.evaluate("document.body.dataset.owned") is None
