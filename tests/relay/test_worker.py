"""RelayWorker against the real Redis and the mParticle stand-in on loopback (CONTRACT §5).

Events go in as Customer.io sends them (signed webhooks through the Flask client), the
worker is the one the app builds, and what mParticle received is read off the stand-in.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis as redis_lib
from flask import Flask

from app import create_app
from app.relay.worker import RelayWorker
from app.services import services
from app.store import queue_entry, relay_state
from app.store.dead_letters import list_dead_letters
from app.store.keys import CONSUMER_GROUP
from app.support import dead_letters as dead_letter_replay
from app.to_mparticle.client import RATE_LIMIT_HEADER, credential_id
from app.to_mparticle.mapping import source_message_id
from tests.conftest import ADMIN_TOKEN, STANDIN_KEY, STANDIN_SECRET
from tests.helpers.mparticle_standin import MParticleStandIn, Reply
from tests.helpers.stories import first_flags
from tests.helpers.webhooks import encode, signed_headers, webhook

FAST_RELAY = {
    "retry_schedule_seconds": [0.01, 0.02, 0.05],
    "claim_idle_seconds": 1,
    "auth_recheck_seconds": 0.05,
    "poll_interval_seconds": 0.01,
}
# claim_idle_seconds must outlast one request (connect + read timeout).
FAST_MPARTICLE = {"connect_timeout_seconds": 0.3, "read_timeout_seconds": 0.5}
_deliveries = itertools.count(1)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def make_app(
    make_settings: Callable[..., Any], redis: redis_lib.Redis, mparticle: MParticleStandIn
) -> Iterator[Callable[..., Flask]]:
    """Apps on the real Redis that send to the stand-in, with fast retries."""
    apps: list[Flask] = []

    def build(sections: dict[str, dict[str, Any]] | None = None) -> Flask:
        merged: dict[str, dict[str, Any]] = {
            "relay": dict(FAST_RELAY), "mparticle": dict(FAST_MPARTICLE)
        }
        for name, values in (sections or {}).items():
            merged.setdefault(name, {}).update(values)
        app = create_app(
            make_settings(merged, MPARTICLE_BASE_URL=mparticle.base_url), redis_client=redis
        )
        apps.append(app)
        return app

    yield build
    for app in apps:
        client = services(app).extras.get("mparticle")
        if client is not None:
            client.session.close()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


def event(person: str, metric: str = "opened", **data: Any) -> dict[str, Any]:
    """A webhook about one person, on its own delivery (so it is never suppressed)."""
    data.setdefault("delivery_id", f"delivery-{next(_deliveries)}")
    return webhook("email", metric, customer_id=person, email=f"{person}@example.com", **data)


def send(app: Flask, *payloads: dict[str, Any]) -> None:
    """Post signed webhooks; each must be queued."""
    client = app.test_client()
    for payload in payloads:
        body = encode(payload)
        response = client.post("/webhooks/customerio", data=body, headers=signed_headers(body))
        assert response.status_code == 202, response.get_json()


def message_ids(*payloads: dict[str, Any]) -> list[str]:
    return sorted(source_message_id(payload["event_id"]) for payload in payloads)


def queue_state(app: Flask) -> tuple[int, int]:
    """(entries in the queue streams, entries pending in the consumer group)."""
    stats = services(app).queue_stats()
    return stats["length"], stats["pending"]


def story(app: Flask, payload: dict[str, Any]) -> dict[str, Any]:
    found = services(app).find_event(payload["event_id"])  # as support reads it
    assert found is not None
    return found


def bulk_requests(mparticle: MParticleStandIn) -> list[Any]:
    return [request for request in mparticle.requests if request.body != b"[]"]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Running:
    """A worker's run() loop in a thread, as the worker process runs it."""

    def __init__(self, worker: RelayWorker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.worker.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the worker did not stop"


# -- delivery ------------------------------------------------------------------------


def test_events_of_three_people_go_out_as_three_batches_in_one_request(app, mparticle):
    payloads = [event("ann"), event("ann", "clicked"), event("bob"), event("cat"),
                event("cat", "delivered")]
    send(app, *payloads)

    services(app).build_worker().run(once=True)

    assert len(mparticle.requests) == 1
    batches = mparticle.accepted_batches
    assert sorted(batch["user_identities"]["customer_id"] for batch in batches) == [
        "ann", "bob", "cat"
    ]
    assert sorted(mparticle.source_message_ids()) == message_ids(*payloads)
    for batch in batches:
        event_ids = {e["data"]["custom_attributes"]["source_message_id"] for e in batch["events"]}
        owners = {p["data"]["customer_id"] for p in payloads if p["event_id"] in event_ids}
        assert owners == {batch["user_identities"]["customer_id"]}


def test_a_relayed_events_story_says_relayed_with_its_source_request_id(app, mparticle):
    payload = event("ann")
    send(app, payload)

    services(app).build_worker().run(once=True)

    told = story(app, payload)
    (batch,) = mparticle.accepted_batches
    assert told["status"] == "relayed"
    assert told["source_request_id"] == batch["source_request_id"]
    assert told["mparticle_status"] == 202
    assert told["where"] == "relayed to mParticle"
    assert told["attempts"] == 1


def test_relayed_stories_of_many_people_in_one_request_each_name_their_own_batch(
    app, mparticle
):
    payloads = [event(person) for person in ("ann", "bob", "cat", "dan", "eve", "fay")]
    send(app, *payloads)

    services(app).build_worker().run(once=True)

    by_person = {batch["user_identities"]["customer_id"]: batch["source_request_id"]
                 for batch in mparticle.accepted_batches}
    assert len(bulk_requests(mparticle)) == 1  # all in one request, over several shards
    for payload in payloads:
        told = story(app, payload)
        assert told["status"] == "relayed"
        assert told["source_request_id"] == by_person[payload["data"]["customer_id"]]


def test_relayed_stories_stay_short_enough_for_their_buckets_to_stay_compact(
    app, mparticle, redis
):
    payloads = [event(f"p{n}", metric) for n in range(40)
                for metric in ("sent", "delivered", "opened", "clicked")]
    send(app, *payloads)
    client = app.test_client()
    for payload in payloads[:10]:  # copies, counted in the stories
        body = encode(payload)
        copy = client.post("/webhooks/customerio", data=body, headers=signed_headers(body))
        assert copy.get_json()["status"] == "duplicate"

    services(app).build_worker().run(once=True)

    assert {story(app, p)["status"] for p in payloads} == {"relayed"}
    buckets = list(redis.scan_iter(match="cior:*:marks:*"))
    stories = [value for bucket in buckets for value in redis.hvals(bucket)]
    assert len(stories) == len(payloads)
    # Redis keeps a hash as a listpack while no value is over 64 bytes.
    assert max(len(value.encode()) for value in stories) <= 64
    assert {redis.object("encoding", bucket) for bucket in buckets} == {"listpack"}


def test_the_queue_is_empty_and_nothing_pending_once_mparticle_accepts(app, mparticle):
    send(app, event("ann"), event("bob"))
    assert queue_state(app) == (2, 0)

    services(app).build_worker().run(once=True)

    assert queue_state(app) == (0, 0)
    assert len(mparticle.source_message_ids()) == 2


def test_a_second_pass_sends_nothing_already_relayed(app, mparticle):
    send(app, event("ann"))
    worker = services(app).build_worker()
    worker.run(once=True)

    worked = worker.relay_pending()

    assert worked is False
    assert len(mparticle.requests) == 1


@pytest.mark.parametrize(
    "failure",
    [
        Reply(429, {"Retry-After": "0"}),
        Reply(429),
        Reply(503),
        Reply(500, body="internal error"),
    ],
    ids=["429-retry-after", "429-backoff", "503", "500"],
)
def test_a_refused_for_now_request_is_retried_byte_identical_until_accepted(
    app, mparticle, failure
):
    payloads = [event("ann"), event("bob")]
    send(app, *payloads)
    mparticle.script(failure)

    services(app).build_worker().run(once=True)

    first, retry = bulk_requests(mparticle)
    assert (first.status, retry.status) == (failure.status, 202)
    assert retry.body == first.body
    assert sorted(mparticle.source_message_ids()) == message_ids(*payloads)
    assert {story(app, p)["status"] for p in payloads} == {"relayed"}
    assert queue_state(app) == (0, 0)


def test_a_request_that_times_out_is_sent_again_with_the_same_source_request_id(
    make_app, mparticle
):
    app = make_app({"mparticle": {"read_timeout_seconds": 0.2}})
    payload = event("ann")
    send(app, payload)
    # mParticle takes the request but answers after the relay has given up on it.
    mparticle.script(Reply(202, delay=1.0))

    services(app).build_worker().run(once=True)

    first, retry = bulk_requests(mparticle)
    assert retry.body == first.body  # so mParticle can drop the copy by source_request_id
    ids = {batch["source_request_id"] for batch in mparticle.accepted_batches}
    assert ids == {story(app, payload)["source_request_id"]}
    assert story(app, payload)["status"] == "relayed"
    assert story(app, payload)["attempts"] == 2
    assert queue_state(app) == (0, 0)


def test_a_batch_mparticle_refuses_is_dead_lettered_and_the_others_are_delivered(
    app, mparticle
):
    good = [event(person) for person in ("ann", "bob", "cat", "dan", "eve", "fay")]
    bad = [event("mallory"), event("mallory", "clicked")]
    send(app, *good[:3], *bad, *good[3:])
    mparticle.reject_batches_where(lambda b: b["user_identities"]["customer_id"] == "mallory")

    services(app).build_worker().run(once=True)

    assert sorted(mparticle.source_message_ids()) == message_ids(*good)
    relay = services(app)
    letters = list_dead_letters(relay.redis, relay.keys)
    assert sorted(letter["event_id"] for letter in letters) == sorted(p["event_id"] for p in bad)
    for letter in letters:
        assert letter["reason"] == "mParticle refused the batch"
        assert letter["status"] == "400"
        assert "VALIDATION_ERROR" in letter["response"]
        assert "refused by the test's rule" in letter["response"]
    assert {story(app, p)["status"] for p in bad} == {"dead_lettered"}
    assert {story(app, p)["status"] for p in good} == {"relayed"}
    assert queue_state(app) == (0, 0)


def test_refused_credentials_stop_sending_keep_everything_and_resume_by_themselves(
    app, mparticle
):
    payloads = [event("ann"), event("bob"), event("cat")]
    send(app, *payloads)
    refused = Reply(401, {"Content-Type": "application/json"}, '{"errors": []}')
    mparticle.script(refused, refused)  # the first send, then the first re-check
    worker = services(app).build_worker()
    client = app.test_client()

    worker.run(once=True)

    assert queue_state(app) == (3, 3)  # nothing acked: all still pending
    assert mparticle.accepted_batches == []
    assert client.get("/readyz").status_code == 503
    with Running(worker):
        assert mparticle.wait_for_events(3, timeout=5)
        assert wait_until(lambda: queue_state(app) == (0, 0))
    assert sorted(mparticle.source_message_ids()) == message_ids(*payloads)
    assert client.get("/readyz").status_code == 200
    statuses = [request.status for request in mparticle.requests]
    assert statuses[:2] == [401, 401]


def test_a_worker_restarted_with_corrected_credentials_makes_the_relay_ready_again(
    app, make_app, mparticle
):
    send(app, event("ann"))
    mparticle.script(Reply(401))
    services(app).build_worker().run(once=True)
    client = app.test_client()
    assert client.get("/readyz").status_code == 503
    restarted = services(make_app()).build_worker()  # a new process with the corrected secret
    restarted.consumer.name = "worker-after-restart"
    later = event("bob")
    send(app, later)

    restarted.run(once=True)

    assert mparticle.source_message_ids() == message_ids(later)
    assert client.get("/readyz").status_code == 200


def test_credentials_refused_while_splitting_a_refused_request_stop_the_other_half(
    app, mparticle
):
    payloads = [event("ann"), event("bob"), event("cat"), event("dan")]
    send(app, *payloads)
    mparticle.script(Reply(400), Reply(401))  # the whole request, then its first half
    worker = services(app).build_worker()

    worker.run(once=True)

    assert [request.status for request in mparticle.requests] == [400, 401]
    assert queue_state(app) == (4, 4)
    with Running(worker):
        assert mparticle.wait_for_events(4, timeout=5)
    assert sorted(mparticle.source_message_ids()) == message_ids(*payloads)
    relay = services(app)
    assert list_dead_letters(relay.redis, relay.keys) == []


def test_an_event_too_large_for_a_batch_is_dead_lettered_and_the_rest_delivered(
    make_app, mparticle
):
    app = make_app({"relay": {"max_batch_bytes": 1024}})
    huge = event("ann", subject="s" * 2000)
    small = event("bob")
    send(app, huge, small)

    services(app).build_worker().run(once=True)

    assert mparticle.source_message_ids() == message_ids(small)
    relay = services(app)
    (letter,) = list_dead_letters(relay.redis, relay.keys)
    assert (letter["event_id"], letter["reason"]) == (
        huge["event_id"], "event larger than an mParticle batch"
    )
    assert queue_state(app) == (0, 0)


def test_an_event_that_names_no_person_is_dead_lettered_and_never_sent(app, mparticle):
    nobody = webhook("sms", "delivered", customer_id=None, email=None)
    somebody = event("ann")
    send(app, nobody, somebody)

    services(app).build_worker().run(once=True)

    assert mparticle.source_message_ids() == message_ids(somebody)
    assert source_message_id(nobody["event_id"]).encode() not in b"".join(
        request.body for request in mparticle.requests
    )
    relay = services(app)
    (letter,) = list_dead_letters(relay.redis, relay.keys)
    assert letter["event_id"] == nobody["event_id"]
    assert letter["reason"] == "no customer_id or email identifies the person"
    assert story(app, nobody)["status"] == "dead_lettered"
    assert queue_state(app) == (0, 0)


@pytest.mark.parametrize(
    "fields",
    [
        {"b": "{not json"},
        {"b": "[1, 2]"},
        {"b": '{"event_id": "x", "object_type": "email", "metric": "opened", '
              '"data": {"customer_id": "1"}}'},
        {"b": '{"event_id": "x", "object_type": "email", "metric": "opened", '
              '"timestamp": "soon", "data": {"customer_id": "1"}}'},
        {"body": "the wrong field"},
    ],
    ids=["not-json", "json-list", "no-timestamp", "timestamp-string", "no-body-field"],
)
def test_a_queue_entry_that_is_not_a_webhook_is_dead_lettered_and_the_rest_delivered(
    app, mparticle, redis, fields
):
    good = event("ann")
    send(app, good)
    keys = services(app).keys
    redis.xadd(keys.queue(keys.shard_for("ann")), fields)  # written by something else

    services(app).build_worker().run(once=True)

    assert mparticle.source_message_ids() == message_ids(good)
    (letter,) = list_dead_letters(redis, keys)
    assert letter["reason"] == "queue entry is not a reporting webhook"
    assert queue_state(app) == (0, 0)


@pytest.mark.parametrize(
    ("fields", "shown"),
    [
        ({"d": b"\x80\xff binary, not deflate"}, "{'d': '\\udc80\\udcff binary, not deflate'}"),
        ({"d": queue_entry.pack('{"event_id": "x"}' * 20)["d"]}, '{"event_id": "x"}' * 20),
        ({"b": b'["not utf-8 \xff"]'}, "{'b': '[\"not utf-8 \\udcff\"]'}"),
    ],
    ids=["not-deflate", "packed-not-a-webhook", "plain-not-utf-8"],
)
def test_an_unusable_binary_queue_entry_is_dead_lettered_as_text_people_can_read(
    app, redis, fields, shown
):
    keys = services(app).keys
    redis.xadd(keys.queue(0), fields)

    services(app).build_worker().run(once=True)

    (letter,) = list_dead_letters(redis, keys)
    assert letter["body"] == shown  # the JSON when it unpacks, else escaped: valid UTF-8
    listed = app.test_client().get("/admin/dead-letters", headers=ADMIN)
    assert listed.get_json()["dead_letters"][0]["body"] == shown


@pytest.fixture(params=["redis", "embedded"])
def any_store_app(request, make_app, make_settings, mparticle) -> Flask:
    """The app on the real Redis, or on the embedded default's (fakeredis, as built)."""
    if request.param == "redis":
        return make_app()
    settings = make_settings({"relay": dict(FAST_RELAY), "mparticle": dict(FAST_MPARTICLE)},
                             REDIS_URL=None, MPARTICLE_BASE_URL=mparticle.base_url)
    return create_app(settings, role="cli")  # "cli": the test runs the worker, not a thread


def test_a_body_is_queued_binary_and_relayed_or_dead_lettered_as_the_exact_json(
    any_store_app, mparticle
):
    app = any_store_app
    somebody = event("ann", subject="Héllo ✓ 你好")
    nobody = webhook("sms", "delivered", customer_id=None, email=None, subject="Grüße")
    bodies = [json.dumps(payload, ensure_ascii=False) for payload in (somebody, nobody)]
    client = app.test_client()
    for body in bodies:  # UTF-8 on the wire, as Customer.io sends it
        answer = client.post("/webhooks/customerio", data=body.encode(),
                             headers=signed_headers(body.encode()))
        assert answer.get_json()["status"] == "queued"
    relay = services(app)
    queued = [fields for queue in relay.keys.queues() for _, fields in relay.redis.xrange(queue)]
    assert [set(fields) for fields in queued] == [{"d"}, {"d"}]
    assert sorted(queue_entry.unpack(fields) for fields in queued) == sorted(bodies)

    services(app).build_worker().run(once=True)

    assert mparticle.source_message_ids() == message_ids(somebody)
    (letter,) = list_dead_letters(relay.redis, relay.keys)
    assert letter["body"] == bodies[1]
    assert queue_state(app) == (0, 0)


# -- crashes and restarts --------------------------------------------------------------


def test_entries_a_killed_worker_left_pending_are_taken_over_and_delivered_once(
    app, mparticle, redis
):
    payloads = [event("ann"), event("bob"), event("cat")]
    send(app, *payloads)
    worker = services(app).build_worker()
    worker.consumer.ensure_groups()
    keys = services(app).keys
    read = redis.xreadgroup(CONSUMER_GROUP, "dead-worker", dict.fromkeys(keys.queues(), ">"))
    assert sum(len(entries) for _, entries in read) == 3  # and it never acks them

    took_over_at_once = worker.relay_pending()
    assert took_over_at_once is False  # not idle for claim_idle_seconds yet
    assert mparticle.requests == []
    assert wait_until(lambda: worker.relay_pending() and mparticle.wait_for_events(3, 0))
    worker.relay_pending()

    assert sorted(mparticle.source_message_ids()) == message_ids(*payloads)
    assert queue_state(app) == (0, 0)
    assert all(
        info["pending"] == 0
        for queue in keys.queues()
        for info in redis.xinfo_consumers(queue, CONSUMER_GROUP)
    )


def run_beside_one_waiting_to_retry(app: Flask, other: RelayWorker, mparticle: Any) -> None:
    """Worker A's pass gets a 429 (Retry-After: 2 s, past claim_idle_seconds) and waits;
    ``other`` (worker B) runs meanwhile until A's pass has ended."""
    waiting = services(app).build_worker()
    waiting.consumer.name, other.consumer.name = "worker-a", "worker-b"
    mparticle.script(Reply(429, {"Retry-After": "2"}))
    first_pass = threading.Thread(target=waiting.run, kwargs={"once": True})
    first_pass.start()
    assert wait_until(lambda: len(mparticle.requests) == 1)
    with Running(other):
        first_pass.join(timeout=10)
    assert not first_pass.is_alive()


def test_a_worker_waiting_to_retry_keeps_its_entries_from_another_worker(
    app, make_app, mparticle
):
    payload = event("ann")
    send(app, payload)
    other = services(make_app()).build_worker()

    # Longer than claim_idle_seconds (1): worker A waits 2 s before it sends again.
    run_beside_one_waiting_to_retry(app, other, mparticle)

    assert mparticle.source_message_ids() == message_ids(payload)  # once, not twice
    assert queue_state(app) == (0, 0)


@pytest.mark.parametrize("loss", ["group-destroyed", "redis-flushed"])
def test_a_worker_recreates_its_lost_consumer_group_and_carries_on(app, mparticle, redis, loss):
    keys = services(app).keys
    before = [event("ann"), event("bob")]
    after = [event("cat"), event("dan")]
    with Running(services(app).build_worker()):
        send(app, *before)
        assert mparticle.wait_for_events(2, timeout=5)
        if loss == "group-destroyed":
            for queue in keys.queues():
                redis.xgroup_destroy(queue, CONSUMER_GROUP)
        else:  # Redis restarted empty
            redis.flushdb()
        send(app, *after)
        assert mparticle.wait_for_events(4, timeout=5)

    assert sorted(mparticle.source_message_ids()) == message_ids(*before, *after)
    assert all(
        [group["name"] for group in redis.xinfo_groups(queue)] == [CONSUMER_GROUP]
        for queue in keys.queues()
    )


# -- dead letters ----------------------------------------------------------------------


def test_a_replayed_dead_letter_is_delivered_without_resetting_its_dedup_mark(
    app, mparticle, redis
):
    payload = event("mallory")
    send(app, payload)
    mparticle.reject_batches_where(lambda b: True)
    worker = services(app).build_worker()
    worker.run(once=True)
    relay = services(app)
    (letter,) = list_dead_letters(relay.redis, relay.keys)
    story_before = story(app, payload)
    first_before = first_flags(redis, relay.keys, payload["data"]["delivery_id"])
    mparticle.reject_batches_where(None)

    report = dead_letter_replay.replay(relay, [letter["id"]])
    worker.run(once=True)

    assert report.replayed == [letter["id"]]
    assert mparticle.source_message_ids() == message_ids(payload)
    assert list_dead_letters(relay.redis, relay.keys) == []
    story_after = story(app, payload)
    assert (story_before["status"], story_after["status"]) == ("dead_lettered", "relayed")
    unchanged = ("event", "received_at_ms", "queue_entry")
    assert {k: story_after[k] for k in unchanged} == {k: story_before[k] for k in unchanged}
    # The idempotency window was not restarted (the mark stayed in its bucket).
    assert 0 < story_after["ttl_seconds"] <= story_before["ttl_seconds"]
    assert first_flags(redis, relay.keys, payload["data"]["delivery_id"]) == first_before
    client = app.test_client()
    body = encode(payload)
    again = client.post("/webhooks/customerio", data=body, headers=signed_headers(body))
    assert again.get_json()["status"] == "duplicate"
    assert queue_state(app) == (0, 0)


def test_a_replay_of_all_dead_letters_delivers_each_event_once(app, mparticle):
    payloads = [event("ann"), event("bob")]
    send(app, *payloads)
    mparticle.reject_batches_where(lambda b: True)
    worker = services(app).build_worker()
    worker.run(once=True)
    mparticle.reject_batches_where(None)
    relay = services(app)

    report = dead_letter_replay.replay(relay)
    worker.run(once=True)

    assert len(report.replayed) == 2
    assert Counter(mparticle.source_message_ids()) == Counter(message_ids(*payloads))


# -- retry schedule, shared throttle, slow down -------------------------------------------


def test_each_retry_waits_its_schedule_step_with_jitter_and_the_last_step_repeats(make_app):
    app = make_app({"relay": {"retry_schedule_seconds": [5, 300, 1800],
                              "retry_jitter_ratio": 0.2}})
    worker = services(app).build_worker()

    for attempt, step in [(1, 5), (2, 300), (3, 1800), (4, 1800), (50, 1800)]:
        waits = [worker.policy.retry_wait(attempt) for _ in range(200)]
        assert all(step * 0.8 <= wait <= step * 1.2 for wait in waits)
        assert len(set(waits)) > 1  # jittered, so workers do not retry in lockstep


def test_without_jitter_a_wait_is_exactly_the_step(make_app):
    app = make_app({"relay": {"retry_schedule_seconds": [2, 7], "retry_jitter_ratio": 0.0}})
    worker = services(app).build_worker()

    assert [worker.policy.retry_wait(n) for n in (1, 2, 3)] == [2, 7, 7]


def test_retry_after_is_obeyed_and_capped_at_the_schedules_largest_step(make_app):
    app = make_app({"relay": {"retry_schedule_seconds": [5, 300, 1800]}})
    worker = services(app).build_worker()

    assert worker.policy.retry_wait(1, retry_after=42.0) == 42.0
    assert worker.policy.retry_wait(1, retry_after=0.0) == 0.0
    assert worker.policy.retry_wait(1, retry_after=10 * 86_400.0) == 1800  # a wrong header


@pytest.mark.parametrize("garbage", ["soon", "-5", "1.5", "NaN", "", "Thu, 99 Foo 2024"])
def test_a_garbage_retry_after_counts_as_absent_and_the_schedule_applies(
    make_app, mparticle, garbage
):
    app = make_app({"relay": {"retry_schedule_seconds": [0.01, 0.02]}})
    payload = event("ann")
    send(app, payload)
    mparticle.script(Reply(429, {"Retry-After": garbage}))

    services(app).build_worker().run(once=True)

    assert [request.status for request in bulk_requests(mparticle)] == [429, 202]
    assert mparticle.source_message_ids() == message_ids(payload)


def test_a_429_makes_a_second_worker_wait_too(make_app, mparticle):
    first_app = make_app({"relay": {"retry_schedule_seconds": [0.01, 30]}})
    first = services(first_app).build_worker(consumer="worker-a")
    second_app = make_app({"relay": {"retry_schedule_seconds": [0.01, 30]}})
    second = services(second_app).build_worker(consumer="worker-b")
    send(first_app, event("ann"))
    mparticle.script(Reply(429, {"Retry-After": "20"}))
    first_pass = threading.Thread(target=first.run, kwargs={"once": True})
    first_pass.start()
    assert wait_until(lambda: len(mparticle.requests) == 1)
    send(first_app, event("bob"))

    with Running(second):
        assert wait_until(lambda: second.throttle.seconds_left() > 0)
        time.sleep(0.5)  # far less than the 20 s the throttle asks for
        assert len(mparticle.requests) == 1  # worker B has not sent bob's event
    first.stop()
    first_pass.join(timeout=10)
    assert not first_pass.is_alive()
    assert 10 < second.throttle.seconds_left() <= 20  # one key per credential, seen by both


def test_the_shared_throttle_key_names_a_hash_of_the_api_key_never_the_key(app, redis):
    worker = services(app).build_worker()
    worker.throttle.extend(30, "test")

    (key,) = redis.keys("*throttle*")
    assert STANDIN_KEY not in key
    assert key.endswith(credential_id(STANDIN_KEY))
    assert 25_000 < redis.pttl(key) <= 30_000


def test_a_shorter_wait_never_cuts_a_longer_one_short(app, redis):
    worker = services(app).build_worker()

    worker.throttle.extend(30, "retry-after")
    worker.throttle.extend(0.5, "backoff")

    assert worker.throttle.seconds_left() > 25


@pytest.mark.parametrize(
    ("percent", "pause"),
    [(None, 0.0), (10.0, 0.0), (79.9, 0.0), (80.0, 0.0), (90.0, 1.0), (100.0, 2.0), (150.0, 2.0)],
)
def test_the_pause_grows_as_mparticles_rate_limit_fills_up(make_app, percent, pause):
    app = make_app({"relay": {"slow_down_at_rate_limit_percent": 80.0,
                              "slow_down_max_seconds": 2.0}})

    assert services(app).build_worker().policy.slow_down_seconds(percent) == pytest.approx(pause)


def test_a_nearly_used_rate_limit_slows_every_worker_down(app, mparticle):
    send(app, event("ann"))
    mparticle.script(Reply(202, {RATE_LIMIT_HEADER: "95"}))
    worker = services(app).build_worker()

    worker.run(once=True)

    assert mparticle.accepted_batches  # delivered, then the pause before the next send
    assert 0 < worker.throttle.seconds_left() <= 1.0
    assert services(app).build_worker().throttle.seconds_left() > 0


def test_a_little_used_rate_limit_does_not_slow_down(app, mparticle):
    send(app, event("ann"))
    mparticle.script(Reply(202, {RATE_LIMIT_HEADER: "12"}))
    worker = services(app).build_worker()

    worker.run(once=True)

    assert worker.throttle.seconds_left() == 0


# -- what operators see ------------------------------------------------------------------


def test_the_console_state_records_mparticles_successes_and_failures(app, mparticle):
    relay = services(app)
    send(app, event("ann"), event("bob"))
    mparticle.script(Reply(503), Reply(202, {RATE_LIMIT_HEADER: "42.5"}))

    services(app).build_worker().run(once=True)

    state = relay_state.read_relay_state(relay.redis, relay.keys)
    assert state["mparticle_last_status"] == 202
    assert state["rate_limit_percent_used"] == 42.5
    assert state["relayed_this_minute"] == 2


def test_a_failure_is_the_last_answer_the_console_shows_until_a_success(app, mparticle):
    relay = services(app)
    send(app, event("ann"))
    mparticle.script(Reply(401))

    services(app).build_worker().run(once=True)

    state = relay_state.read_relay_state(relay.redis, relay.keys)
    assert state["mparticle_last_status"] == 401
    assert state["credentials"].startswith("refused")
    assert state["relayed_this_minute"] == 0


def test_each_mparticle_request_is_one_log_line_with_its_figures(app, mparticle, caplog):
    send(app, event("ann"), event("bob"), event("ann", "clicked"))
    mparticle.script(Reply(429, {"Retry-After": "0"}), Reply(202, {RATE_LIMIT_HEADER: "7"}))

    with caplog.at_level(logging.INFO, logger="app.relay.worker"):
        services(app).build_worker().run(once=True)

    lines = [r for r in caplog.records if r.getMessage().startswith("mParticle request")]
    assert [(r.outcome, r.status, r.attempt) for r in lines] == [
        ("throttled", 429, 1), ("relayed", 202, 2)
    ]
    for record in lines:
        assert (record.events, record.batches, record.source_request_ids) == (3, 2, 2)
        assert record.latency_ms >= 0
    assert lines[1].rate_limit_percent == 7.0
    logged = caplog.text + "".join(str(vars(record)) for record in caplog.records)
    assert STANDIN_SECRET not in logged and STANDIN_KEY not in logged


class _FailsOnce:
    """Our own client stand-in: a bug on the first send, the real client afterwards."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls = 0

    def send_bulk(self, body: bytes) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in a bad moment")
        return self._client.send_bulk(body)

    def check_credentials(self) -> str:
        return self._client.check_credentials()


def test_an_unexpected_error_is_logged_and_the_worker_carries_on(app, mparticle, caplog):
    relay = services(app)
    payloads = [event("ann"), event("bob")]
    send(app, *payloads)
    client = _FailsOnce(relay.mparticle_client())
    worker = relay.build_worker()
    worker.direction.client = client

    with caplog.at_level(logging.ERROR, logger="app.relay.worker"), Running(worker):
        assert mparticle.wait_for_events(2, timeout=10)

    assert sorted(mparticle.source_message_ids()) == message_ids(*payloads)
    (failure,) = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert failure.exc_info is not None and "a bad moment" in caplog.text
    assert client.calls == 2


def test_a_worker_waiting_to_retry_keeps_every_entry_of_its_pass_from_another_worker(
    make_app, mparticle
):
    # One batch per request: while A waits to retry the first, the second is held too.
    sections = {"relay": {"retry_schedule_seconds": [0.01, 5], "max_batches_per_request": 1}}
    app = make_app(sections)
    payloads = [event("ann"), event("bob")]
    send(app, *payloads)
    other = services(make_app(sections)).build_worker()
    other._wait_for_throttle = lambda: None  # B ignores the shared wait: only claims hold it

    run_beside_one_waiting_to_retry(app, other, mparticle)

    assert Counter(mparticle.source_message_ids()) == Counter(message_ids(*payloads))
    assert queue_state(app) == (0, 0)


def test_a_429_without_retry_after_backs_off_exponentially_with_full_jitter(make_app):
    app = make_app({"relay": {"retry_schedule_seconds": [5, 300, 1800]}})
    worker = services(app).build_worker()

    for attempt, ceiling in [(1, 5), (2, 10), (3, 20), (9, 1280), (10, 1800), (60, 1800)]:
        waits = [worker.policy.retry_wait(attempt, throttled=True) for _ in range(300)]
        assert all(0 <= wait <= ceiling for wait in waits)
        assert min(waits) < ceiling * 0.2 and max(waits) > ceiling * 0.8  # full jitter


def test_a_stopped_worker_hands_what_it_did_not_send_to_the_next_at_once(make_app, mparticle):
    # A long claim_idle_seconds, as in production: the next worker must not wait it out.
    app = make_app({"relay": {"claim_idle_seconds": 60}})
    payloads = [event("ann"), event("bob"), event("cat")]
    send(app, *payloads)
    mparticle.script(Reply(503))  # the first worker is left waiting to retry
    leaving = services(app).build_worker(consumer="worker-a")
    with Running(leaving):
        assert wait_until(lambda: len(mparticle.requests) == 1)
    assert queue_state(app) == (3, 3)  # still queued, still pending under the first worker
    arriving = services(app).build_worker(consumer="worker-b")

    arriving.run(once=True)

    assert Counter(mparticle.source_message_ids()) == Counter(message_ids(*payloads))
    assert queue_state(app) == (0, 0)


# -- consumers that are gone -----------------------------------------------------------


def consumers(redis: redis_lib.Redis, app: Flask) -> dict[str, int]:
    """Every consumer listed in the queues' groups, with the entries it holds."""
    listed: dict[str, int] = {}
    for queue in services(app).keys.queues():
        for info in redis.xinfo_consumers(queue, CONSUMER_GROUP):
            listed[info["name"]] = listed.get(info["name"], 0) + info["pending"]
    return listed


def test_a_worker_leaving_with_nothing_in_hand_is_no_longer_listed(app, mparticle, redis):
    send(app, event("ann"), event("bob"))
    worker = services(app).build_worker(consumer="leaving")

    with Running(worker):
        assert wait_until(lambda: queue_state(app) == (0, 0))
        assert "leaving" in consumers(redis, app)

    assert consumers(redis, app) == {}


def test_gone_consumers_are_forgotten_unless_they_hold_entries(app, mparticle, redis):
    send(app, event("ann"), event("bob"), event("cat"))
    worker = services(app).build_worker()
    worker.consumer.ensure_groups()
    queues = services(app).keys.queues()
    # Three workers that died: one with entries in hand, two with nothing.
    redis.xreadgroup(CONSUMER_GROUP, "died-holding", dict.fromkeys(queues, ">"))
    for queue in queues:
        redis.xreadgroup(CONSUMER_GROUP, "died-empty-handed", {queue: "0"})
    assert consumers(redis, app) == {"died-holding": 3, "died-empty-handed": 0}

    worker.consumer.forget_idle_consumers_seconds = 3600
    assert worker.consumer.forget_gone_consumers() == 0  # not idle long enough
    time.sleep(0.05)
    worker.consumer.forget_idle_consumers_seconds = 0.02

    empty_handed = sum(info["pending"] == 0 for queue in queues
                       for info in redis.xinfo_consumers(queue, CONSUMER_GROUP))

    assert worker.consumer.forget_gone_consumers() == empty_handed
    assert consumers(redis, app) == {"died-holding": 3}  # its entries stay pending
    worker.consumer.forget_idle_consumers_seconds = 3600
    assert wait_until(lambda: worker.relay_pending() and mparticle.wait_for_events(3, 0))
    assert queue_state(app) == (0, 0)
