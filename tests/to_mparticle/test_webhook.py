"""POST /webhooks/customerio through the Flask test client, on the real Redis (CONTRACT §3)."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis as redis_lib
from flask import Flask
from redis.backoff import NoBackoff
from redis.retry import Retry

from app import create_app
from app.services import REDIS_DECODING, services
from app.store import marks, queue_entry
from tests.helpers.webhooks import encode, signed_headers, webhook

URL = "/webhooks/customerio"


def post(client: Any, payload: Any = None, *, body: bytes | None = None, **sign: Any) -> Any:
    """POST a payload (or raw bytes) signed as Customer.io would sign it."""
    body = encode(payload) if body is None else body
    return client.post(URL, data=body, headers=signed_headers(body, **sign))


def queue_entries(app: Flask) -> list[dict[str, str]]:
    """The queued entries, each as {"b": its JSON body} however it is stored."""
    relay = services(app)
    return [
        {"b": queue_entry.unpack(fields)}
        for queue in relay.keys.queues() for _, fields in relay.redis.xrange(queue)
    ]


def dead_letters(app: Flask) -> list[dict[str, str]]:
    relay = services(app)
    return [fields for _, fields in relay.redis.xrange(relay.keys.dead_letters)]


@pytest.fixture
def app_with(
    make_settings: Callable[..., Any], redis: redis_lib.Redis
) -> Callable[..., Flask]:
    def build(sections: dict[str, dict[str, Any]] | None = None, **env: str | None) -> Flask:
        return create_app(make_settings(sections, **env), redis_client=redis)

    return build


def test_a_signed_event_is_queued_and_answered_202_with_its_event_id(client, app):
    payload = webhook("email", "opened")

    response = post(client, payload)

    assert response.status_code == 202
    assert response.get_json() == {
        "status": "queued", "event_id": payload["event_id"], "event": "email_opened"
    }
    assert [json.loads(entry["b"]) for entry in queue_entries(app)] == [payload]


@pytest.mark.parametrize(
    ("headers_for", "why"),
    [
        (lambda body: {"Content-Type": "application/json"}, "X-CIO-Timestamp"),
        (lambda body: signed_headers(body, key="not-our-key"), "does not match"),
        (lambda body: signed_headers(body, timestamp=int(time.time()) - 1000), "tolerance"),
        (lambda body: signed_headers(body, timestamp=int(time.time()) + 1000), "tolerance"),
        (lambda body: signed_headers(b"another body"), "does not match"),
        (
            lambda body: {**signed_headers(body), "X-CIO-Signature": ""},
            "X-CIO-Signature",
        ),
    ],
    ids=["unsigned", "wrong-key", "stale", "future", "other-body", "no-signature"],
)
def test_a_request_not_signed_by_customerio_is_refused_401_and_nothing_is_written(
    client, redis, headers_for, why
):
    body = encode(webhook())

    response = client.post(URL, data=body, headers=headers_for(body))

    assert response.status_code == 401
    assert response.is_json
    assert response.get_json()["error"] == "invalid signature"
    assert why in response.get_json()["details"]
    assert redis.dbsize() == 0


def test_a_request_signed_with_the_other_key_during_a_rotation_is_queued(client, app):
    response = post(client, webhook(), key="old-rotated-key")

    assert response.status_code == 202
    assert len(queue_entries(app)) == 1


def test_a_second_copy_of_an_event_is_answered_200_duplicate_and_not_queued_again(client, app):
    payload = webhook()
    post(client, payload)

    response = post(client, payload)

    assert response.status_code == 200
    assert response.get_json()["status"] == "duplicate"
    assert len(queue_entries(app)) == 1


def test_a_second_open_of_a_delivery_is_answered_200_suppressed(client, app):
    first = webhook("email", "opened", delivery_id="delivery-7")
    second = webhook("email", "opened", delivery_id="delivery-7")
    post(client, first)

    response = post(client, second)

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "suppressed"
    assert body["first_event_id"] == first["event_id"]
    assert len(queue_entries(app)) == 1


def only_a_story_was_written(redis: redis_lib.Redis, app: Flask, reason: str) -> None:
    """Nothing queued: the one key written holds the event's story, saying why, with a TTL."""
    assert queue_entries(app) == []
    (key,) = redis.keys("*")
    (story,) = redis.hvals(key)
    assert marks.unpack(story)["status"] == "ignored"
    assert marks.unpack(story)["reason"] == reason
    assert redis.ttl(key) > 0


def test_a_type_turned_off_in_the_settings_file_is_ignored_and_only_its_story_is_written(
    app_with, redis
):
    app = app_with({"events": {"email_opened": False}})

    response = post(app.test_client(), webhook("email", "opened"))

    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"
    assert response.get_json()["reason"] == "event type turned off"
    only_a_story_was_written(redis, app, "event type turned off")


def test_a_type_turned_off_by_an_admin_override_is_ignored_and_not_queued(client, app):
    services(app).toggles.set("email_clicked", False, actor="test")

    response = post(client, webhook("email", "clicked"))

    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"
    assert response.get_json()["event"] == "email_clicked"
    assert queue_entries(app) == []


def test_a_known_type_that_is_off_by_default_is_ignored(client, app):
    response = post(client, webhook("email", "drafted"))

    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"
    assert queue_entries(app) == []


def test_an_unknown_type_is_ignored_rather_than_refused(client, app, redis):
    response = post(client, webhook("email", "teleported"))

    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"
    assert response.get_json()["reason"] == "unknown event type"
    only_a_story_was_written(redis, app, "unknown event type")


def _without(field: str) -> bytes:
    payload = webhook()
    del payload[field]
    return encode(payload)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"event_id": "01E4", "object_type": "email"', "_body"),
        (b"\xff\xfe not text", "_body"),
        (b"NaN", "_body"),
        (encode([webhook()]), "_schema"),
        (_without("event_id"), "event_id"),
        (_without("data"), "data"),
        (encode({**webhook(), "timestamp": "1700000000"}), "timestamp"),
        (encode({**webhook(), "data": ["not", "an", "object"]}), "data"),
    ],
    ids=["truncated-json", "not-utf8", "nan", "json-list", "no-event-id", "no-data",
         "timestamp-string", "data-list"],
)
def test_a_signed_but_unusable_payload_is_quarantined_202_naming_the_field(
    client, app, body, field
):
    response = post(client, body=body)

    assert response.status_code == 202
    answer = response.get_json()
    assert answer["status"] == "quarantined"
    assert field in answer["details"]
    assert answer["details"][field]
    letters = dead_letters(app)
    assert len(letters) == 1
    assert letters[0]["kind"] == "quarantined"
    assert letters[0]["reason"] == answer["reason"]
    assert letters[0]["body"] == body.decode("utf-8", "replace")
    assert queue_entries(app) == []


def test_a_quarantined_payload_that_names_an_event_id_leaves_a_story_pointing_at_it(
    client, redis
):
    response = post(client, body=b'{"event_id": "01QUARANTINED", "timestamp": "soon"}')

    answer = response.get_json()
    assert answer["status"] == "quarantined"
    (key,) = [key for key in redis.keys("*:marks:*") if redis.hexists(key, "01QUARANTINED")]
    story = marks.unpack(redis.hget(key, "01QUARANTINED"))
    assert story["status"] == "quarantined"
    assert story["dead_letter_id"] == answer["dead_letter_id"]
    assert redis.ttl(key) > 0


def test_a_body_over_max_body_bytes_is_refused_413_as_json(app_with, redis):
    app = app_with({"webhook": {"max_body_bytes": 1024}})
    payload = webhook(subject="x" * 2000)

    response = post(app.test_client(), payload)

    assert response.status_code == 413
    assert set(response.get_json()) == {"error", "details"}
    assert redis.dbsize() == 0


def _post_chunked(app: Flask, body: bytes) -> Any:
    """POST without Content-Length, as a streamed (chunked) request reaches the app.

    gunicorn sets ``wsgi.input_terminated`` for such a request; without it Werkzeug
    would hand the app an empty body.
    """
    headers = {**signed_headers(body), "Transfer-Encoding": "chunked"}
    return app.test_client().post(
        URL, input_stream=io.BytesIO(body), headers=headers,
        environ_base={"wsgi.input_terminated": True},
    )


def test_a_chunked_body_over_max_body_bytes_is_refused_413_not_truncated(app_with, redis):
    app = app_with({"webhook": {"max_body_bytes": 1024}})
    body = encode(webhook(subject="x" * 2000))

    response = _post_chunked(app, body)

    assert response.status_code == 413
    assert set(response.get_json()) == {"error", "details"}
    assert redis.dbsize() == 0


def test_a_chunked_body_of_exactly_max_body_bytes_is_queued(make_settings, redis):
    body = encode(webhook())
    app = create_app(
        make_settings({"webhook": {"max_body_bytes": len(body)}}), redis_client=redis
    )

    response = _post_chunked(app, body)

    assert response.status_code == 202
    assert [entry["b"] for entry in queue_entries(app)] == [body.decode()]


def test_a_get_is_answered_405_as_json(client):
    response = client.get(URL)

    assert response.status_code == 405
    assert set(response.get_json()) == {"error", "details"}
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def test_every_method_but_post_is_answered_405_and_stores_nothing(client, redis, method):
    response = client.open(URL, method=method, data=encode(webhook()))

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    if method == "HEAD":
        assert response.data == b""
    else:
        assert response.get_json()["error"] == "method not allowed"
    assert redis.dbsize() == 0


def test_other_routes_are_still_served_by_flask_beside_the_webhook(client):
    assert client.get("/healthz").status_code == 200
    assert client.get(URL + "/extra").status_code == 404


def test_a_webhook_is_answered_503_when_redis_cannot_be_reached(make_settings):
    # Nothing listens on port 1. No retries: redis-py's default retries only slow the test.
    unreachable = redis_lib.Redis(
        port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    app = create_app(make_settings(), redis_client=unreachable)

    response = post(app.test_client(), webhook())

    assert response.status_code == 503
    assert set(response.get_json()) == {"error", "details"}


def test_a_malformed_payload_is_answered_503_when_redis_cannot_keep_it(make_settings):
    unreachable = redis_lib.Redis(
        port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    app = create_app(make_settings(), redis_client=unreachable)

    response = post(app.test_client(), body=b"{not json")

    assert response.status_code == 503


def test_an_unsigned_event_is_queued_when_signatures_are_not_required(app_with):
    app = app_with({"webhook": {"require_signature": False}})
    payload = webhook()

    response = app.test_client().post(URL, data=encode(payload),
                                      headers={"Content-Type": "application/json"})

    assert response.status_code == 202
    assert len(queue_entries(app)) == 1


def test_message_content_and_headers_of_a_sent_event_are_not_kept_in_the_queue(client, app):
    payload = webhook(
        "email", "sent",
        content="<html><body>" + "a whole email " * 200 + "</body></html>",
        headers={"X-Mailer": "customer.io", "Reply-To": "support@example.com"},
    )

    response = post(client, payload)

    assert response.status_code == 202
    (entry,) = queue_entries(app)
    queued = json.loads(entry["b"])
    assert "content" not in queued["data"]
    assert "headers" not in queued["data"]
    assert queued["data"]["subject"] == payload["data"]["subject"]
    assert queued["event_id"] == payload["event_id"]



# -- one JSON log line per request, with a request id -------------------------------


@pytest.fixture
def log_lines() -> Any:
    """The app's log records as the JSON lines production writes (the app's logger
    does not propagate to the root, so caplog alone would not see them)."""
    from app.logs import JsonLineFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLineFormatter())
    app_logger = logging.getLogger("app")
    level = app_logger.level
    app_logger.addHandler(handler)
    app_logger.setLevel(logging.INFO)  # production's level; the test settings say WARNING
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        app_logger.removeHandler(handler)
        app_logger.setLevel(level)


def _webhook_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line["logger"] == "app.to_mparticle.webhook"]


def test_each_webhook_request_logs_one_json_line_with_its_outcome_status_and_latency(
    client, log_lines
):
    payload = webhook()
    body = encode(payload)
    headers = signed_headers(body)

    post(client, payload)
    post(client, payload)
    client.post(URL, data=body, headers={**headers, "X-CIO-Signature": "0" * 64})
    post(client, body=b"[1, 2]")

    lines = _webhook_lines(log_lines())
    assert [(line["outcome"], line["status"]) for line in lines] == [
        ("queued", 202), ("duplicate", 200), ("refused", 401), ("quarantined", 202),
    ]
    assert [line.get("reason") for line in lines][2:] == [
        "signature", "not a usable reporting webhook"]
    for line in lines[:2]:
        assert line["event_id"] == payload["event_id"]
        assert line["event"] == "email_opened"
    for line in lines:
        assert line["request_id"]
        assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
        assert {"time", "level", "message"} <= set(line)
    assert len({line["request_id"] for line in lines}) == len(lines)


def test_the_signature_and_signing_keys_are_never_logged(client, log_lines, settings):
    body = encode(webhook())
    headers = signed_headers(body)

    client.post(URL, data=body, headers=headers)
    client.post(URL, data=body, headers={**headers, "X-CIO-Signature": "f" * 64})

    text = json.dumps(log_lines())
    assert headers["X-CIO-Signature"] not in text
    assert "f" * 64 not in text
    for key in settings.secrets.signing_keys:
        assert key.decode() not in text


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("0f8fad5b-d9cb-469f-a165-70867728950e", True),
        ("heroku.router:abc_123", True),
        ("", False),
        ("has spaces", False),
        ('quote"and{brace}', False),
        ("x" * 129, False),
    ],
)
def test_a_sane_x_request_id_is_kept_and_echoed_and_anything_else_replaced(
    client, log_lines, sent, kept
):
    body = encode(webhook())
    response = client.post(URL, data=body, headers={**signed_headers(body), "X-Request-Id": sent})

    echoed = response.headers["X-Request-Id"]
    assert (echoed == sent) is kept
    if not kept:
        assert len(echoed) == 12 and echoed.isalnum()
    (line,) = _webhook_lines(log_lines())
    assert line["request_id"] == echoed


def test_a_request_without_x_request_id_gets_a_fresh_one_per_request(client):
    first = client.get("/healthz").headers["X-Request-Id"]
    second = client.get("/healthz").headers["X-Request-Id"]

    assert first != second


@pytest.mark.parametrize("repeat", ["queued", "duplicate", "suppressed"])
def test_a_webhook_costs_one_redis_round_trip(make_settings, proxy, repeat):
    """Counted where the commands leave the process: by a proxy in front of Redis."""
    client = redis_lib.Redis.from_url(proxy.url, **REDIS_DECODING)

    def sends() -> int:
        return proxy.sends

    app = create_app(make_settings({"redis": {"toggle_refresh_seconds": 3600}}),
                     redis_client=client)
    test_client = app.test_client()
    first = webhook("email", "opened")
    post(test_client, first)  # loads the toggles and the script once per process
    later = {
        "queued": webhook("email", "opened", delivery_id="another-delivery"),
        "duplicate": first,
        "suppressed": webhook("email", "opened"),  # the same delivery, a new event_id
    }[repeat]

    before = sends()
    response = post(test_client, later)

    assert response.get_json()["status"] == repeat
    assert sends() - before == 1


def _rejected(client: Any, reason: str) -> float:
    series = f'cio_relay_webhooks_rejected_total{{direction="to_mparticle",reason="{reason}"}}'
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(series):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_stale_timestamp_is_counted_and_logged_apart_from_a_wrong_signature(
    client, log_lines
):
    body = encode(webhook())
    stale_stamp = int(time.time()) - 3600  # signed by Customer.io's key an hour ago
    before = (_rejected(client, "stale_timestamp"), _rejected(client, "signature"))

    stale = client.post(URL, data=body, headers=signed_headers(body, timestamp=stale_stamp))
    forged = client.post(URL, data=body, headers={**signed_headers(body),
                                                  "X-CIO-Signature": "0" * 64})

    assert (stale.status_code, forged.status_code) == (401, 401)
    after = (_rejected(client, "stale_timestamp"), _rejected(client, "signature"))
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    stale_line, forged_line = _webhook_lines(log_lines())
    assert stale_line["reason"] == "stale_timestamp"
    assert 3599 <= stale_line["timestamp_age_seconds"] <= 3700
    assert forged_line["reason"] == "signature" and "timestamp_age_seconds" not in forged_line


# -- event types an admin added (not in the catalog) -------------------------------------


def test_a_type_the_catalog_does_not_list_is_ignored_as_unknown_by_default(client, app, redis):
    response = post(client, webhook("email", "deferred"))

    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"
    assert response.get_json()["reason"] == "unknown event type"
    only_a_story_was_written(redis, app, "unknown event type")


def test_a_type_the_catalog_does_not_list_is_queued_once_an_admin_turned_it_on(client, app):
    services(app).toggles.set("email_deferred", True, actor="alice")
    payload = webhook("email", "deferred")

    response = post(client, payload)

    assert response.status_code == 202
    assert response.get_json() == {
        "status": "queued", "event_id": payload["event_id"], "event": "email_deferred"
    }
    assert [json.loads(entry["b"]) for entry in queue_entries(app)] == [payload]


def test_an_added_type_turned_off_again_is_ignored_as_unknown(client, app):
    toggles = services(app).toggles
    toggles.set("email_deferred", True, actor="alice")
    assert post(client, webhook("email", "deferred")).status_code == 202

    toggles.set("email_deferred", False, actor="alice")
    turned_off = post(client, webhook("email", "deferred", delivery_id="d-off")).get_json()
    toggles.reset("email_deferred", actor="alice")
    reset = post(client, webhook("email", "deferred", delivery_id="d-reset")).get_json()

    assert (turned_off["status"], turned_off["reason"]) == ("ignored", "unknown event type")
    assert (reset["status"], reset["reason"]) == ("ignored", "unknown event type")
    assert len(queue_entries(app)) == 1


def test_turning_on_one_unknown_type_leaves_the_others_ignored(client, app):
    services(app).toggles.set("email_deferred", True, actor="alice")

    answer = post(client, webhook("email", "teleported")).get_json()

    assert (answer["status"], answer["reason"]) == ("ignored", "unknown event type")


def test_a_webhook_of_an_added_type_costs_one_redis_round_trip(make_settings, proxy):
    """The override of a type the catalog does not list comes through the cached read."""
    client = redis_lib.Redis.from_url(proxy.url, **REDIS_DECODING)
    app = create_app(make_settings({"redis": {"toggle_refresh_seconds": 3600}}),
                     redis_client=client)
    services(app).toggles.set("email_deferred", True, actor="alice")
    test_client = app.test_client()
    post(test_client, webhook("email", "deferred"))  # loads the toggles and the script

    before = proxy.sends
    response = post(test_client, webhook("email", "deferred", delivery_id="another-delivery"))

    assert response.get_json()["status"] == "queued"
    assert proxy.sends - before == 1


@pytest.mark.parametrize(
    ("style", "event_name", "known_name"),
    [("customerio", "email_deferred", "email_bounced"),
     ("mparticle_feed", "Email Deferred", "Email Bounced")],
)
def test_an_added_type_is_relayed_named_after_itself_and_built_as_a_known_one(
    make_settings, redis, mparticle, style, event_name, known_name
):
    app = create_app(make_settings({"mparticle": {"event_names": style}},
                                   MPARTICLE_BASE_URL=mparticle.base_url), redis_client=redis)
    services(app).toggles.set("email_deferred", True, actor="alice")
    same = {"customer_id": "p-deferred", "timestamp": 1_700_000_000,
            "failure_message": "mailbox busy, try later"}
    known, added = webhook("email", "bounced", **same), webhook("email", "deferred", **same)
    for payload in (known, added):
        assert post(app.test_client(), payload).status_code == 202

    services(app).build_worker().run(once=True)
    services(app).extras["mparticle"].session.close()

    (batch,) = mparticle.accepted_batches  # one person: one batch, both events in it
    assert batch["user_identities"]["customer_id"] == "p-deferred"
    bounced, deferred = batch["events"]
    assert (bounced["data"]["event_name"], deferred["data"]["event_name"]) == (
        known_name, event_name
    )

    def apart_from_name_and_id(event: dict[str, Any]) -> dict[str, Any]:
        data = {**event["data"], "event_name": None, "source_message_id": None}
        data["custom_attributes"] = {**data["custom_attributes"], "source_message_id": None}
        return {**event, "data": data}

    assert apart_from_name_and_id(deferred) == apart_from_name_and_id(bounced)
    assert services(app).find_event(added["event_id"])["status"] == "relayed"


def test_an_added_types_first_occurrence_flag_is_shown_for_its_delivery(client, app):
    services(app).toggles.set("email_deferred", True, actor="alice")
    payload = webhook("email", "deferred", delivery_id="delivery-deferred")
    post(client, payload)

    flags = services(app).first_flags("delivery-deferred")

    assert flags["flags"] == {"email_deferred": payload["event_id"]}
