"""The admin API (/admin/*) on the real Redis, behind the bearer token (CONTRACT §3)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import redis as redis_lib
from flask import Flask
from redis.backoff import NoBackoff
from redis.retry import Retry

from app import create_app
from app.services import REDIS_DECODING, services
from app.store.keys import CONSUMER_GROUP
from app.to_mparticle.catalog import CATALOG
from tests.admin.conftest import (
    customerio_queue_length,
    post_mparticle,
    quarantine_in_to_customerio,
    refused_by_customerio,
)
from tests.conftest import ADMIN_TOKEN
from tests.helpers.webhooks import encode, signed_headers, webhook
from tests.to_customerio.conftest import custom_event, mparticle_batch

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# A guess that must never show up in a log line.
WRONG = {"Authorization": "Bearer a-guess-at-the-admin-token-7f3a9c"}
ELSEWHERE = {"REMOTE_ADDR": "198.51.100.7"}


def send(client: Any, payload: Any = None, *, body: bytes | None = None) -> dict[str, Any]:
    body = encode(payload) if body is None else body
    response = client.post("/webhooks/customerio", data=body, headers=signed_headers(body))
    assert response.status_code in (200, 202)
    return response.get_json()


def dead_letter_an_event(app: Flask, client: Any) -> dict[str, Any]:
    """Have the worker dead-letter an event that names no person; return the webhook."""
    payload = webhook("sms", "delivered", customer_id=None, email=None, delivery_id=None)
    send(client, payload)
    # No HTTP: the event is dead-lettered before sending.
    services(app).build_worker().run(once=True)
    return payload


def queue_length(app: Flask) -> int:
    return services(app).queue_stats()["length"]


# -- access ----------------------------------------------------------------------------


def test_the_admin_api_answers_404_when_no_admin_token_is_configured(make_settings, redis):
    app = create_app(make_settings(RELAY_ADMIN_TOKEN=None), redis_client=redis)

    response = app.test_client().get("/admin/queue", headers=AUTH)

    assert response.status_code == 404
    assert set(response.get_json()) == {"error", "details"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-the-token"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"Authorization": "Bearer "},
    ],
    ids=["none", "wrong-token", "wrong-scheme", "longer-token", "empty-token"],
)
def test_the_admin_api_answers_401_without_the_right_token(client, headers):
    response = client.get("/admin/queue", headers=headers)

    assert response.status_code == 401
    assert set(response.get_json()) == {"error", "details"}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_put_without_the_token_changes_nothing(client, app):
    response = client.put("/admin/events", json={"events": {"email_opened": False}})

    assert response.status_code == 401
    assert services(app).toggles.get("email_opened").override is None


# -- throttle on wrong tokens ------------------------------------------------------------


@pytest.fixture
def app_log(app: Flask, caplog: pytest.LogCaptureFixture) -> Any:
    """The app's log records (its logger does not propagate to the root's, where caplog is)."""
    caplog.set_level(logging.INFO, logger="app")
    app_logger = logging.getLogger("app")
    app_logger.addHandler(caplog.handler)
    yield caplog
    app_logger.removeHandler(caplog.handler)


def wrong_tokens(client: Any, count: int, **request: Any) -> list[int]:
    return [client.get("/admin/queue", headers=WRONG, **request).status_code
            for _ in range(count)]


def test_ten_wrong_tokens_lock_the_address_out_with_429_even_for_the_right_token(client):
    refused = wrong_tokens(client, 10)
    locked_out = client.get("/admin/queue", headers=WRONG)
    right_token = client.get("/admin/queue", headers=AUTH)

    assert refused == [401] * 10
    for response in (locked_out, right_token):
        assert response.status_code == 429
        assert set(response.get_json()) == {"error", "details"}
        assert "retry in" in response.get_json()["details"]
        assert 0 < int(response.headers["Retry-After"]) <= 60
        assert response.headers["Cache-Control"] == "no-store"


def test_a_lockout_ends_with_its_window_which_more_guesses_do_not_extend(client, app, redis):
    wrong_tokens(client, 12)
    key = services(app).keys.admin_failures("127.0.0.1")
    window_left = redis.pttl(key)
    wrong_tokens(client, 5)  # refused unchecked while locked out: not counted

    assert 0 < redis.pttl(key) <= window_left <= 60_000
    assert redis.get(key) == "10"
    redis.pexpire(key, 1)  # the window's last millisecond
    time.sleep(0.01)
    assert client.get("/admin/queue", headers=AUTH).status_code == 200


def test_the_lockout_is_per_client_address(client):
    wrong_tokens(client, 10)

    assert client.get("/admin/queue", headers=AUTH).status_code == 429
    assert client.get("/admin/queue", headers=AUTH,
                      environ_overrides=ELSEWHERE).status_code == 200
    assert wrong_tokens(client, 1, environ_overrides=ELSEWHERE) == [401]


def test_every_web_process_sees_the_same_lockout(make_settings, redis):
    one, other = (create_app(make_settings(), redis_client=redis).test_client()
                  for _ in range(2))
    wrong_tokens(one, 6)
    wrong_tokens(other, 4)

    assert one.get("/admin/queue", headers=AUTH).status_code == 429
    assert other.get("/admin/queue", headers=AUTH).status_code == 429


def test_requests_without_a_bearer_token_guess_nothing_and_are_not_counted(client):
    for headers in ({}, {"Authorization": f"Basic {ADMIN_TOKEN}"}):
        assert [client.get("/admin/queue", headers=headers).status_code
                for _ in range(15)] == [401] * 15

    assert client.get("/admin/queue", headers=AUTH).status_code == 200


def test_each_wrong_token_is_logged_with_the_address_and_count_but_never_its_value(
    client, app_log
):
    wrong_tokens(client, 10)
    wrong_tokens(client, 3)  # refused while locked out: one 429 each, no log line each

    lines = [record for record in app_log.records if "admin API refused" in record.message]
    assert [(line.levelname, line.remote_addr, line.failures) for line in lines] == [
        ("WARNING", "127.0.0.1", count) for count in range(1, 11)]
    assert lines[-1].locked_out and "locked out" in lines[-1].message
    assert "a-guess-at-the-admin-token" not in app_log.text
    assert not any("a-guess-at-the-admin-token" in repr(vars(record))
                   for record in app_log.records)


def test_a_redis_that_is_down_answers_503_not_an_open_door(make_settings):
    unreachable = redis_lib.Redis.from_url("redis://127.0.0.1:9/0", **REDIS_DECODING,
                                           socket_connect_timeout=0.5,
                                           retry=Retry(NoBackoff(), 0))
    app = create_app(make_settings(), redis_client=unreachable)

    response = app.test_client().get("/admin/queue", headers=AUTH)

    assert response.status_code == 503
    assert set(response.get_json()) == {"error", "details"}
    assert response.headers["Cache-Control"] == "no-store"


# -- headers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("get", "/admin/queue", AUTH, 200),
        ("get", "/admin/queue", {}, 401),
        ("get", "/admin/queue", WRONG, 401),
        ("post", "/admin/dead-letters/replay", AUTH, 400),
        ("get", "/admin/no-such-endpoint", AUTH, 404),
        ("delete", "/admin/queue", AUTH, 405),
        ("get", "/admin", {}, 308),
    ],
    ids=["ok", "no-token", "wrong-token", "bad-request", "no-route", "bad-method", "redirect"],
)
def test_every_admin_answer_is_neither_stored_nor_sniffed(client, method, path, headers,
                                                          status):
    response = client.open(path, method=method.upper(), headers=headers)

    assert response.status_code == status
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_404_of_an_admin_api_that_is_off_is_neither_stored_nor_sniffed(make_settings,
                                                                            redis):
    app = create_app(make_settings(RELAY_ADMIN_TOKEN=None), redis_client=redis)

    response = app.test_client().get("/admin/queue")

    assert response.status_code == 404
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_answers_outside_admin_keep_their_own_caching(client):
    assert "Cache-Control" not in client.get("/healthz").headers


# -- dedup -----------------------------------------------------------------------------


def test_the_story_of_a_queued_event_says_seen_queued_when_and_ttl(client):
    payload = webhook("email", "opened")
    send(client, payload)

    response = client.get(f"/admin/dedup/{payload['event_id']}", headers=AUTH)

    assert response.status_code == 200
    story = response.get_json()
    assert story["seen"] is True
    assert story["status"] == "queued"
    assert story["event"] == "email_opened"
    assert story["where"] == "waiting in the queue"
    assert story["delivery_id"] == payload["data"]["delivery_id"]
    assert isinstance(story["received_at_ms"], int)
    # The mark's bucket's TTL: the 8-day window, plus up to half of it (app/keys.py).
    assert 0 < story["ttl_seconds"] <= 12 * 24 * 3600


def test_the_story_of_a_suppressed_event_names_the_first_one(client):
    first = webhook("email", "opened", delivery_id="delivery-9")
    second = webhook("email", "opened", delivery_id="delivery-9")
    send(client, first)
    send(client, second)

    story = client.get(f"/admin/dedup/{second['event_id']}", headers=AUTH).get_json()

    assert story["status"] == "suppressed"
    assert story["suppressed_by"] == first["event_id"]


def test_the_story_of_an_unknown_event_is_404_not_seen(client):
    response = client.get("/admin/dedup/01NEVERSEEN", headers=AUTH)

    assert response.status_code == 404
    body = response.get_json()
    assert body["seen"] is False
    assert {"error", "details"} <= set(body)


def test_the_first_occurrence_flags_of_a_delivery_name_each_types_first_event(client):
    opened = webhook("email", "opened", delivery_id="delivery-5")
    clicked = webhook("email", "clicked", delivery_id="delivery-5")
    send(client, opened)
    send(client, clicked)
    send(client, webhook("email", "opened", delivery_id="delivery-5"))

    response = client.get("/admin/first/delivery-5", headers=AUTH)

    assert response.status_code == 200
    body = response.get_json()
    assert body["flags"] == {
        "email_opened": opened["event_id"], "email_clicked": clicked["event_id"]
    }
    assert body["ttl_seconds"] > 0


def test_a_delivery_with_no_flags_shows_none(client):
    body = client.get("/admin/first/never-delivered", headers=AUTH).get_json()

    assert body == {"delivery_id": "never-delivered", "flags": {}, "ttl_seconds": None}


# -- events ----------------------------------------------------------------------------


def test_the_event_list_shows_every_known_type_with_its_source(client):
    response = client.get("/admin/events", headers=AUTH)

    assert response.status_code == 200
    rows = {row["name"]: row for row in response.get_json()["events"]}
    assert set(rows) == set(CATALOG)
    assert sum(row["enabled"] for row in rows.values()) == 20
    assert rows["email_opened"]["source"] == "default"


def test_a_type_turned_off_through_the_api_is_then_ignored_and_null_turns_it_back(client):
    off = client.put(
        "/admin/events", json={"events": {"email_opened": False}, "by": "alice"}, headers=AUTH
    )
    ignored = send(client, webhook("email", "opened"))
    back = client.put("/admin/events", json={"events": {"email_opened": None}}, headers=AUTH)
    queued = send(client, webhook("email", "opened"))

    assert off.status_code == 200
    row = {r["name"]: r for r in off.get_json()["events"]}["email_opened"]
    assert (row["enabled"], row["source"], row["changed_by"]) == (False, "override", "alice")
    assert ignored["status"] == "ignored"
    assert back.status_code == 200
    assert {r["name"]: r for r in back.get_json()["events"]}["email_opened"]["source"] == (
        "default"
    )
    assert queued["status"] == "queued"


def test_a_flat_mapping_of_names_is_accepted_too(client, app):
    response = client.put("/admin/events", json={"email_drafted": True}, headers=AUTH)

    assert response.status_code == 200
    assert services(app).toggles.get("email_drafted").enabled is True


def test_a_malformed_type_is_refused_400_and_no_other_change_is_made(client, app):
    response = client.put(
        "/admin/events",
        json={"events": {"email_opened": False, "Email Teleported": True}},
        headers=AUTH,
    )

    assert response.status_code == 400
    assert "Email Teleported" in response.get_json()["details"]
    assert services(app).toggles.get("email_opened").override is None


@pytest.mark.parametrize(
    "body", [{"events": {"email_opened": "no"}}, {"events": ["email_opened"]}, [1, 2]],
    ids=["string-value", "list-of-names", "json-list"],
)
def test_a_malformed_change_is_refused_400(client, app, body):
    response = client.put("/admin/events", json=body, headers=AUTH)

    assert response.status_code == 400
    assert set(response.get_json()) == {"error", "details"}
    assert services(app).toggles.get("email_opened").override is None


# -- queue and dead letters ------------------------------------------------------------


def test_the_queue_shows_length_pending_oldest_age_and_dead_letters(client, app, redis):
    empty = client.get("/admin/queue", headers=AUTH).get_json()
    send(client, webhook("email", "opened"))
    send(client, webhook("email", "clicked"))
    send(client, body=b"{not json")
    relay = services(app)
    services(app).build_worker().consumer.ensure_groups()
    redis.xreadgroup(CONSUMER_GROUP, "some-worker", dict.fromkeys(relay.keys.queues(), ">"),
                     count=1)

    response = client.get("/admin/queue", headers=AUTH)

    nothing = {"length": 0, "pending": 0, "dead_letters": 0, "oldest_age_seconds": None}
    assert empty == {**nothing, "directions": {"to_mparticle": nothing}}
    state = response.get_json()
    assert (state["length"], state["dead_letters"]) == (2, 1)
    assert state["pending"] == 1  # one person's events share one shard; one was read
    assert state["oldest_age_seconds"] >= 0
    # The top level is Customer.io → mParticle's, as before; mParticle's route is off.
    assert state["directions"] == {"to_mparticle": {
        name: value for name, value in state.items() if name != "directions"}}


def test_the_queue_shows_each_direction_when_mparticle_to_customerio_is_on(both_directions,
                                                                          redis):
    client = both_directions.test_client()
    send(client, webhook("email", "opened"))
    post_mparticle(client, mparticle_batch(custom_event("Played"), customer_id="p1"))
    post_mparticle(client, mparticle_batch(custom_event("Liked"), customer_id="p2"))
    quarantine_in_to_customerio(client)
    relay = services(both_directions)
    relay.build_customerio_worker().consumer.ensure_groups()
    redis.xreadgroup(CONSUMER_GROUP, "some-worker",
                     dict.fromkeys(relay.customerio_keys.queues(), ">"), count=1)

    state = client.get("/admin/queue", headers=AUTH).get_json()

    to_mparticle, to_customerio = state["directions"]["to_mparticle"], state[
        "directions"]["to_customerio"]
    assert set(state) == {"length", "pending", "dead_letters", "oldest_age_seconds",
                          "directions"}
    assert {name: state[name] for name in to_mparticle} == to_mparticle
    assert (to_mparticle["length"], to_mparticle["pending"], to_mparticle["dead_letters"]) == (
        1, 0, 0)
    assert (to_customerio["length"], to_customerio["dead_letters"]) == (2, 1)
    assert to_customerio["pending"] >= 1  # read from each shard that holds a batch
    assert to_customerio["oldest_age_seconds"] >= 0


def test_dead_letters_are_listed_newest_first_with_reason_and_raw_body(client, app):
    quarantined = send(client, body=b'{"event_id": 1}')
    payload = dead_letter_an_event(app, client)

    response = client.get("/admin/dead-letters", headers=AUTH)

    assert response.status_code == 200
    newest, oldest = response.get_json()["dead_letters"]
    assert newest["event_id"] == payload["event_id"]
    assert newest["reason"] == "no customer_id or email identifies the person"
    assert oldest["id"] == quarantined["dead_letter_id"]
    assert oldest["kind"] == "quarantined"
    assert oldest["body"] == '{"event_id": 1}'
    assert "event_id" in oldest["details"]
    assert newest["direction"] == oldest["direction"] == "to_mparticle"


def test_the_dead_letters_of_mparticle_to_customerio_are_listed_with_direction(
    both_directions
):
    client = both_directions.test_client()
    customerio_letter = quarantine_in_to_customerio(client)
    send(client, body=b'{"event_id": 1}')

    default = client.get("/admin/dead-letters", headers=AUTH).get_json()["dead_letters"]
    to_mparticle = client.get("/admin/dead-letters", query_string={"direction": "to_mparticle"},
                              headers=AUTH).get_json()["dead_letters"]
    response = client.get("/admin/dead-letters", query_string={"direction": "to_customerio"},
                          headers=AUTH)

    assert response.status_code == 200
    (letter,) = response.get_json()["dead_letters"]
    assert letter["id"] == customerio_letter
    assert letter["direction"] == "to_customerio"
    assert (letter["kind"], letter["reason"], letter["body"]) == (
        "quarantined", "body is not JSON", "{not json")
    assert "_body" in letter["details"]
    assert default == to_mparticle
    assert [(item["body"], item["direction"]) for item in default] == [
        ('{"event_id": 1}', "to_mparticle")]


def test_the_dead_letters_of_mparticle_to_customerio_are_read_even_once_it_is_off(
    client, app, redis
):
    letter_id = redis.xadd(services(app).customerio_keys.dead_letters,
                           {"kind": "quarantined", "reason": "left over", "body": "{}"})

    response = client.get("/admin/dead-letters?direction=to_customerio", headers=AUTH)

    assert [(letter["id"], letter["direction"]) for letter in
            response.get_json()["dead_letters"]] == [(letter_id, "to_customerio")]
    assert "to_customerio" not in client.get("/admin/queue", headers=AUTH).get_json()[
        "directions"]


@pytest.mark.parametrize("direction", ["to_nowhere", "", "TO_MPARTICLE", "both"])
def test_dead_letters_of_an_unknown_direction_are_refused_400(client, direction):
    response = client.get("/admin/dead-letters", query_string={"direction": direction},
                          headers=AUTH)

    assert response.status_code == 400
    body = response.get_json()
    assert set(body) == {"error", "details"}
    assert body["error"] == "invalid request"
    assert "to_mparticle" in body["details"]["direction"][0]


def test_replaying_a_dead_letter_by_id_queues_it_again_and_removes_the_letter(client, app):
    dead_letter_an_event(app, client)
    (letter,) = client.get("/admin/dead-letters", headers=AUTH).get_json()["dead_letters"]

    response = client.post(
        "/admin/dead-letters/replay", json={"ids": [letter["id"]]}, headers=AUTH
    )

    assert response.status_code == 200
    assert response.get_json() == {"replayed": [letter["id"]], "already_replayed": [],
                                   "not_found": [], "still_invalid": {}}
    assert queue_length(app) == 1
    assert client.get("/admin/dead-letters", headers=AUTH).get_json()["dead_letters"] == []


def test_a_replay_takes_a_letter_of_each_direction_back_to_its_own_queue(both_directions,
                                                                         customerio):
    client = both_directions.test_client()
    dead_letter_an_event(both_directions, client)
    customerio_letter, _ = refused_by_customerio(both_directions, customerio)
    letters = {direction: [letter["id"] for letter in client.get(
        "/admin/dead-letters", query_string={"direction": direction}, headers=AUTH,
    ).get_json()["dead_letters"]] for direction in ("to_mparticle", "to_customerio")}
    (mparticle_letter,) = letters["to_mparticle"]
    assert letters["to_customerio"] == [customerio_letter]

    response = client.post("/admin/dead-letters/replay",
                           json={"ids": [mparticle_letter, customerio_letter]}, headers=AUTH)

    assert response.status_code == 200
    assert response.get_json() == {"replayed": [mparticle_letter, customerio_letter],
                                   "already_replayed": [], "not_found": [],
                                   "still_invalid": {}}
    assert queue_length(both_directions) == 1
    assert customerio_queue_length(both_directions) == 1
    state = client.get("/admin/queue", headers=AUTH).get_json()
    assert [state["directions"][name]["dead_letters"] for name in state["directions"]] == [0, 0]
    again = client.post("/admin/dead-letters/replay",
                        json={"ids": [customerio_letter, "1-0"]}, headers=AUTH).get_json()
    assert again == {"replayed": [], "already_replayed": [customerio_letter],
                     "not_found": ["1-0"], "still_invalid": {}}


def test_replaying_all_keeps_the_letters_of_either_direction_that_are_still_unusable(
    both_directions, customerio
):
    client = both_directions.test_client()
    mparticle_letter = send(client, body=b"{not json")["dead_letter_id"]
    quarantined = quarantine_in_to_customerio(client)
    refused, _ = refused_by_customerio(both_directions, customerio)

    report = client.post("/admin/dead-letters/replay", json={"all": True},
                         headers=AUTH).get_json()

    assert report["replayed"] == [refused]
    assert set(report["still_invalid"]) == {mparticle_letter, quarantined}
    assert customerio_queue_length(both_directions) == 1
    assert [letter["id"] for letter in client.get(
        "/admin/dead-letters?direction=to_customerio", headers=AUTH).get_json()[
        "dead_letters"]] == [quarantined]


def test_replaying_a_letter_again_says_it_was_replayed_already_and_queues_nothing(client, app):
    dead_letter_an_event(app, client)
    (letter,) = client.get("/admin/dead-letters", headers=AUTH).get_json()["dead_letters"]
    client.post("/admin/dead-letters/replay", json={"ids": [letter["id"]]}, headers=AUTH)

    again = client.post("/admin/dead-letters/replay", json={"ids": [letter["id"]]},
                        headers=AUTH).get_json()

    assert (again["replayed"], again["already_replayed"]) == ([], [letter["id"]])
    assert queue_length(app) == 1


def test_replaying_all_keeps_the_letters_that_are_still_not_webhooks(client, app):
    dead_letter_an_event(app, client)
    quarantined = send(client, body=b"{not json")

    report = client.post("/admin/dead-letters/replay", json={"all": True}, headers=AUTH)

    body = report.get_json()
    assert len(body["replayed"]) == 1
    assert list(body["still_invalid"]) == [quarantined["dead_letter_id"]]
    assert queue_length(app) == 1
    letters = client.get("/admin/dead-letters", headers=AUTH).get_json()["dead_letters"]
    assert [letter["id"] for letter in letters] == [quarantined["dead_letter_id"]]


def test_a_dead_letter_written_by_hand_in_bytes_that_are_not_utf8_is_shown_and_kept(
    client, app, redis
):
    payload = webhook("sms", "delivered", customer_id=None, email=None)
    body = encode(payload).replace(b'"delivered"', b'"delivered \xff"')
    letter_id = redis.xadd(services(app).keys.dead_letters,
                           {"kind": "event", "reason": "by hand", "body": body})

    (letter,) = client.get("/admin/dead-letters", headers=AUTH).get_json()["dead_letters"]
    report = client.post("/admin/dead-letters/replay", json={"all": True}, headers=AUTH)

    assert letter["body"] == body.decode("utf-8", "replace")  # no lone surrogate
    assert list(report.get_json()["still_invalid"]) == [letter_id]
    assert queue_length(app) == 0


@pytest.mark.parametrize("entry_id", ["1-0", "not-an-id", "1700000000000", "+"])
def test_replaying_an_id_that_is_not_a_dead_letter_reports_it_not_found(client, app, entry_id):
    dead_letter_an_event(app, client)

    response = client.post("/admin/dead-letters/replay", json={"ids": [entry_id]},
                           headers=AUTH)

    assert response.status_code == 200
    assert response.get_json()["not_found"] == [entry_id]
    assert response.get_json()["replayed"] == []
    assert queue_length(app) == 0


@pytest.mark.parametrize("body", [{}, {"ids": []}, {"all": False}, {"ids": "1-0"}])
def test_a_replay_that_names_nothing_is_refused_400(client, body):
    response = client.post("/admin/dead-letters/replay", json=body, headers=AUTH)

    assert response.status_code == 400
    assert set(response.get_json()) == {"error", "details"}


# -- event types an admin added (not in the catalog) -------------------------------------


@pytest.fixture
def relaying_app(make_settings, redis, mparticle) -> Any:
    """The app on the real Redis, its worker sending to the mParticle stand-in."""
    app = create_app(make_settings(MPARTICLE_BASE_URL=mparticle.base_url), redis_client=redis)
    yield app
    client = services(app).extras.get("mparticle")
    if client is not None:
        client.session.close()


def test_an_admin_can_turn_on_email_deferred_and_the_next_one_is_queued_and_relayed(
    relaying_app, mparticle
):
    client = relaying_app.test_client()
    before = send(client, webhook("email", "deferred", delivery_id="d-before"))

    turned_on = client.put("/admin/events", json={"events": {"email_deferred": True},
                                                  "by": "alice"}, headers=AUTH)
    payload = webhook("email", "deferred", customer_id="p-deferred", delivery_id="d-after")
    answer = send(client, payload)
    services(relaying_app).build_worker().run(once=True)

    assert (before["status"], before["reason"]) == ("ignored", "unknown event type")
    assert turned_on.status_code == 200
    assert answer == {"status": "queued", "event_id": payload["event_id"],
                      "event": "email_deferred"}
    ((batch, event),) = mparticle.accepted_events()
    assert batch["user_identities"]["customer_id"] == "p-deferred"
    assert event["data"]["event_name"] == "email_deferred"
    assert event["data"]["custom_attributes"]["source_message_id"] == payload["event_id"]
    story = client.get(f"/admin/dedup/{payload['event_id']}", headers=AUTH).get_json()
    assert story["status"] == "relayed"


def test_the_list_shows_a_type_an_admin_added_with_known_false(client):
    response = client.put("/admin/events", json={"email_deferred": True}, headers=AUTH)
    listed = client.get("/admin/events", headers=AUTH)

    assert response.status_code == 200
    for answer in (response, listed):
        rows = {row["name"]: row for row in answer.get_json()["events"]}
        assert set(rows) == {*CATALOG, "email_deferred"}
        assert {name for name, row in rows.items() if not row["known"]} == {"email_deferred"}
        added = rows["email_deferred"]
        assert (added["enabled"], added["default"], added["override"], added["source"],
                added["changed_by"]) == (True, False, True, "override", "admin-api")


def test_a_type_the_catalog_does_not_list_is_listed_only_once_an_admin_changed_it(client):
    before = client.get("/admin/events", headers=AUTH).get_json()["events"]
    reset = client.put("/admin/events", json={"events": {"email_deferred": None}, "by": "bob"},
                       headers=AUTH).get_json()["events"]

    assert "email_deferred" not in {row["name"] for row in before}
    row = {r["name"]: r for r in reset}["email_deferred"]  # reset: off, from its default
    assert (row["enabled"], row["default"], row["override"], row["source"], row["known"],
            row["changed_by"]) == (False, False, None, "default", False, "bob")


def test_an_added_type_turned_off_again_is_ignored_and_null_leaves_it_off(client):
    client.put("/admin/events", json={"email_deferred": True}, headers=AUTH)
    assert send(client, webhook("email", "deferred"))["status"] == "queued"

    off = client.put("/admin/events", json={"email_deferred": False}, headers=AUTH)
    ignored = send(client, webhook("email", "deferred", delivery_id="d-off"))
    back = client.put("/admin/events", json={"email_deferred": None}, headers=AUTH)
    still_ignored = send(client, webhook("email", "deferred", delivery_id="d-reset"))

    off_row = {r["name"]: r for r in off.get_json()["events"]}["email_deferred"]
    back_row = {r["name"]: r for r in back.get_json()["events"]}["email_deferred"]
    assert (off_row["enabled"], off_row["source"], off_row["known"]) == (False, "override", False)
    assert (back_row["enabled"], back_row["source"], back_row["known"]) == (False, "default", False)
    for answer in (ignored, still_ignored):
        assert (answer["status"], answer["reason"]) == ("ignored", "unknown event type")


@pytest.mark.parametrize(
    "name", ["email", "Email_Deferred", "email__deferred", "email-deferred", "email_2fa",
             "_email_deferred", "email_" + "d" * 60],
)
def test_a_malformed_event_type_name_is_refused_400_and_nothing_is_written(client, redis, name):
    answer = client.put("/admin/events", json={"events": {name: True}}, headers=AUTH)

    assert answer.status_code == 400
    body = answer.get_json()
    assert set(body) == {"error", "details"}
    assert body["error"] == "malformed event type"
    assert "not a well-formed event type" in body["details"][name][0]
    assert redis.keys("*toggles*") == []
