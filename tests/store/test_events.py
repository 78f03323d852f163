"""EventStore against the real Redis: dedup, first occurrence, one atomic script, quarantine."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis as redis_lib
from redis.crc import key_slot

from app.services import REDIS_DECODING
from app.store import marks, queue_entry
from app.store.events import ClockSkewError, EventStore, IncomingEvent, Outcome
from app.store.keys import KeySpace
from app.store.stories import forget_event
from tests.helpers.stories import find_event, first_flags

EVENT_TTL = 8 * 24 * 3600
FIRST_TTL = 90 * 24 * 3600
MARK_SPAN = EVENT_TTL // 2  # app/keys.py: a generation is half the default TTL
FIRST_SPAN = FIRST_TTL // 2


@pytest.fixture
def keys() -> KeySpace:
    return KeySpace("cior", 4, event_ttl_seconds=EVENT_TTL, first_occurrence_ttl_seconds=FIRST_TTL)


def test_a_generation_is_half_the_default_ttl(keys):
    assert keys.mark_generations.span_seconds == MARK_SPAN
    assert keys.first_generations.span_seconds == FIRST_SPAN


@pytest.fixture
def now() -> float:
    """This process's clock for the test: Redis's own clock decides generations."""
    return float(int(time.time()))


@pytest.fixture
def make_store(
    redis: redis_lib.Redis, keys: KeySpace, now: float
) -> Callable[..., EventStore]:
    def build(*, first_occurrence_only: bool = True, clock_offset: float = 0) -> EventStore:
        return EventStore(
            redis,
            keys,
            first_occurrence_only=first_occurrence_only,
            dead_letter_max_entries=1000,
            clock=lambda: now + clock_offset,
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


def present(keys: KeySpace, buckets: Any, generations: Any) -> str:
    """The key, among an event's buckets, of the generation Redis writes now."""
    return buckets.keys[generations.of(time.time()) - buckets.oldest]


def mark_bucket(keys: KeySpace, event: IncomingEvent) -> str:
    shard = keys.shard_for(event.routing_key)
    buckets = keys.mark_buckets(shard, event.event_id, time.time())
    return present(keys, buckets, keys.mark_generations)


def first_bucket(keys: KeySpace, event: IncomingEvent) -> str:
    shard = keys.shard_for(event.routing_key)
    buckets = keys.first_buckets(shard, event.delivery_id or "", time.time())
    return present(keys, buckets, keys.first_generations)


def packed_mark(redis: redis_lib.Redis, keys: KeySpace, event: IncomingEvent) -> str | None:
    """The event's mark as stored, from whichever generation holds it."""
    shard = keys.shard_for(event.routing_key)
    for bucket in keys.mark_buckets(shard, event.event_id, time.time()).keys:
        story = redis.hget(bucket, event.event_id)
        if story is not None:
            return story
    return None


def mark_of(redis: redis_lib.Redis, keys: KeySpace, event: IncomingEvent) -> dict[str, Any]:
    story = packed_mark(redis, keys, event)
    assert story is not None, f"{event.event_id} has no mark"
    return marks.unpack(story)


def queue_of(keys: KeySpace, event: IncomingEvent) -> str:
    return keys.queue(keys.shard_for(event.routing_key))


def total_queued(redis: redis_lib.Redis, keys: KeySpace) -> int:
    return sum(redis.xlen(queue) for queue in keys.queues())


def buckets_written(redis: redis_lib.Redis, kind: str) -> list[str]:
    return sorted(redis.scan_iter(match=f"cior:*:{kind}:*"))


def test_first_copy_of_an_event_is_queued_with_its_mark(store, redis, keys):
    event = incoming()

    outcome = store.accept(event)

    assert outcome.status == "queued"
    entries = redis.xrange(queue_of(keys, event))
    assert [(entry_id, queue_entry.unpack(fields)) for entry_id, fields in entries] == [
        (outcome.detail, event.body)
    ]
    mark = mark_of(redis, keys, event)
    assert mark["status"] == "queued"
    assert mark["queue_entry"] == outcome.detail
    assert mark["event"] == "email_opened"
    # Kept once, in the queue entry: its id holds the time received, its body the delivery.
    assert packed_mark(redis, keys, event) == f"q|email_opened|{outcome.detail}"


def test_second_copy_of_an_event_is_a_duplicate_and_not_queued_again(store, redis, keys):
    event = incoming()
    store.accept(event)

    outcome = store.accept(event)
    store.accept(event)

    assert outcome == Outcome("duplicate", "queued")
    assert total_queued(redis, keys) == 1
    assert mark_of(redis, keys, event)["copies_received_after_first"] == 2


def test_second_event_of_the_same_type_and_delivery_is_suppressed_by_the_first(
    store, redis, keys, now
):
    first = incoming(event_type="email_opened")
    second = incoming(event_type="email_opened")
    store.accept(first)

    outcome = store.accept(second)

    assert outcome == Outcome("suppressed", first.event_id)
    assert total_queued(redis, keys) == 1
    mark = mark_of(redis, keys, second)
    assert mark["status"] == "suppressed"
    assert "queue_entry" not in mark
    assert mark["received_at_ms"] == int(now * 1000)
    assert mark["delivery_id"] == "delivery-1"
    # Named by the delivery's flag, which outlives the mark, not stored twice.
    assert find_event(redis, keys, second.event_id)["suppressed_by"] == first.event_id


def test_a_retried_suppressed_event_is_suppressed_again_naming_the_same_first(store, redis, keys):
    first = incoming()
    second = incoming()
    store.accept(first)
    store.accept(second)

    assert store.accept(second) == Outcome("suppressed", first.event_id)
    assert total_queued(redis, keys) == 1
    assert mark_of(redis, keys, second)["copies_received_after_first"] == 1


def test_an_event_whose_mark_was_forgotten_is_queued_again_not_suppressed_by_itself(
    store, redis, keys
):
    event = incoming()
    store.accept(event)
    assert forget_event(redis, keys, event.event_id)  # cio-relay dedup forget

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
    assert buckets_written(redis, "first") == []


def test_a_different_type_on_the_same_delivery_is_queued(store, redis, keys):
    opened = incoming(event_type="email_opened")
    clicked = incoming(event_type="email_clicked")
    store.accept(opened)

    outcome = store.accept(clicked)

    assert outcome.status == "queued"
    assert first_flags(redis, keys, "delivery-1")["flags"] == {
        "email_opened": opened.event_id,
        "email_clicked": clicked.event_id,
    }
    # One bucket holds the delivery's flags: one field per type.
    assert redis.hgetall(first_bucket(keys, opened)) == {
        "delivery-1:email_opened": opened.event_id,
        "delivery-1:email_clicked": clicked.event_id,
    }


def test_an_event_without_a_delivery_is_never_checked_for_first_occurrence(store, redis, keys):
    first = incoming(delivery_id=None)
    second = incoming(delivery_id=None)

    outcomes = [store.accept(first).status, store.accept(second).status]

    assert outcomes == ["queued", "queued"]
    assert buckets_written(redis, "first") == []
    assert "delivery_id" not in mark_of(redis, keys, first)


def test_marks_and_flags_live_their_ttl_and_at_most_half_as_long_again(store, redis, keys):
    first = incoming()
    second = incoming()
    written_at = time.time()
    store.accept(first)
    store.accept(second)

    mark_expiries = {redis.expiretime(mark_bucket(keys, event)) for event in (first, second)}
    flags_expiry = redis.expiretime(first_bucket(keys, first))

    # Every field lives at least its TTL (the idempotency window), from when Redis wrote
    # it, and less than the TTL plus a generation (half the TTL).
    for expiry in mark_expiries:
        assert written_at + EVENT_TTL - 1 <= expiry <= written_at + EVENT_TTL + MARK_SPAN + 1
    assert written_at + FIRST_TTL - 1 <= flags_expiry <= written_at + FIRST_TTL + FIRST_SPAN + 1
    generation = keys.mark_generations.of(time.time())
    assert mark_expiries == {keys.mark_generations.expires_at(generation)}
    assert redis.ttl(queue_of(keys, first)) == -1  # the queue itself never expires


def test_a_mark_in_an_older_generation_still_makes_a_copy_a_duplicate(store, redis, keys):
    event = incoming()
    store.accept(event)
    # As if the event had arrived a generation ago: its mark is in the previous bucket.
    shard = keys.shard_for(event.routing_key)
    buckets = keys.mark_buckets(shard, event.event_id, time.time())
    written = mark_bucket(keys, event)
    older = buckets.keys[buckets.keys.index(written) - 1]
    redis.rename(written, older)

    assert store.accept(event) == Outcome("duplicate", "queued")
    assert redis.hget(older, event.event_id).startswith("q1|")
    assert total_queued(redis, keys) == 1


def test_a_flag_in_an_older_generation_still_suppresses_a_later_event(store, redis, keys):
    first = incoming()
    store.accept(first)
    shard = keys.shard_for(first.routing_key)
    buckets = keys.first_buckets(shard, "delivery-1", time.time())
    written = first_bucket(keys, first)
    older = buckets.keys[buckets.keys.index(written) - 2]
    redis.rename(written, older)

    assert store.accept(incoming()) == Outcome("suppressed", first.event_id)
    assert total_queued(redis, keys) == 1


@pytest.mark.parametrize("offset", [-250.0, 250.0])
def test_web_processes_whose_clocks_differ_from_redis_agree_on_every_mark(
    make_store, redis, keys, offset
):
    # Redis's clock picks the bucket written; a web process off by a few minutes (up to
    # CLOCK_SKEW_SECONDS) reads every bucket that may hold a mark, and writes.
    skewed, exact = make_store(clock_offset=offset), make_store()
    first, second = incoming(), incoming()

    assert skewed.accept(first).status == "queued"
    assert exact.accept(first) == Outcome("duplicate", "queued")
    assert exact.accept(second) == Outcome("suppressed", first.event_id)
    assert skewed.accept(second) == Outcome("suppressed", first.event_id)


def test_marks_and_flags_written_before_a_ttl_change_are_still_found(store, redis, now):
    first, second = incoming(), incoming()
    store.accept(first)
    longer = KeySpace("cior", 4, event_ttl_seconds=EVENT_TTL * 2,
                      first_occurrence_ttl_seconds=FIRST_TTL * 2)
    after_the_change = EventStore(redis, longer, first_occurrence_only=True,
                                  dead_letter_max_entries=10, clock=lambda: now)

    assert after_the_change.accept(first) == Outcome("duplicate", "queued")
    assert after_the_change.accept(second) == Outcome("suppressed", first.event_id)


def test_a_web_process_whose_clock_is_off_by_generations_is_refused_and_writes_nothing(
    make_store, redis, keys
):
    store = make_store(clock_offset=-2 * MARK_SPAN)

    with pytest.raises(ClockSkewError, match="disagree on the time"):
        store.accept(incoming())
    with pytest.raises(ClockSkewError):
        store.note_ignored("event-x", "email_drafted", "42", "event type turned off")

    assert redis.keys("*") == []


def test_a_bucket_of_many_marks_and_flags_stays_a_compact_listpack(redis, now):
    # One bucket per generation: a few hundred events, all in the same two hashes.
    keys = KeySpace("cior", 1, mark_buckets_per_shard=1, first_buckets_per_shard=1)
    store = EventStore(redis, keys, first_occurrence_only=True, dead_letter_max_entries=10,
                       clock=lambda: now)
    for n in range(300):
        event = incoming(event_id=f"01JD{n:022d}", delivery_id=f"RPILAgUBcRhIBqSf{n:012d}",
                         event_type="email_delivered")
        assert store.accept(event).status == "queued"

    (mark_bucket_key,) = buckets_written(redis, "marks")
    (flag_bucket_key,) = buckets_written(redis, "first")
    assert redis.hlen(mark_bucket_key) == redis.hlen(flag_bucket_key) == 300
    assert redis.object("encoding", mark_bucket_key) == "listpack"
    assert redis.object("encoding", flag_bucket_key) == "listpack"


def _assert_marks_and_entries_agree(redis: redis_lib.Redis, keys: KeySpace) -> int:
    """Every queued mark has its entry, every entry its queued mark; return the entry count."""
    entries: dict[str, str] = {}
    for shard, queue in enumerate(keys.queues()):
        for entry_id, fields in redis.xrange(queue):
            event_id = json.loads(queue_entry.unpack(fields))["event_id"]
            entries[f"{shard}/{entry_id}"] = event_id
    queued_marks = {}
    for shard in range(keys.shards):
        for bucket in redis.scan_iter(match=f"cior:{{q{shard}}}:marks:*", count=1000):
            for event_id, story in redis.hgetall(bucket).items():
                told = marks.unpack(story)
                if told["status"] == "queued":
                    queued_marks[f"{shard}/{told['queue_entry']}"] = event_id
    assert set(queued_marks) == set(entries), "a queued mark without its entry, or the reverse"
    assert queued_marks == entries
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

    assert buckets_written(redis, "marks") == []
    assert buckets_written(redis, "first") == []


@pytest.mark.parametrize("broken", ["mark", "older mark", "first", "older first", "queue"])
def test_a_script_that_fails_on_any_of_its_keys_writes_none_of_the_others(
    store, redis, keys, broken
):
    event = incoming()
    shard = keys.shard_for("42")
    written = {
        "mark": mark_bucket(keys, event),
        "older mark": keys.mark_buckets(shard, event.event_id, time.time()).keys[0],
        "first": first_bucket(keys, event),
        "older first": keys.first_buckets(shard, "delivery-1", time.time()).keys[0],
        "queue": queue_of(keys, event),
    }
    redis.set(written[broken], "not what the script expects")

    with pytest.raises(redis_lib.ResponseError, match="WRONGTYPE"):
        store.accept(event)

    assert redis.keys("*") == [written[broken]]
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
    passed = [keys.queue(shard), *keys.mark_buckets(shard, event_id, time.time()).keys,
              *keys.first_buckets(shard, delivery_id, time.time()).keys]
    written = [mark_bucket(keys, event), first_bucket(keys, event), keys.queue(shard)]

    assert all(redis.exists(key) for key in written)
    assert len({key_slot(key.encode()) for key in passed}) == 1
    assert find_event(redis, keys, event_id)["status"] == "queued"
    assert first_flags(redis, keys, delivery_id)["flags"] == {"email_opened": event_id}


def test_quarantine_keeps_the_raw_body_and_reason_in_the_dead_letter_stream(
    store, redis, keys, now
):
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
    assert letter["at_ms"] == str(int(now * 1000))
    assert total_queued(redis, keys) == 0


def test_a_queued_body_is_stored_binary_and_read_back_exactly(store, redis, redis_url, keys):
    body = json.dumps({
        "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQJ", "object_type": "email", "metric": "opened",
        "timestamp": 1613063089,
        "data": {"customer_id": "42", "delivery_id": "RPILAgUBcRhIBqSfeiIwdIYJKxTY",
                 "identifiers": {"id": "42", "email": "test@example.com", "cio_id": "d9c1"},
                 "recipient": "test@example.com", "subject": "Héllo ✓", "action_id": 7},
    }, separators=(",", ":"), ensure_ascii=False)
    event = incoming(body=body)

    store.accept(event)

    [(_, fields)] = redis.xrange(queue_of(keys, event))  # the app's own client
    assert set(fields) == {"d"}
    assert queue_entry.unpack(fields) == body
    as_bytes = redis_lib.Redis.from_url(redis_url)  # what Redis holds, undecoded
    [(_, stored)] = as_bytes.xrange(queue_of(keys, event))
    as_bytes.close()
    assert stored == {b"d": queue_entry.pack(body)["d"]}
    assert len(stored[b"d"]) < len(body.encode()) / 2


def test_an_ignored_event_leaves_a_story_saying_why_with_the_mark_ttl(store, redis, keys, now):
    event = incoming(event_type="email_drafted")

    store.note_ignored(event.event_id, event.event_type, event.routing_key,
                       "event type turned off")

    story = find_event(redis, keys, event.event_id)
    assert story["status"] == "ignored"
    assert story["reason"] == "event type turned off"
    assert story["where"] == "not forwarded: event type turned off"
    assert story["received_at_ms"] == int(now * 1000)
    assert EVENT_TTL - 5 <= story["ttl_seconds"] <= EVENT_TTL + MARK_SPAN
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
    assert EVENT_TTL - 5 <= story["ttl_seconds"] <= EVENT_TTL + MARK_SPAN


def test_an_event_ignored_while_its_type_was_off_is_queued_when_sent_again(store, redis, keys):
    event = incoming()
    store.note_ignored(event.event_id, event.event_type, event.routing_key,
                       "event type turned off")

    outcome = store.accept(event)

    assert outcome.status == "queued"
    mark = mark_of(redis, keys, event)
    assert mark["status"] == "queued"
    assert "reason" not in mark  # the ignored copy's story is replaced, not mixed in
    assert total_queued(redis, keys) == 1
    assert store.accept(event).status == "duplicate"


def test_an_event_quarantined_once_and_accepted_later_tells_the_accepted_story(
    store, redis, keys
):
    event = incoming()
    store.quarantine(b"{}", "not a usable reporting webhook", {}, event.event_id)

    assert store.accept(event).status == "queued"

    assert find_event(redis, keys, event.event_id)["status"] == "queued"


def _scenario(client: Any, now: float) -> list[Any]:
    """Every path of the scripts, told as support would see it (ids and times left out)."""
    keys = KeySpace("cior", 4)
    store = EventStore(client, keys, first_occurrence_only=True, dead_letter_max_entries=10,
                       clock=lambda: now)
    first, later, other = incoming("e-1"), incoming("e-2"), incoming("e-3", delivery_id=None)
    told: list[Any] = [store.accept(event).status for event in (first, first, later, later)]
    told.append(store.accept(other).status)
    store.note_ignored("e-4", "email_drafted", "42", "event type turned off")
    store.note_ignored("e-4", "email_drafted", "42", "event type turned off")
    store.quarantine(b"{}", "not a usable reporting webhook", {}, "e-5")
    told.append(store.accept(incoming("e-5", delivery_id=None)).status)
    told.append(forget_event(client, keys, "e-3"))
    told.append(store.accept(other).status)
    for event_id in ("e-1", "e-2", "e-3", "e-4", "e-5"):
        story = find_event(client, keys, event_id)
        told.append({name: value for name, value in story.items()
                     if name not in ("ttl_seconds", "received_at_ms", "queue_entry")})
    told.append(first_flags(client, keys, "delivery-1")["flags"])
    return told


def test_the_embedded_store_tells_every_story_as_redis_does(redis, now):
    fakeredis = pytest.importorskip("fakeredis")

    embedded = _scenario(fakeredis.FakeRedis(**REDIS_DECODING), now)

    assert embedded == _scenario(redis, now)
    assert embedded[:5] == ["queued", "duplicate", "suppressed", "suppressed", "queued"]
