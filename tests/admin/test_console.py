"""The web console under /admin/ through the Flask test client, on the real Redis.

Forms are submitted as a browser would: the CSRF token is read from the rendered form.
"""

from __future__ import annotations

import html
import json
import logging
import re
from typing import Any

import pytest
import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry

from app import create_app
from app.services import REDIS_DECODING, services
from app.store import relay_state
from tests.admin.conftest import (
    customerio_queue_length,
    post_mparticle,
    quarantine_in_to_customerio,
    refused_by_customerio,
)
from tests.conftest import ADMIN_TOKEN
from tests.helpers.webhooks import encode, signed_headers, webhook
from tests.to_customerio.conftest import custom_event, mparticle_batch

CONSOLE = "/admin/console"
ELSEWHERE = {"REMOTE_ADDR": "198.51.100.7"}


def csrf_token(page: Any) -> str:
    """The CSRF token of the first form on a rendered page."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def sign_in(client: Any, token: str = ADMIN_TOKEN, **request: Any) -> Any:
    form = client.get(f"{CONSOLE}/login", **request)
    return client.post(f"{CONSOLE}/login", data={"token": token, "csrf_token": csrf_token(form)},
                       **request)


def session_cookie(client: Any) -> str:
    cookie = client.get_cookie("session", path="/admin")
    assert cookie is not None, "no session cookie"
    return cookie.value


def submit(client: Any, page_path: str, form_url: str, **fields: str) -> Any:
    """Post a console form with the CSRF token of the page it is on."""
    token = csrf_token(client.get(page_path))
    return client.post(form_url, data={"csrf_token": token, **fields})


def post_webhook(client: Any, payload: Any) -> Any:
    body = payload if isinstance(payload, bytes) else encode(payload)
    return client.post("/webhooks/customerio", data=body, headers=signed_headers(body))


def text(response: Any) -> str:
    """The page's text with entities decoded, for assertions on what a person reads."""
    return html.unescape(response.get_data(as_text=True))


@pytest.fixture
def signed_in(client: Any) -> Any:
    assert sign_in(client).status_code == 303
    return client


def test_console_is_not_found_when_no_admin_token_is_configured(make_settings, redis):
    app = create_app(make_settings(RELAY_ADMIN_TOKEN=None), redis_client=redis)
    client = app.test_client()

    assert client.get("/admin/").status_code == 404
    assert client.get(f"{CONSOLE}/login").status_code == 404
    assert client.post(f"{CONSOLE}/login", data={"token": ""}).status_code == 404
    assert client.get(f"{CONSOLE}/events").status_code == 404


def test_admin_entry_sends_a_visitor_who_is_not_signed_in_to_the_sign_in_page(client):
    entry = client.get("/admin/")
    page = client.get(f"{CONSOLE}/queue")

    assert (entry.status_code, entry.headers["Location"]) == (302, f"{CONSOLE}/login")
    assert page.status_code == 302
    assert page.headers["Location"] == f"{CONSOLE}/login?next=/admin/console/queue"
    assert 'name="token"' in client.get(f"{CONSOLE}/login").get_data(as_text=True)


def test_a_wrong_token_is_refused_with_401_and_is_never_logged(client, caplog):
    caplog.set_level(logging.INFO, logger="app")
    app_logger = logging.getLogger("app")
    app_logger.addHandler(caplog.handler)  # the app's logger does not propagate to the root
    try:
        refused = sign_in(client, token="a-guess-at-the-token")
    finally:
        app_logger.removeHandler(caplog.handler)

    assert refused.status_code == 401
    assert "That is not the admin token" in text(refused)
    assert client.get(f"{CONSOLE}/events").status_code == 302
    assert "console sign-in refused" in caplog.text
    assert "a-guess-at-the-token" not in caplog.text
    (line,) = [record for record in caplog.records if "sign-in refused" in record.message]
    assert (line.levelname, line.remote_addr, line.failures) == ("WARNING", "127.0.0.1", 1)
    assert not any("a-guess-at-the-token" in repr(vars(record)) for record in caplog.records)


def test_ten_wrong_sign_ins_lock_the_address_out_even_for_the_right_token(client):
    refused = [sign_in(client, token="a-guess").status_code for _ in range(10)]
    locked_out = sign_in(client)

    assert refused == [401] * 10
    assert locked_out.status_code == 429
    assert 0 < int(locked_out.headers["Retry-After"]) <= 60
    assert "Too many wrong tokens were tried from your address" in text(locked_out)
    assert client.get(f"{CONSOLE}/events").status_code == 302  # not signed in
    assert sign_in(client, environ_overrides=ELSEWHERE).status_code == 303  # per address


def test_wrong_tokens_at_the_api_and_the_console_draw_on_one_allowance(client):
    for _ in range(5):
        client.get("/admin/queue", headers={"Authorization": "Bearer a-guess"})
        sign_in(client, token="a-guess")

    assert sign_in(client).status_code == 429
    assert client.get("/admin/queue", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
                      ).status_code == 429


def test_signing_in_opens_the_console_and_signing_out_closes_it(client):
    signed = sign_in(client)

    assert (signed.status_code, signed.headers["Location"]) == (303, f"{CONSOLE}/events")
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/admin" in cookie
    assert client.get("/admin/").headers["Location"] == f"{CONSOLE}/events"
    events = client.get(f"{CONSOLE}/events")
    assert events.status_code == 200 and "Signed in." in text(events)

    signed_out = submit(client, f"{CONSOLE}/events", f"{CONSOLE}/logout")

    assert (signed_out.status_code, signed_out.headers["Location"]) == (303, f"{CONSOLE}/login")
    assert client.get(f"{CONSOLE}/events").status_code == 302


def test_sign_in_returns_to_the_console_page_asked_for_but_never_to_another_site(client):
    form = client.get(f"{CONSOLE}/login?next=/admin/console/queue")
    back = client.post(f"{CONSOLE}/login", data={
        "token": ADMIN_TOKEN, "csrf_token": csrf_token(form), "next": "/admin/console/queue"})
    client.post(f"{CONSOLE}/logout", data={"csrf_token": csrf_token(client.get(back.location))})
    form = client.get(f"{CONSOLE}/login")
    elsewhere = client.post(f"{CONSOLE}/login", data={
        "token": ADMIN_TOKEN, "csrf_token": csrf_token(form),
        "next": "//evil.example/admin/console/"})

    assert back.headers["Location"] == f"{CONSOLE}/queue"
    assert elsewhere.headers["Location"] == f"{CONSOLE}/events"


@pytest.mark.parametrize(
    "next_page",
    ["/admin/console/queue\r\nSet-Cookie: stolen=1", "/admin/console/queue\n",
     "/admin/console/\x00", "/admin/console/\tqueue", "/admin/console/\x7f"],
    ids=["crlf", "lf", "nul", "tab", "del"],
)
def test_a_next_page_with_a_control_character_is_ignored_never_a_500(client, next_page):
    form = client.get(f"{CONSOLE}/login", query_string={"next": next_page})
    signed = client.post(f"{CONSOLE}/login", data={
        "token": ADMIN_TOKEN, "csrf_token": csrf_token(form), "next": next_page})
    already = client.get(f"{CONSOLE}/login", query_string={"next": next_page})

    assert form.status_code == 200
    assert (signed.status_code, signed.location) == (303, f"{CONSOLE}/events")
    assert (already.status_code, already.location) == (302, f"{CONSOLE}/events")


# -- the sign-in kept in Redis -------------------------------------------------------------


def test_a_copy_of_the_session_cookie_stops_working_at_sign_out(client, app):
    sign_in(client)
    copy = app.test_client()
    copy.set_cookie("session", session_cookie(client), path="/admin")
    before = copy.get(f"{CONSOLE}/events")

    submit(client, f"{CONSOLE}/events", f"{CONSOLE}/logout")
    page = copy.get(f"{CONSOLE}/events")
    change = copy.post(f"{CONSOLE}/events/email_opened",
                       data={"action": "off", "csrf_token": csrf_token(before)})

    assert before.status_code == 200
    assert (page.status_code, page.location) == (
        302, f"{CONSOLE}/login?next=/admin/console/events")
    assert (change.status_code, change.location) == (303, f"{CONSOLE}/login")
    assert services(app).toggles.get("email_opened").override is None


def test_a_sign_in_lives_in_redis_for_8_hours_under_a_hash_of_its_id(signed_in, app, redis):
    (key,) = redis.keys(f"{services(app).keys.prefix}:admin:session:*")
    cookie = app.session_interface.get_signing_serializer(app).loads(session_cookie(signed_in))

    assert 8 * 3600 - 60 < redis.ttl(key) <= 8 * 3600
    assert cookie["sign_in"] not in key  # reading Redis gives no id a cookie could carry
    redis.delete(key)  # what its TTL does after 8 hours
    assert signed_in.get(f"{CONSOLE}/events").status_code == 302


def test_signing_in_again_ends_the_sign_in_before_it(client, redis):
    sign_in(client)
    first = redis.keys("*:admin:session:*")
    form = client.get(f"{CONSOLE}/login", query_string={"next": "/admin/console/queue"})
    assert form.status_code == 302  # already signed in: no form
    client.post(f"{CONSOLE}/logout", data={"csrf_token": csrf_token(client.get(form.location))})
    sign_in(client)

    assert len(first) == 1 and first != redis.keys("*:admin:session:*")
    assert len(redis.keys("*:admin:session:*")) == 1


def test_a_console_whose_redis_is_down_answers_its_503_page(make_settings, proxy):
    through_proxy = redis_lib.Redis.from_url(proxy.url, **REDIS_DECODING, socket_timeout=0.3,
                                             retry=Retry(NoBackoff(), 0))
    browser = create_app(make_settings(), redis_client=through_proxy).test_client()
    assert sign_in(browser).status_code == 303
    proxy.hang()  # Redis stops answering

    for page in (browser.get(f"{CONSOLE}/events"), browser.get(f"{CONSOLE}/login")):
        assert page.status_code == 503
        assert page.mimetype == "text/html"
        assert "Redis cannot be reached" in text(page)
        assert page.headers["Cache-Control"] == "no-store"


def test_every_console_answer_is_neither_stored_nor_sniffed(client):
    answers = {
        "sign-in page": client.get(f"{CONSOLE}/login"),
        "to sign-in": client.get(f"{CONSOLE}/queue"),
        "no csrf": client.post(f"{CONSOLE}/login", data={"token": ADMIN_TOKEN}),
        "no page": client.get(f"{CONSOLE}/no-such-page"),
        "wrong token": sign_in(client, token="a-guess"),
    }
    for _ in range(9):
        sign_in(client, token="a-guess")
    answers["locked out"] = sign_in(client)

    assert {name: answer.status_code for name, answer in answers.items()} == {
        "sign-in page": 200, "to sign-in": 302, "no csrf": 400, "no page": 404,
        "wrong token": 401, "locked out": 429}
    for answer in answers.values():
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_a_form_posted_without_its_csrf_token_is_refused_with_400(client, app):
    refused_sign_in = client.post(f"{CONSOLE}/login", data={"token": ADMIN_TOKEN})
    sign_in(client)
    refused_toggle = client.post(f"{CONSOLE}/events/email_opened", data={"action": "off"})
    forged_toggle = client.post(f"{CONSOLE}/events/email_opened",
                                data={"action": "off", "csrf_token": "forged"})

    assert refused_sign_in.status_code == 400
    assert refused_toggle.status_code == 400 and forged_toggle.status_code == 400
    assert "The CSRF token is missing." in text(refused_toggle)
    assert services(app).toggles.get("email_opened").override is None


def test_the_webhook_and_the_json_api_need_no_csrf_token(signed_in, app):
    queued = post_webhook(signed_in, webhook("email", "opened"))
    changed = signed_in.put("/admin/events", json={"events": {"push_sent": False}},
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    assert queued.status_code == 202
    assert changed.status_code == 200
    assert services(app).toggles.get("push_sent").override is False


def test_a_console_sign_in_does_not_open_the_bearer_token_api(signed_in):
    assert signed_in.get("/admin/queue").status_code == 401
    assert signed_in.get("/admin/events").status_code == 401


def test_console_pages_are_neither_cached_nor_framed(signed_in):
    page = signed_in.get(f"{CONSOLE}/queue")

    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


def test_event_types_page_shows_each_types_default_override_and_who_changed_it(signed_in, app):
    services(app).toggles.set("email_drafted", True, actor="alice")

    page = text(signed_in.get(f"{CONSOLE}/events"))

    row = re.search(r'<tr id="email_drafted">(.*?)</tr>', page, re.S).group(1)
    assert "<code>email_<wbr>drafted</code>" in row  # long names wrap at underscores
    assert re.search(r"<td>off</td>\s*<td><strong>on</strong></td>", row)  # default, override
    assert "alice" in row and "Turn off" in row and "Reset" in row
    assert "21 of" in page  # the 20 feed defaults plus email_drafted


def test_turning_an_event_type_off_in_the_console_changes_it_for_every_process(signed_in, app):
    turned_off = submit(signed_in, f"{CONSOLE}/events", f"{CONSOLE}/events/email_opened",
                        action="off")
    toggle = services(app).toggles.get("email_opened")
    ignored = post_webhook(signed_in, webhook("email", "opened"))

    assert turned_off.status_code == 303
    assert turned_off.headers["Location"] == f"{CONSOLE}/events#email_opened"
    assert (toggle.enabled, toggle.override, toggle.changed_by) == (False, False, "console")
    assert ignored.get_json()["status"] == "ignored"
    assert "email_opened turned off" in text(signed_in.get(f"{CONSOLE}/events"))

    submit(signed_in, f"{CONSOLE}/events", f"{CONSOLE}/events/email_opened", action="reset")

    assert services(app).toggles.get("email_opened").override is None


def test_toggling_a_malformed_event_type_is_refused_with_an_error_flash(signed_in, redis):
    response = submit(signed_in, f"{CONSOLE}/events", f"{CONSOLE}/events/Email-Teleported",
                      action="on")
    page = signed_in.get(response.location)

    assert (response.status_code, response.location) == (303, f"{CONSOLE}/events")
    flash_line = re.search(r'<p class="flash flash-error">(.*?)</p>', text(page), re.S)
    assert flash_line and "“Email-Teleported” is not a well-formed event type" in flash_line[1]
    assert redis.keys("*toggles*") == []


def test_the_console_can_turn_on_email_deferred_and_the_next_one_is_queued(signed_in, app):
    before = post_webhook(signed_in, webhook("email", "deferred", delivery_id="d-before"))

    turned_on = submit(signed_in, f"{CONSOLE}/events", f"{CONSOLE}/events",
                       name=" email_deferred ", action="on")
    queued = post_webhook(signed_in, webhook("email", "deferred", delivery_id="d-after"))
    page = text(signed_in.get(f"{CONSOLE}/events"))

    assert before.get_json()["reason"] == "unknown event type"
    assert (turned_on.status_code, turned_on.location) == (
        303, f"{CONSOLE}/events#email_deferred")
    toggle = services(app).toggles.get("email_deferred")
    assert (toggle.enabled, toggle.known, toggle.changed_by) == (True, False, "console")
    assert queued.status_code == 202 and queued.get_json()["event"] == "email_deferred"
    assert "email_deferred (not in the catalog) turned on" in page
    section = re.search(r'<section aria-labelledby="channel-added-by-admins">(.*?)</section>',
                        page, re.S)
    assert section and "Not in the catalog" in section[1]
    row = re.search(r'<tr id="email_deferred">(.*?)</tr>', section[1], re.S).group(1)
    assert re.search(r"<td>off</td>\s*<td><strong>on</strong></td>", row)  # default, override
    assert "Turn off" in row and "console" in row
    assert '<a href="#channel-added-by-admins">Not in the catalog</a>' in page


def test_an_added_type_turned_off_in_the_console_is_ignored_again(signed_in, app):
    services(app).toggles.set("email_deferred", True, actor="alice")

    turned_off = submit(signed_in, f"{CONSOLE}/events", f"{CONSOLE}/events/email_deferred",
                        action="off")
    ignored = post_webhook(signed_in, webhook("email", "deferred")).get_json()

    assert turned_off.status_code == 303
    assert services(app).toggles.get("email_deferred").override is False
    assert (ignored["status"], ignored["reason"]) == ("ignored", "unknown event type")


@pytest.mark.parametrize("name", ["", "email", "EMAIL_DEFERRED", "email__deferred",
                                  "email_deferred<script>", "email_" + "d" * 60])
def test_a_malformed_name_typed_into_the_console_is_refused_with_an_error_flash(
    signed_in, redis, name
):
    response = submit(signed_in, f"{CONSOLE}/events", f"{CONSOLE}/events", name=name,
                      action="on")
    page = signed_in.get(response.location)

    assert (response.status_code, response.location) == (303, f"{CONSOLE}/events")
    assert "is not a well-formed event type" in text(page)
    assert "<script>" not in page.get_data(as_text=True)  # the name is escaped
    assert redis.keys("*toggles*") == []


def test_lookup_by_event_id_shows_where_the_event_is(signed_in):
    payload = webhook("email", "opened", delivery_id="delivery-lookup-1")
    post_webhook(signed_in, payload)

    page = text(signed_in.get(f"{CONSOLE}/lookup", query_string={"q": payload["event_id"]}))

    assert f"Event <code>{payload['event_id']}</code>" in page
    assert '<span class="badge badge-queued">queued</span>' in page
    assert "waiting in the queue" in page
    assert 'href="/admin/console/lookup?q=delivery-lookup-1"' in page


def test_lookup_by_delivery_id_lists_its_first_events_with_links(signed_in):
    opened = webhook("email", "opened", delivery_id="delivery-lookup-2")
    clicked = webhook("email", "clicked", delivery_id="delivery-lookup-2")
    for payload in (opened, clicked):
        post_webhook(signed_in, payload)

    page = text(signed_in.get(f"{CONSOLE}/lookup", query_string={"q": "delivery-lookup-2"}))

    assert "Delivery <code>delivery-lookup-2</code>" in page
    for payload in (opened, clicked):
        assert f'href="/admin/console/lookup?q={payload["event_id"]}"' in page


def test_lookup_of_an_unknown_id_says_nothing_was_found(signed_in):
    page = text(signed_in.get(f"{CONSOLE}/lookup", query_string={"q": "no-such-id"}))

    assert "Not found" in page and "<code>no-such-id</code>" in page


def test_queue_page_shows_length_age_throughput_and_mparticle_health(signed_in, app):
    post_webhook(signed_in, webhook("sms", "delivered"))
    relay = services(app)
    pipe = relay.redis.pipeline()
    relay_state.record_delivery(pipe, relay.keys, relay.keys.mparticle_health, status=429,
                                events=7, rate_limit_percent=87.5)
    pipe.execute()

    page = text(signed_in.get(f"{CONSOLE}/queue"))

    assert re.search(r'data-testid="queue-length">1<', page)
    assert "<dt>Relayed in the last hour</dt><dd>7</dd>" in page
    assert "HTTP 429 (rate limited)" in page
    assert "87.5%" in page
    assert "not refused" in page


def section(page: str, testid: str) -> str:
    """The part of a page inside the direction's section marked ``data-testid``."""
    start = page.index(f'data-testid="{testid}"')
    end = page.find('<section class="direction"', start)
    return page[start:end if end != -1 else len(page)]


@pytest.fixture
def both_signed_in(both_directions: Any) -> Any:
    """A browser signed in to the console of an app with both directions on."""
    client = both_directions.test_client()
    assert sign_in(client).status_code == 303
    return client


def test_queue_page_shows_one_direction_while_mparticles_route_is_off(signed_in):
    page = text(signed_in.get(f"{CONSOLE}/queue"))

    assert "<h2 id=\"to_mparticle-title\">Customer.io → mParticle</h2>" in page
    assert "mParticle → Customer.io" not in page
    assert 'aria-label="Directions"' not in page  # no shortcuts to a single section


def test_queue_page_shows_each_direction_with_its_own_queue_and_destination(
    both_signed_in, both_directions
):
    client, relay = both_signed_in, services(both_directions)
    post_webhook(client, webhook("sms", "delivered"))
    for person in ("p1", "p2"):
        post_mparticle(client, mparticle_batch(custom_event(), customer_id=person))
    quarantine_in_to_customerio(client)
    state = relay.to_customerio_state_keys()
    pipe = relay.redis.pipeline()
    relay_state.record_delivery(pipe, relay.keys, relay.keys.mparticle_health, status=202,
                                events=7, rate_limit_percent=12.5)
    relay_state.record_delivery(pipe, relay.customerio_keys, state.health, status=207,
                                events=3, rate_limit_percent=None)
    pipe.set(state.auth, "refused:401")
    pipe.execute()

    page = text(client.get(f"{CONSOLE}/queue"))

    to_mparticle = section(page, "queue-to_mparticle")
    to_customerio = section(page, "queue-to_customerio")
    assert '<a href="#to_customerio">mParticle → Customer.io</a>' in page
    assert re.search(r'data-testid="queue-length">1<', to_mparticle)
    assert re.search(r'data-testid="queue-dead-letters"><a [^>]*>0<', to_mparticle)
    assert "<dt>Relayed in the last hour</dt><dd>7</dd>" in to_mparticle
    assert "HTTP 202 (accepted)" in to_mparticle and "12.5%" in to_mparticle
    assert "not refused" in to_mparticle
    assert re.search(r'data-testid="queue-length">2<', to_customerio)
    assert re.search(r'data-testid="queue-dead-letters">'
                     r'<a href="/admin/console/dead-letters#to_customerio">1<', to_customerio)
    assert "batches waiting for Customer.io" in to_customerio
    assert "<dt>Relayed in the last hour</dt><dd>3</dd>" in to_customerio
    assert "HTTP 207 (refused some items)" in to_customerio
    assert "refused (refused:401)" in to_customerio and "sending is paused" in to_customerio
    assert "Rate limit used" not in to_customerio  # Customer.io does not report one


def test_dead_letters_page_lists_each_directions_letters_in_its_own_section(
    both_signed_in, both_directions
):
    client = both_signed_in
    mparticle_letter = post_webhook(client, b'{"event_id": 5}').get_json()["dead_letter_id"]
    customerio_letter = quarantine_in_to_customerio(client)

    page = text(client.get(f"{CONSOLE}/dead-letters"))

    to_mparticle = section(page, "dead-letters-to_mparticle")
    to_customerio = section(page, "dead-letters-to_customerio")
    assert "<h2 id=\"to_customerio-title\">mParticle → Customer.io</h2>" in to_customerio
    assert '<a href="#to_customerio">mParticle → Customer.io (1)</a>' in page
    assert (f'href="/admin/console/dead-letters/{mparticle_letter}?direction=to_mparticle"'
            in to_mparticle)
    assert (f'href="/admin/console/dead-letters/{customerio_letter}?direction=to_customerio"'
            in to_customerio)
    assert "body is not JSON" in to_customerio and "quarantined" in to_customerio
    assert '<input type="hidden" name="direction" value="to_customerio">' in to_customerio
    assert "Yes, queue all 2 dead letters again" in page
    assert "1 Customer.io → mParticle, 1 mParticle → Customer.io" in page


def test_a_direction_without_dead_letters_says_so_beside_the_other(both_signed_in):
    quarantine_in_to_customerio(both_signed_in)

    page = text(both_signed_in.get(f"{CONSOLE}/dead-letters"))

    assert "No dead letters" in section(page, "dead-letters-to_mparticle")
    assert "No dead letters" not in section(page, "dead-letters-to_customerio")


def test_dead_letters_left_in_a_direction_that_is_off_are_still_shown(signed_in, app, redis):
    letter_id = redis.xadd(services(app).customerio_keys.dead_letters,
                           {"kind": "quarantined", "reason": "left over", "body": "{}"})

    page = text(signed_in.get(f"{CONSOLE}/dead-letters"))
    empty = text(signed_in.get(f"{CONSOLE}/queue"))

    to_customerio = section(page, "dead-letters-to_customerio")
    assert letter_id in to_customerio and "This direction is off" in to_customerio
    assert "Yes, queue all 1 dead letter again" in page
    assert "This direction is off" in section(empty, "queue-to_customerio")  # 1 dead letter


def test_a_dead_letter_of_mparticle_to_customerio_is_read_and_replayed(
    both_signed_in, both_directions, customerio
):
    client = both_signed_in
    letter_id, event_key = refused_by_customerio(both_directions, customerio)
    page_path = f"{CONSOLE}/dead-letters/{letter_id}?direction=to_customerio"

    raw = text(client.get(page_path))
    found_without_direction = client.get(f"{CONSOLE}/dead-letters/{letter_id}")
    replayed = submit(client, page_path, f"{CONSOLE}/dead-letters/{letter_id}/replay",
                      direction="to_customerio")

    assert "<dt>Direction</dt><dd>mParticle → Customer.io</dd>" in raw
    assert "<dt>Reason</dt><dd>Customer.io refused the item</dd>" in raw
    assert "<dt>Customer.io answer</dt><dd>HTTP 207</dd>" in raw
    assert f'href="/admin/console/lookup?q={event_key}"' in raw
    assert re.search(r'<pre class="raw"[^>]*>{"user_identities".*"event_name":"Refused"', raw)
    assert 'href="/admin/console/dead-letters#to_customerio">← Dead letters' in raw
    assert found_without_direction.status_code == 200
    assert replayed.headers["Location"] == f"{CONSOLE}/dead-letters"
    assert f"Queued again: 1 dead letter ({letter_id})" in text(
        client.get(f"{CONSOLE}/dead-letters"))
    assert customerio_queue_length(both_directions) == 1
    assert services(both_directions).queue_stats()["length"] == 0


def test_a_quarantined_mparticle_batch_is_kept_when_replayed_from_the_console(
    both_signed_in, both_directions
):
    letter_id = quarantine_in_to_customerio(both_signed_in)

    submit(both_signed_in, f"{CONSOLE}/dead-letters",
           f"{CONSOLE}/dead-letters/{letter_id}/replay", direction="to_customerio")

    assert f"Kept {letter_id}: it is still not a usable webhook" in text(
        both_signed_in.get(f"{CONSOLE}/dead-letters"))
    relay = services(both_directions)
    assert relay.queue_stats(relay.customerio_keys)["dead_letters"] == 1


def test_the_same_letter_id_in_both_directions_is_read_and_replayed_apart(
    both_signed_in, both_directions, redis
):
    relay = services(both_directions)
    letter_id = "1795704496123-0"  # each stream numbers its own entries: ids can meet
    redis.xadd(relay.keys.dead_letters, {"kind": "event", "reason": "Customer.io's one",
                                         "body": encode(webhook("email", "opened"))},
               id=letter_id)
    batch = json.dumps(mparticle_batch(custom_event("Kept apart")))
    redis.xadd(relay.customerio_keys.dead_letters,
               {"kind": "event", "reason": "mParticle's one", "body": batch}, id=letter_id)

    first = text(both_signed_in.get(f"{CONSOLE}/dead-letters/{letter_id}"))
    theirs = text(both_signed_in.get(f"{CONSOLE}/dead-letters/{letter_id}",
                                     query_string={"direction": "to_customerio"}))
    submit(both_signed_in, f"{CONSOLE}/dead-letters",
           f"{CONSOLE}/dead-letters/{letter_id}/replay", direction="to_customerio")

    assert "Customer.io's one" in first and "<dd>Customer.io → mParticle</dd>" in first
    assert "mParticle's one" in theirs and "Kept apart" in theirs
    assert customerio_queue_length(both_directions) == 1
    assert relay.queue_stats() == {"length": 0, "pending": 0, "dead_letters": 1}  # untouched


def test_a_dead_letter_of_a_direction_that_does_not_exist_is_refused(signed_in, app):
    letter_id = post_webhook(signed_in, b'{"event_id": 5}').get_json()["dead_letter_id"]

    page = signed_in.get(f"{CONSOLE}/dead-letters/{letter_id}",
                         query_string={"direction": "to_nowhere"})
    other = signed_in.get(f"{CONSOLE}/dead-letters/{letter_id}",
                          query_string={"direction": "to_customerio"})
    replay = submit(signed_in, f"{CONSOLE}/dead-letters",
                    f"{CONSOLE}/dead-letters/{letter_id}/replay", direction="to_nowhere")

    assert page.status_code == replay.status_code == 400
    assert ("The direction must be one of to_mparticle, to_customerio, "
            "to_customerio_audiences.") in text(page)
    assert other.status_code == 404  # not in that direction's stream
    assert services(app).queue_stats()["dead_letters"] == 1


def test_lookup_shows_the_direction_of_an_event_of_either_direction(both_signed_in):
    payload = webhook("email", "opened")
    post_webhook(both_signed_in, payload)
    event = custom_event("Looked Up")
    post_mparticle(both_signed_in, mparticle_batch(event))

    theirs = text(both_signed_in.get(f"{CONSOLE}/lookup", query_string={"q": payload["event_id"]}))
    ours = text(both_signed_in.get(f"{CONSOLE}/lookup",
                                   query_string={"q": event["data"]["source_message_id"]}))

    assert "<dt>Direction</dt><dd>Customer.io → mParticle</dd>" in theirs
    assert "<dt>Direction</dt><dd>mParticle → Customer.io</dd>" in ours
    assert '<span class="badge badge-queued">queued</span>' in ours


def test_a_quarantined_payload_can_be_read_raw_in_the_console(signed_in, app):
    quarantined = post_webhook(signed_in, b'{"event_id": 5, "note": "<b>odd</b>"}').get_json()
    letter_id = quarantined["dead_letter_id"]

    listing = text(signed_in.get(f"{CONSOLE}/dead-letters"))
    raw = signed_in.get(f"{CONSOLE}/dead-letters/{letter_id}").get_data(as_text=True)

    assert "not a usable reporting webhook" in listing and "quarantined" in listing
    assert f'href="/admin/console/dead-letters/{letter_id}?direction=to_mparticle"' in listing
    assert '{&#34;event_id&#34;: 5, &#34;note&#34;: &#34;&lt;b&gt;odd&lt;/b&gt;&#34;}</pre>' in raw
    assert '<th scope="row"><code>event_id</code></th><td>Not a valid string.</td>' in raw
    assert signed_in.get(f"{CONSOLE}/dead-letters/0-0").status_code == 404


def test_a_dead_letter_in_bytes_that_are_not_utf8_is_shown_with_replacement_characters(
    signed_in, app, redis
):
    letter_id = redis.xadd(services(app).keys.dead_letters, {
        "kind": "event", "reason": "by hand", "body": b'{"\xff": 1}', "at_ms": 1795704496123})

    listing = signed_in.get(f"{CONSOLE}/dead-letters")
    raw = signed_in.get(f"{CONSOLE}/dead-letters/{letter_id}")

    assert listing.status_code == raw.status_code == 200
    assert '{"\ufffd": 1}</pre>' in text(raw)


def _dead_letter_of_an_anonymous_event(client: Any, app: Any) -> str:
    """Post an event that names nobody; the worker dead-letters it without sending."""
    payload = webhook("sms", "delivered", customer_id=None, email=None)
    assert post_webhook(client, payload).status_code == 202
    services(app).build_worker().run(once=True)
    relay = services(app)
    (letter_id, fields), = relay.redis.xrange(relay.keys.dead_letters)
    assert fields["reason"] == "no customer_id or email identifies the person"
    return letter_id


def test_replaying_a_dead_letter_from_the_console_queues_it_again(signed_in, app):
    letter_id = _dead_letter_of_an_anonymous_event(signed_in, app)
    relay = services(app)
    assert relay.queue_stats()["length"] == 0

    replayed = submit(signed_in, f"{CONSOLE}/dead-letters",
                      f"{CONSOLE}/dead-letters/{letter_id}/replay")

    assert replayed.headers["Location"] == f"{CONSOLE}/dead-letters"
    assert relay.queue_stats() == {"length": 1, "pending": 0, "dead_letters": 0}
    assert f"Queued again: 1 dead letter ({letter_id})" in text(
        signed_in.get(f"{CONSOLE}/dead-letters"))


def test_replay_all_needs_its_confirmation_box_ticked(signed_in, app):
    _dead_letter_of_an_anonymous_event(signed_in, app)
    quarantined = post_webhook(signed_in, b'{"event_id": 5}').get_json()["dead_letter_id"]
    relay = services(app)

    submit(signed_in, f"{CONSOLE}/dead-letters", f"{CONSOLE}/dead-letters/replay-all")
    unconfirmed = text(signed_in.get(f"{CONSOLE}/dead-letters"))
    assert "Nothing was replayed" in unconfirmed
    assert relay.queue_stats()["dead_letters"] == 2

    submit(signed_in, f"{CONSOLE}/dead-letters", f"{CONSOLE}/dead-letters/replay-all",
           confirm="yes")
    confirmed = text(signed_in.get(f"{CONSOLE}/dead-letters"))

    assert "Queued again: 1 dead letter" in confirmed
    assert f"Kept {quarantined}: it is still not a usable webhook" in confirmed
    assert relay.queue_stats()["length"] == 1
    assert relay.queue_stats()["dead_letters"] == 1


def test_a_console_url_that_matches_no_page_answers_a_console_page_not_json(signed_in):
    response = signed_in.get(f"{CONSOLE}/no-such-page")

    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "Back to the console" in text(response)
    assert response.headers["X-Frame-Options"] == "DENY"
    api = signed_in.get("/admin/no-such-endpoint")  # the JSON API keeps answering JSON
    assert api.status_code == 404 and api.mimetype == "application/json"


def test_a_lookup_shows_an_ignored_event_and_why(signed_in, app):
    services(app).toggles.set("email_opened", False, actor="test")
    payload = webhook("email", "opened", delivery_id="delivery-ignored-1")
    post_webhook(signed_in, payload)

    page = signed_in.get(f"{CONSOLE}/lookup", query_string={"q": payload["event_id"]})

    assert page.status_code == 200
    assert "ignored" in text(page)
    assert "event type turned off" in text(page)


def test_the_session_cookie_is_secure_when_the_console_is_served_over_https(client):
    over_http = sign_in(client)
    form = client.get(f"{CONSOLE}/login", base_url="https://relay.example")
    over_https = client.post(
        f"{CONSOLE}/login", base_url="https://relay.example",
        data={"token": ADMIN_TOKEN, "csrf_token": csrf_token(form)},
        headers={"Referer": f"https://relay.example{CONSOLE}/login"},  # CSRF's HTTPS check
    )

    assert "Secure" not in over_http.headers["Set-Cookie"]  # make run on a laptop still works
    assert over_https.status_code == 303
    assert "Secure" in over_https.headers["Set-Cookie"]


def test_lookup_by_a_customer_id_lists_the_persons_audiences(make_settings, redis, customerio):
    from tests.helpers import firehose
    from tests.helpers.firehose import audience_message

    app = create_app(make_settings(
        MPARTICLE_AUDIENCE_ACCESS_KEY=firehose.ACCESS_KEY, CUSTOMERIO_SITE_ID="s",
        CUSTOMERIO_API_KEY="k", CUSTOMERIO_BASE_URL=customerio.base_url,
    ), redis_client=redis)
    client = app.test_client()
    body, request_id = firehose.delivery(audience_message(77, customer_id="ada", name="Readers"))
    assert client.post("/webhooks/mparticle/audiences", data=firehose.encode(body),
                       headers=firehose.headers(request_id)).status_code == 200
    assert sign_in(client).status_code == 303

    page = client.get(f"{CONSOLE}/lookup", query_string={"q": "ada"})

    assert page.status_code == 200
    assert "Person <code>id:ada</code>" in text(page)
    assert "Readers" in text(page) and "joined" in text(page)
