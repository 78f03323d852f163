"""The web console driven in a real headless Chromium against the Procfile's gunicorn.

Nothing is faked: gunicorn is started as the Procfile writes it, on the real Redis test
DB, and Debian's Chromium is driven through Playwright as a person would use the
console. A full-page screenshot of every page is saved to ``artifacts/screenshots/``
for a person to look at.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app import create_app
from app.config import load_settings
from app.services import services
from app.store import relay_state
from tests.conftest import ADMIN_TOKEN, STANDIN_KEY, STANDIN_SECRET, toml_text
from tests.helpers.mparticle_standin import MParticleStandIn
from tests.helpers.processes import REPO_ROOT, Deployment, process_env
from tests.helpers.webhooks import SIGNING_KEY, encode, signed_headers, webhook

CHROMIUM = Path("/usr/bin/chromium")
sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the playwright package is not installed (pip install -e '.[test]'; CI does)",
)
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)",
                allow_module_level=True)

expect = sync_api.expect
pytestmark = [pytest.mark.e2e, pytest.mark.browser]

SCREENSHOTS = REPO_ROOT / "artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SETTINGS = {
    # Toggles are re-read often, so a change made through one gunicorn worker reaches
    # the other one quickly (the contract says within a second).
    "redis": {"toggle_refresh_seconds": 0.1},
    "logging": {"format": "text", "level": "INFO"},
}


@pytest.fixture
def relay_env(tmp_path: Path, redis_url: str, mparticle: MParticleStandIn) -> dict[str, str]:
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(toml_text(SETTINGS))
    return {
        "REDIS_URL": redis_url,
        "CIO_WEBHOOK_SIGNING_KEYS": SIGNING_KEY,
        "MPARTICLE_API_KEY": STANDIN_KEY,
        "MPARTICLE_API_SECRET": STANDIN_SECRET,
        "MPARTICLE_BASE_URL": mparticle.base_url,
        "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "RELAY_SETTINGS": str(settings_file),
        "WEB_CONCURRENCY": "2",
    }


@pytest.fixture
def relay(tmp_path: Path, relay_env: dict[str, str], redis: Any) -> Iterator[Deployment]:
    """The Procfile's web process on the real Redis test DB, with the console on."""
    deployment = Deployment(env=process_env(relay_env), workdir=tmp_path)
    deployment.start("web")
    try:
        deployment.wait_until_healthy()
        yield deployment
    finally:
        deployment.stop_all()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, relay: Deployment) -> Iterator[Any]:
    context = browser.new_context(base_url=relay.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    tab = context.new_page()
    yield tab
    context.close()


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Any) -> None:
    page.goto("/admin/")
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Event types")


def post_webhook(relay: Deployment, payload: Any) -> requests.Response:
    body = payload if isinstance(payload, bytes) else encode(payload)
    return requests.post(f"{relay.url}/webhooks/customerio", data=body,
                         headers=signed_headers(body), timeout=5)


def test_sign_in_refuses_a_wrong_token_then_opens_the_console_until_sign_out(page):
    page.goto("/admin/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    screenshot(page, "sign-in")

    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("That is not the admin token")

    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("status")).to_contain_text("Signed in.")
    expect(page.get_by_role("navigation", name="Console")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    page.goto("/admin/console/queue")
    expect(page.get_by_label("Admin token")).to_be_visible()


def test_an_event_type_turned_off_with_one_click_is_answered_ignored(page, relay):
    before = post_webhook(relay, webhook("email", "opened", delivery_id="d-before"))
    assert before.json()["status"] == "queued"
    sign_in(page)

    page.get_by_role("button", name="Turn off email_opened", exact=True).click()

    expect(page.get_by_role("status")).to_contain_text("email_opened turned off")
    row = page.locator("tr#email_opened")
    expect(row.get_by_role("cell").nth(0)).to_have_text("Off")
    expect(row).to_contain_text("console")
    screenshot(page, "events")
    answers = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # both gunicorn workers see it within a second
        answer = post_webhook(relay, webhook("email", "opened", delivery_id=f"d-{len(answers)}"))
        answers.append(answer.json())
        if answer.json()["status"] == "ignored":
            break
        time.sleep(0.1)
    assert answers[-1]["status"] == "ignored", answers
    assert answers[-1]["reason"] == "event type turned off"


def test_an_event_from_the_webhook_is_looked_up_and_counted_in_the_queue(page, relay, redis):
    payload = webhook("email", "clicked", delivery_id="d-lookup")
    assert post_webhook(relay, payload).status_code == 202
    keys = services(create_app(load_settings(relay.env), redis_client=redis, role="cli")).keys
    now = time.time()
    for minutes_ago, relayed in ((33, 5), (20, 75), (7, 12), (1, 40)):
        pipe = redis.pipeline()  # what a worker records after mParticle answers
        relay_state.record_delivery(pipe, keys, keys.mparticle_health, status=202, events=relayed,
                                    rate_limit_percent=12.5, now=now - 60 * minutes_ago)
        pipe.execute()
    sign_in(page)

    page.get_by_role("link", name="Lookup").click()
    page.get_by_label("Event id, delivery id, or a person's customer id or email").fill(
        payload["event_id"])
    page.get_by_role("button", name="Look up").click()

    story = page.locator("section.card")
    expect(story).to_contain_text(payload["event_id"])
    expect(story.locator(".badge")).to_have_text("queued")
    expect(story).to_contain_text("waiting in the queue")
    screenshot(page, "lookup")
    story.get_by_role("link", name="d-lookup").click()
    expect(page.get_by_role("row", name=f"email_clicked {payload['event_id']}")).to_be_visible()
    screenshot(page, "lookup-delivery")

    page.get_by_role("link", name="Queue").click()
    expect(page.get_by_test_id("queue-length")).to_have_text("1")
    expect(page.locator("main")).to_contain_text("HTTP 202 (accepted)")
    expect(page.locator("main")).to_contain_text("12.5%")
    screenshot(page, "queue")


def test_a_dead_letter_is_read_raw_and_replayed_from_the_console(page, relay, redis):
    quarantined = post_webhook(relay, b'{"event_id": 5}').json()
    assert quarantined["status"] == "quarantined"
    anonymous = webhook("sms", "delivered", customer_id=None, email=None, delivery_id="d-anon")
    assert post_webhook(relay, anonymous).status_code == 202
    worker_app = create_app(load_settings(relay.env), redis_client=redis, role="cli")
    services(worker_app).build_worker().run(once=True)  # names nobody: dead-lettered, not sent
    relay_services = services(worker_app)
    assert relay_services.queue_stats()["dead_letters"] == 2
    sign_in(page)

    page.get_by_role("link", name="Dead letters").click()
    rows = page.locator("main tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("main")).to_contain_text("no customer_id or email identifies the person")
    expect(page.locator("main")).to_contain_text("not a usable reporting webhook")
    screenshot(page, "dead-letters")

    letter_id = quarantined["dead_letter_id"]
    page.get_by_role("link", name=f"View raw {letter_id}").click()
    expect(page.locator("pre.raw")).to_have_text('{"event_id": 5}')
    screenshot(page, "dead-letter-raw")
    page.get_by_role("button", name="Replay this dead letter").click()
    expect(page.get_by_role("status")).to_contain_text("still not a usable webhook")

    anonymous_row = rows.filter(has_text=anonymous["event_id"])
    anonymous_row.get_by_role("button", name="Replay").click()
    expect(page.get_by_role("status")).to_contain_text("Queued again: 1 dead letter")
    expect(rows).to_have_count(1)
    assert relay_services.queue_stats()["length"] == 1
    page.get_by_role("link", name="Queue").click()
    expect(page.get_by_test_id("queue-length")).to_have_text("1")
