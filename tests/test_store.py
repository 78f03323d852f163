"""EventStore against the real Redis: dedup, first occurrence, one atomic script, quarantine."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest
import redis as redis_lib
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from app import queue_entry
from app.keys import KeySpace
from app.store import EventStore, IncomingEvent, Outcome
from app.stories import find_event

EVENT_TTL = 1000
FIRST_TTL = 5000
NOW = 1_700_000_000.0


@pytest.fixture
def keys() -> KeySpace:
    return KeySpace("cior", 4)


@pytest.fixture
def make_store(redis: redis_lib.Redis, keys: KeySpace) -> Callable[..., EventStore]:
    def build(*, first_occurrence_only: bool = True) -> EventStore:
        return EventStore(
            redis,
            keys,
            event_ttl_seconds=EVENT_TTL,
            first_occurrence_ttl_seconds=FIRST_TTL,
            first_occurrence_only=first_occurrence_only,
            dead_letter_max_entries=1000,
            clock=lambda: NOW,
        )

    return build


@pytest.fixture
def store(make_store: Callable[..., EventStore]) -> EventStore:
    return make_store()


_ids = iter(range(1, 1_000_000))


def incoming(
    event_id: str | None = None,
    event_type: str = "email_opened",
    delivery_id: str | None = "delivery-1",
    person: str = "42",
    body: str | None = None,
) -> IncomingEvent:
    event_id = event_id or f"event-{next(_ids)}"
    body = body or json.dumps({"event_id": event_id, "type": event_type, "person": person})
    return IncomingEvent(event_id, event_type, delivery_id, person, body)


def mark_of(redis: redis_lib.Redis, keys: KeySpace, event: IncomingEvent) -> dict[str, str]:
    return redis.hgetall(keys.event(keys.shard_for(event.routing_key), event.event_id))


def queue_of(keys: KeySpace, event: IncomingEvent) -> str:
    return keys.queue(keys.shard_for(event.routing_key))


def first_of(keys: KeySpace, event: IncomingEvent) -> str:
    return keys.first(keys.shard_for(event.routing_key), event.delivery_id or "")


def total_queued(redis: redis_lib.Redis, keys: KeySpace) -> int:
    return sum(redis.xlen(queue) for queue in keys.queues())


def test_first_copy_of_an_event_is_queued_with_its_mark(store, redis, keys):
    event = incoming()

    outcome = store.accept(event)

    assert outcome.status == "queued"
    entries = redis.xrange(queue_of(keys, event))
    assert [(entry_id, queue_entry.unpack(fields)) for entry_id, fields in entries] == [
        (outcome.detail, event.body)
    ]
    mark = mark_of(redis, keys, event)
    assert mark["s"] == "queued"
    assert mark["q"] == outcome.detail
    assert mark["t"] == "email_opened"
    # Kept once, in the queue entry: its id holds the time received, its body the delivery.
    assert "r" not in mark and "d" not in mark


def test_second_copy_of_an_event_is_a_duplicate_and_not_queued_again(store, redis, keys):
    event = incoming()
    store.accept(event)

    outcome = store.accept(event)
    store.accept(event)

    assert outcome == Outcome("duplicate", "queued")
    assert total_queued(redis, keys) == 1
    assert mark_of(redis, keys, event)["n"] == "2"  # copies received after the first


def test_second_event_of_the_same_type_and_delivery_is_suppressed_by_the_first(store, redis, keys):
    first = incoming(event_type="email_opened")
    second = incoming(event_type="email_opened")
    store.accept(first)

    outcome = store.accept(second)

    assert outcome == Outcome("suppressed", first.event_id)
    assert total_queued(redis, keys) == 1
    mark = mark_of(redis, keys, second)
    assert mark["s"] == "suppressed"
    assert mark["by"] == first.event_id
    assert "q" not in mark
    assert mark["r"] == str(int(NOW * 1000))
    assert mark["d"] == "delivery-1"


def test_a_retried_suppressed_event_is_suppressed_again_naming_the_same_first(store, redis, keys):
    first = incoming()
    second = incoming()
    store.accept(first)
    store.accept(second)

    assert store.accept(second) == Outcome("suppressed", first.event_id)
    assert total_queued(redis, keys) == 1


def test_an_event_whose_mark_was_forgotten_is_queued_again_not_suppressed_by_itself(
    store, redis, keys
):
    event = incoming()
    store.accept(event)
    redis.delete(keys.event(keys.shard_for("42"), event.event_id))  # cio-relay dedup forget

    outcome = store.accept(event)

    assert outcome.status == "queued"
    assert total_queued(redis, keys) == 2
    assert store.accept(incoming()) == Outcome("suppressed", event.event_id)


def test_second_event_of_a_delivery_is_queued_when_first_occurrence_only_is_off(
    make_store, redis, keys
):
    store = make_store(first_occurrence_only=False)
    first = incoming()
    second = incoming()

    outcomes = [store.accept(first).status, store.accept(second).status]

    assert outcomes == ["queued", "queued"]
    assert total_queued(redis, keys) == 2
    assert not redis.exists(first_of(keys, first))


def test_a_different_type_on_the_same_delivery_is_queued(store, redis, keys):
    opened = incoming(event_type="email_opened")
    clicked = incoming(event_type="email_clicked")
    store.accept(opened)

    outcome = store.accept(clicked)

    assert outcome.status == "queued"
    assert redis.hgetall(first_of(keys, opened)) == {
        "email_opened": opened.event_id,
        "email_clicked": clicked.event_id,
    }


def test_an_event_without_a_delivery_is_never_checked_for_first_occurrence(store, redis, keys):
    first = incoming(delivery_id=None)
    second = incoming(delivery_id=None)

    outcomes = [store.accept(first).status, store.accept(second).status]

    assert outcomes == ["queued", "queued"]
    assert list(redis.scan_iter(match="cior:*:first:*")) == []
    assert "d" not in mark_of(redis, keys, first)


def test_marks_and_first_flags_expire_after_their_configured_ttls(store, redis, keys):
    first = incoming()
    second = incoming()
    store.accept(first)
    store.accept(second)

    first_mark_ttl = redis.ttl(keys.event(keys.shard_for("42"), first.event_id))
    suppressed_mark_ttl = redis.ttl(keys.event(keys.shard_for("42"), second.event_id))
    flags_ttl = redis.ttl(first_of(keys, first))

    assert EVENT_TTL - 5 <= first_mark_ttl <= EVENT_TTL
    assert EVENT_TTL - 5 <= suppressed_mark_ttl <= EVENT_TTL
    assert FIRST_TTL - 5 <= flags_ttl <= FIRST_TTL
    assert redis.ttl(queue_of(keys, first)) == -1  # the queue itself never expires


def _assert_marks_and_entries_agree(redis: redis_lib.Redis, keys: KeySpace) -> int:
    """Every queued mark has its entry, every entry its queued mark; return the entry count."""
    entries: dict[str, dict[str, Any]] = {}
    for shard, queue in enumerate(keys.queues()):
        for entry_id, fields in redis.xrange(queue):
            event_id = json.loads(queue_entry.unpack(fields))["event_id"]
            entries[f"{shard}/{entry_id}"] = {"event_id": event_id, "shard": shard}
    queued_marks = {}
    for shard in range(keys.shards):
        for key in redis.scan_iter(match=keys.event(shard, "*"), count=1000):
            mark = redis.hgetall(key)
            if mark.get("s") == "queued":
                queued_marks[f"{shard}/{mark['q']}"] = key
    assert set(queued_marks) == set(entries), "a queued mark without its entry, or the reverse"
    for where, entry in entries.items():
        assert queued_marks[where] == keys.event(entry["shard"], entry["event_id"])
    return len(entries)


def test_after_many_mixed_events_every_queued_mark_has_its_entry_and_the_reverse(
    store, redis, keys
):
    rng = random.Random(20240607)
    types = ["email_opened", "email_clicked", "email_delivered", "push_opened"]
    sent: list[IncomingEvent] = []
    outcomes: list[str] = []
    for _ in range(400):
        if sent and rng.random() < 0.25:
            event = rng.choice(sent)  # Customer.io retrying an event
        else:
            event = incoming(
                event_type=rng.choice(types),
                delivery_id=rng.choice([None, "d-1", "d-2", "d-3", "d-4"]),
                person=rng.choice(["1", "2", "3", "4", "5", "6", "7"]),
            )
            sent.append(event)
        outcomes.append(store.accept(event).status)

    entries = _assert_marks_and_entries_agree(redis, keys)

    assert entries == outcomes.count("queued")
    assert {"queued", "duplicate", "suppressed"} <= set(outcomes)


def test_a_failed_queue_append_leaves_no_mark_and_no_first_flag(store, redis, keys):
    event = incoming()
    queue = queue_of(keys, event)
    redis.set(queue, "not a stream")  # XADD now fails with WRONGTYPE inside the script

    with pytest.raises(redis_lib.ResponseError, match="WRONGTYPE"):
        store.accept(event)

    assert not redis.exists(keys.event(keys.shard_for("42"), event.event_id))
    assert not redis.exists(first_of(keys, event))


@pytest.mark.parametrize("broken", ["mark", "first", "queue"])
def test_a_script_that_fails_on_any_of_its_keys_writes_none_of_the_others(
    store, redis, keys, broken
):
    event = incoming()
    written = {
        "mark": keys.event(keys.shard_for("42"), event.event_id),
        "first": first_of(keys, event),
        "queue": queue_of(keys, event),
    }
    redis.set(written[broken], "not what the script expects")

    with pytest.raises(redis_lib.ResponseError, match="WRONGTYPE"):
        store.accept(event)

    others = [key for name, key in written.items() if name != broken]
    assert [key for key in others if redis.exists(key)] == []
    assert redis.type(written[broken]) == "string"


def test_an_event_whose_queue_append_failed_is_queued_when_customerio_retries_it(
    store, redis, keys
):
    event = incoming()
    queue = queue_of(keys, event)
    redis.set(queue, "not a stream")
    with pytest.raises(redis_lib.ResponseError):
        store.accept(event)
    redis.delete(queue)

    outcome = store.accept(event)

    assert outcome.status == "queued"
    assert redis.xlen(queue) == 1


@pytest.mark.parametrize(
    ("event_id", "delivery_id", "person"),
    [
        ("01E4C4CT6YDC7Y5M7FE1GWWPQJ", "RPILAgUBcRhIBqSfeiIwdIYJKxTY", "42"),
        ("{braces}", "{other}", "person@example.com"),
        ("ünïcödé", "d:with:colons", "7"),
    ],
)
def test_the_keys_of_one_event_share_one_cluster_slot(
    store, redis, keys, event_id, delivery_id, person
):
    event = incoming(event_id=event_id, delivery_id=delivery_id, person=person)
    store.accept(event)
    shard = keys.shard_for(person)
    written = [keys.event(shard, event_id), keys.first(shard, delivery_id), keys.queue(shard)]

    assert all(redis.exists(key) for key in written)
    assert len({key_slot(key.encode()) for key in written}) == 1


def test_quarantine_keeps_the_raw_body_and_reason_in_the_dead_letter_stream(store, redis, keys):
    body = b'{"object_type": "email", "metric": "opened"'
    details = {"event_id": ["Missing data for required field."]}

    entry_id = store.quarantine(body, "not a usable reporting webhook", details)

    letters = redis.xrange(keys.dead_letters)
    assert [letter_id for letter_id, _ in letters] == [entry_id]
    letter = letters[0][1]
    assert letter["kind"] == "quarantined"
    assert letter["reason"] == "not a usable reporting webhook"
    assert json.loads(letter["details"]) == details
    assert letter["body"] == body.decode()
    assert letter["at_ms"] == str(int(NOW * 1000))
    assert total_queued(redis, keys) == 0


def test_a_queued_body_is_stored_packed_and_read_back_exactly(store, redis, keys):
    body = json.dumps({
        "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQJ", "object_type": "email", "metric": "opened",
        "timestamp": 1613063089,
        "data": {"customer_id": "42", "delivery_id": "RPILAgUBcRhIBqSfeiIwdIYJKxTY",
                 "identifiers": {"id": "42", "email": "test@example.com", "cio_id": "d9c1"},
                 "recipient": "test@example.com", "subject": "Héllo ✓", "action_id": 7},
    }, separators=(",", ":"), ensure_ascii=False)
    event = incoming(body=body)

    store.accept(event)

    [(_, fields)] = redis.xrange(queue_of(keys, event))
    assert set(fields) == {"z"}
    assert len(fields["z"]) < len(body.encode()) * 0.7
    assert queue_entry.unpack(fields) == body


def test_a_packed_entry_that_is_corrupt_is_refused_with_a_value_error():
    with pytest.raises(ValueError, match="corrupt"):
        queue_entry.unpack({"z": "bm90IGRlZmxhdGU="})
    with pytest.raises(ValueError):
        queue_entry.unpack({"z": "***"})


def test_a_body_that_packing_would_not_shrink_is_stored_plain():
    assert queue_entry.pack("{}") == {"b": "{}"}
    assert queue_entry.unpack({"b": "{}"}) == "{}"


def test_an_ignored_event_leaves_a_story_saying_why_with_the_mark_ttl(store, redis, keys):
    event = incoming(event_type="email_drafted")

    store.note_ignored(event.event_id, event.event_type, event.routing_key,
                       "event type turned off")

    story = find_event(redis, keys, event.event_id)
    assert story["status"] == "ignored"
    assert story["reason"] == "event type turned off"
    assert story["where"] == "not forwarded: event type turned off"
    assert story["received_at_ms"] == int(NOW * 1000)
    assert 0 < story["ttl_seconds"] <= EVENT_TTL
    assert total_queued(redis, keys) == 0


def test_an_ignored_copy_of_a_queued_event_keeps_the_queued_story(store, redis, keys):
    event = incoming()
    store.accept(event)

    store.note_ignored(event.event_id, event.event_type, event.routing_key,
                       "event type turned off")

    story = find_event(redis, keys, event.event_id)
    assert story["status"] == "queued"
    assert story["copies_received_after_first"] == 1


def test_a_quarantined_payload_with_an_event_id_points_its_story_at_the_dead_letter(
    store, redis, keys
):
    entry_id = store.quarantine(b'{"event_id": "q-1"}', "not a usable reporting webhook",
                                {"metric": ["Missing data for required field."]}, "q-1")

    story = find_event(redis, keys, "q-1")
    assert story["status"] == "quarantined"
    assert story["dead_letter_id"] == entry_id
    assert story["reason"] == "not a usable reporting webhook"
    assert redis.xrange(keys.dead_letters)[0][1]["body"] == '{"event_id": "q-1"}'
    assert 0 < story["ttl_seconds"] <= EVENT_TTL


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_body_unpacks_to_exactly_what_was_packed(body):
    assert queue_entry.unpack(queue_entry.pack(body)) == body


def test_an_event_ignored_while_its_type_was_off_is_queued_when_sent_again(store, redis, keys):
    event = incoming()
    store.note_ignored(event.event_id, event.event_type, event.routing_key,
                       "event type turned off")

    outcome = store.accept(event)

    assert outcome.status == "queued"
    mark = mark_of(redis, keys, event)
    assert mark["s"] == "queued"
    assert "why" not in mark  # the ignored copy's story is replaced, not mixed in
    assert total_queued(redis, keys) == 1
    assert store.accept(event).status == "duplicate"


def test_an_event_quarantined_once_and_accepted_later_tells_the_accepted_story(
    store, redis, keys
):
    event = incoming()
    store.quarantine(b"{}", "not a usable reporting webhook", {}, event.event_id)

    assert store.accept(event).status == "queued"

    assert find_event(redis, keys, event.event_id)["status"] == "queued"
