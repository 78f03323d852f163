"""Marks and flags kept in keys of their own (before buckets) move into buckets."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import redis as redis_lib

from app.store.events import EventStore, IncomingEvent, Outcome
from app.store.keys import KeySpace
from app.store.upgrade import legacy_story, migrate
from tests.helpers.stories import find_event, first_flags

DAY = 24 * 3600
PERSON = "42"
RECEIVED_MS = 1795704496123
REQUEST_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "batch"))

# Marks as the relay wrote them before buckets (one hash per event), and what support
# was told about each.
LEGACY_MARKS: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    "01QUEUED": (
        {"s": "queued", "t": "email_opened", "q": f"{RECEIVED_MS}-0"},
        {"status": "queued", "event": "email_opened", "queue_entry": f"{RECEIVED_MS}-0",
         "received_at_ms": RECEIVED_MS},
    ),
    "01RELAYED": (
        {"s": "relayed", "t": "email_delivered", "q": f"{RECEIVED_MS}-3", "n": "2",
         "at": str(RECEIVED_MS + 1500), "rid": REQUEST_ID, "st": "202", "a": "3"},
        {"status": "relayed", "event": "email_delivered", "queue_entry": f"{RECEIVED_MS}-3",
         "received_at_ms": RECEIVED_MS, "status_at_ms": RECEIVED_MS + 1500,
         "mparticle_status": 202, "source_request_id": REQUEST_ID, "attempts": 3,
         "copies_received_after_first": 2},
    ),
    "01DEAD": (
        {"s": "dead_lettered", "t": "email_sent", "q": f"{RECEIVED_MS}-1",
         "at": str(RECEIVED_MS + 99), "why": "no customer_id or email identifies the person"},
        {"status": "dead_lettered", "event": "email_sent", "queue_entry": f"{RECEIVED_MS}-1",
         "received_at_ms": RECEIVED_MS, "status_at_ms": RECEIVED_MS + 99,
         "reason": "no customer_id or email identifies the person"},
    ),
    "01SUPPRESSED": (
        {"s": "suppressed", "t": "email_opened", "by": "01QUEUED", "r": str(RECEIVED_MS),
         "d": "delivery|7", "n": "1"},
        {"status": "suppressed", "event": "email_opened", "received_at_ms": RECEIVED_MS,
         "delivery_id": "delivery|7", "suppressed_by": "01QUEUED",
         "copies_received_after_first": 1},
    ),
    "01IGNORED": (
        {"s": "ignored", "t": "email_drafted", "why": "event type turned off",
         "r": str(RECEIVED_MS)},
        {"status": "ignored", "event": "email_drafted", "received_at_ms": RECEIVED_MS,
         "reason": "event type turned off"},
    ),
    "01QUARANTINED": (
        {"s": "quarantined", "why": "not a usable reporting webhook", "dl": "1795704496124-0",
         "r": str(RECEIVED_MS)},
        {"status": "quarantined", "received_at_ms": RECEIVED_MS,
         "dead_letter_id": "1795704496124-0", "reason": "not a usable reporting webhook"},
    ),
}


@pytest.fixture
def keys() -> KeySpace:
    return KeySpace("cior", 4)


@pytest.fixture
def legacy(redis: redis_lib.Redis, keys: KeySpace) -> dict[str, int]:
    """The old keys, each with the TTL left it had; returns their expiry times."""
    tag = f"cior:{{q{keys.shard_for(PERSON)}}}"
    expiries = {}
    for event_id, (fields, _) in LEGACY_MARKS.items():
        redis.hset(f"{tag}:event:{event_id}", mapping=fields)
        redis.expire(f"{tag}:event:{event_id}", 5 * DAY)
        expiries[f"{tag}:event:{event_id}"] = int(time.time()) + 5 * DAY
    redis.hset(f"{tag}:first:delivery|7", mapping={"email_opened": "01QUEUED"})
    redis.expire(f"{tag}:first:delivery|7", 80 * DAY)
    expiries[f"{tag}:first:delivery|7"] = int(time.time()) + 80 * DAY
    return expiries


def test_every_old_mark_and_flag_moves_into_buckets_and_tells_the_same_story(
    redis, keys, legacy
):
    report = migrate(redis, keys, time.time())

    assert (report.marks, report.flags, report.keys, report.unreadable) == (6, 1, 7, 0)
    assert not any(redis.exists(key) for key in legacy)
    for event_id, (_, told) in LEGACY_MARKS.items():
        story = find_event(redis, keys, event_id)
        assert {name: story[name] for name in told} == told, event_id
    assert first_flags(redis, keys, "delivery|7")["flags"] == {"email_opened": "01QUEUED"}


def test_moved_marks_and_flags_live_at_least_as_long_as_they_had_left(redis, keys, legacy):
    migrate(redis, keys, time.time())

    buckets = [key for key in redis.keys("*") if ":marks:" in key or ":first:" in key]
    assert buckets
    assert min(redis.expiretime(key) for key in buckets) >= min(legacy.values())
    flag_bucket = next(key for key in buckets if ":first:" in key)
    assert redis.expiretime(flag_bucket) >= legacy[next(k for k in legacy if ":first:" in k)]


def test_after_moving_copies_are_duplicates_and_later_occurrences_suppressed(
    redis, keys, legacy
):
    migrate(redis, keys, time.time())
    store = EventStore(redis, keys, first_occurrence_only=True, dead_letter_max_entries=10)

    def accept(event_id: str, delivery_id: str = "delivery|7") -> Outcome:
        body = json.dumps({"event_id": event_id})
        return store.accept(IncomingEvent(event_id, "email_opened", delivery_id, PERSON, body))

    assert accept("01RELAYED") == Outcome("duplicate", "relayed")
    assert accept("01SUPPRESSED") == Outcome("suppressed", "01QUEUED")
    assert accept("01ANOTHER_OPEN") == Outcome("suppressed", "01QUEUED")
    # An ignored copy never made a later one a duplicate.
    assert accept("01IGNORED", "delivery-8").status == "queued"


def test_migrating_again_moves_nothing_and_keeps_what_the_relay_wrote_since(
    redis, keys, legacy
):
    store = EventStore(redis, keys, first_occurrence_only=True, dead_letter_max_entries=10)
    # Accepted by the new relay before the migration ran: its mark wins.
    outcome = store.accept(IncomingEvent("01QUEUED", "email_opened", "delivery|7", PERSON, "{}"))

    first = migrate(redis, keys, time.time())
    again = migrate(redis, keys, time.time())

    assert outcome.status == "queued"
    assert (first.marks, first.keys) == (5, 7)
    assert (again.marks, again.flags, again.keys) == (0, 0, 0)
    assert find_event(redis, keys, "01QUEUED")["queue_entry"] == outcome.detail


def test_a_mark_not_as_the_relay_wrote_it_is_left_alone():
    assert legacy_story({"s": "teleported"}) is None
    assert legacy_story({"s": "relayed", "q": "1-0", "rid": "not a uuid"}) is None


def test_dedup_migrate_reports_what_it_moved(runner, app, redis, legacy):
    result = runner.invoke(args=["dedup", "migrate"])

    assert result.exit_code == 0, result.output
    assert "moved 6 marks and 1 first-occurrence flags out of 7 keys" in result.output
