"""POST /webhooks/mparticle against the real Redis: what is answered, what is queued."""

from __future__ import annotations

import json
from typing import Any

import redis as redis_lib

from app import create_app
from app.extension import services
from app.services import REDIS_DECODING
from tests.to_customerio.conftest import AUTH, custom_event, mparticle_batch, screen_view

URL = "/webhooks/mparticle"


def post(client: Any, payload: Any = None, *, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> Any:
    data = body if body is not None else json.dumps(payload).encode()
    return client.post(URL, data=data, headers=AUTH if headers is None else headers,
                       content_type="application/json")


def queued(app: Any) -> list[dict[str, Any]]:
    """Every batch queued for Customer.io, as the worker will read it."""
    relay = services(app)
    return [json.loads(fields["b"]) for queue in relay.customerio_keys.queues()
            for _id, fields in relay.redis.xrange(queue)]


def letters(app: Any) -> list[dict[str, str]]:
    relay = services(app)
    return [fields for _id, fields in relay.redis.xrange(relay.customerio_keys.dead_letters)]


def test_the_route_is_a_404_while_mparticles_authorization_is_not_set(make_settings, redis):
    app = create_app(make_settings(), redis_client=redis)
    response = app.test_client().post(URL, json={}, headers=AUTH)
    assert response.status_code == 404
    assert response.get_json()["error"] == "not found"


def test_a_wrong_or_missing_authorization_is_refused_before_the_body_is_read(app):
    client = app.test_client()
    huge = b"x" * (2 * 1024 * 1024)  # past max_body_bytes: a 413 would mean it was read

    wrong = post(client, body=huge, headers={"Authorization": "Bearer guess"})
    missing = post(client, body=b"{}", headers={})

    assert (wrong.status_code, missing.status_code) == (401, 401)
    assert set(wrong.get_json()) == {"error", "details"}
    assert queued(app) == [] and letters(app) == []


def test_every_configured_authorization_is_taken_during_a_rotation(app):
    answer = post(app.test_client(), mparticle_batch(custom_event()),
                  headers={"Authorization": "Bearer an-older-secret"})
    assert answer.status_code == 202


def test_a_method_other_than_post_is_405(app):
    for method in ("get", "put", "delete", "options"):
        response = getattr(app.test_client(), method)(URL, headers=AUTH)
        assert response.status_code == 405, method
        assert response.is_json


def test_a_body_over_max_body_bytes_is_413(make_app):
    app = make_app({"customerio": {"max_body_bytes": 2048}})
    batch = mparticle_batch(custom_event(note="x" * 3000))
    response = post(app.test_client(), batch)
    assert response.status_code == 413
    assert queued(app) == []


def test_a_batch_is_queued_with_its_forwardable_events_and_counts(app):
    session = {"event_type": "session_start", "data": {"timestamp_unixtime_ms": 1}}
    batch = mparticle_batch(custom_event(), screen_view(), session, custom_event("Liked"))

    response = post(app.test_client(), batch)

    assert response.status_code == 202
    assert response.get_json() == {"status": "queued", "queued": 3, "duplicate": 0,
                                   "ignored": 1, "quarantined": 0}
    (entry,) = queued(app)
    assert [e["event_type"] for e in entry["events"]] == ["custom_event", "screen_view",
                                                          "custom_event"]
    assert entry["mpid"] == batch["mpid"] and entry["user_identities"] == batch["user_identities"]


def test_a_retried_batch_is_a_duplicate_and_queues_nothing(app):
    client = app.test_client()
    batch = mparticle_batch(custom_event(), custom_event())
    first = post(client, batch)

    again = post(client, batch)

    assert first.status_code == 202
    assert (again.status_code, again.get_json()) == (200, {"status": "duplicate"})
    assert len(queued(app)) == 1


def test_only_the_new_events_of_a_batch_are_queued(app):
    client = app.test_client()
    old = custom_event("Old")
    post(client, mparticle_batch(old))

    response = post(client, mparticle_batch(old, custom_event("New")))

    assert response.get_json()["queued"] == 1 and response.get_json()["duplicate"] == 1
    assert [e["data"]["event_name"] for e in queued(app)[1]["events"]] == ["New"]


def test_the_same_event_twice_in_one_post_is_taken_once(app):
    event = custom_event()
    response = post(app.test_client(), mparticle_batch(event, event))
    assert response.get_json()["queued"] == 1 and response.get_json()["duplicate"] == 1
    assert len(queued(app)[0]["events"]) == 1


def test_a_batch_of_attribute_changes_is_queued_once(app):
    client = app.test_client()
    batch = mparticle_batch(user_attributes={"$FirstName": "Ada"})

    first = post(client, batch)
    again = post(client, batch)

    assert first.status_code == 202 and first.get_json()["queued"] == 0
    assert (again.status_code, again.get_json()["status"]) == (200, "duplicate")
    assert len(queued(app)) == 1


def test_a_batch_without_a_usable_identity_is_ignored(app):
    response = post(app.test_client(), mparticle_batch(custom_event(), customer_id=None))
    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"
    assert "user_id_type" in response.get_json()["reason"]
    assert queued(app) == []


def test_a_batch_of_events_that_are_not_forwarded_is_ignored(app):
    session = {"event_type": "session_end", "data": {"timestamp_unixtime_ms": 1}}
    response = post(app.test_client(), mparticle_batch(session))
    assert (response.status_code, response.get_json()["status"]) == (200, "ignored")
    assert queued(app) == []


def test_one_unusable_event_is_quarantined_on_its_own_and_the_rest_taken(app):
    broken = {"event_type": "custom_event", "data": {"custom_attributes": {}}}
    response = post(app.test_client(), mparticle_batch(custom_event(), broken, "not an event"))

    assert response.get_json() == {"status": "queued", "queued": 1, "duplicate": 0,
                                   "ignored": 0, "quarantined": 2}
    kept = letters(app)
    assert len(kept) == 2 and {letter["kind"] for letter in kept} == {"quarantined"}
    assert json.loads(kept[0]["body"])["events"] == [broken]


def test_a_body_that_is_not_a_usable_batch_is_quarantined_raw(app):
    client = app.test_client()
    for body in (b"{not json", b"[1, 2]", b'{"events": "nope"}'):
        response = post(client, body=body)
        assert response.status_code == 202
        assert response.get_json()["status"] == "quarantined"
    assert [letter["body"] for letter in letters(app)] == [
        "{not json", "[1, 2]", '{"events": "nope"}']
    assert queued(app) == []


def test_a_batch_costs_one_redis_round_trip_to_accept(make_settings, proxy, customerio):
    client = redis_lib.Redis.from_url(proxy.url, **REDIS_DECODING)
    app = create_app(make_settings(
        {"redis": {"toggle_refresh_seconds": 3600}},
        MPARTICLE_WEBHOOK_AUTHORIZATION=AUTH["Authorization"], CUSTOMERIO_SITE_ID="s",
        CUSTOMERIO_API_KEY="k", CUSTOMERIO_BASE_URL=customerio.base_url,
    ), redis_client=client)
    test_client = app.test_client()
    post(test_client, mparticle_batch(custom_event()))  # loads the script once

    before = proxy.sends
    response = post(test_client, mparticle_batch(custom_event(), custom_event(), screen_view()))

    assert response.status_code == 202
    assert proxy.sends - before == 1


def test_redis_unreachable_is_503_so_mparticle_retries(make_settings, proxy, customerio):
    client = redis_lib.Redis.from_url(proxy.url, socket_timeout=0.3, **REDIS_DECODING)
    app = create_app(make_settings(
        MPARTICLE_WEBHOOK_AUTHORIZATION=AUTH["Authorization"], CUSTOMERIO_SITE_ID="s",
        CUSTOMERIO_API_KEY="k", CUSTOMERIO_BASE_URL=customerio.base_url,
    ), redis_client=client)
    proxy.hang()

    response = post(app.test_client(), mparticle_batch(custom_event()))

    assert response.status_code == 503
    assert response.get_json()["error"] == "service unavailable"


def _series(client: Any, name: str, **labels: str) -> float:
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_this_direction_apart_from_the_other(app):
    client = app.test_client()
    before = {outcome: _series(client, "cio_relay_webhooks_total", direction="to_customerio",
                               outcome=outcome) for outcome in ("queued", "duplicate")}
    refused = _series(client, "cio_relay_webhooks_rejected_total", direction="to_customerio",
                      reason="authorization")
    other = _series(client, "cio_relay_webhooks_total", direction="to_mparticle",
                    outcome="queued")
    batch = mparticle_batch(custom_event())

    post(client, batch)
    post(client, batch)
    post(client, batch, headers={"Authorization": "Bearer guess"})

    assert _series(client, "cio_relay_webhooks_total", direction="to_customerio",
                   outcome="queued") == before["queued"] + 1
    assert _series(client, "cio_relay_webhooks_total", direction="to_customerio",
                   outcome="duplicate") == before["duplicate"] + 1
    assert _series(client, "cio_relay_webhooks_rejected_total", direction="to_customerio",
                   reason="authorization") == refused + 1
    assert _series(client, "cio_relay_webhooks_total", direction="to_mparticle",
                   outcome="queued") == other


def test_metrics_show_each_directions_queue_and_redis_up(app):
    post(app.test_client(), mparticle_batch(custom_event()))
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'cio_relay_queue_depth{direction="to_customerio"} 1.0' in text
    assert 'cio_relay_queue_depth{direction="to_mparticle"} 0.0' in text
    assert 'cio_relay_credentials_refused{direction="to_customerio"} 0.0' in text
    assert "cio_relay_redis_up 1.0" in text


def test_metrics_still_answer_while_redis_is_away(make_settings, proxy, customerio):
    client = redis_lib.Redis.from_url(proxy.url, socket_timeout=0.3, **REDIS_DECODING)
    app = create_app(make_settings(), redis_client=client)
    proxy.hang()

    response = app.test_client().get("/metrics")

    assert response.status_code == 200
    assert "cio_relay_redis_up 0.0" in response.get_data(as_text=True)
