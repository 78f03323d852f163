"""An event's story in Redis: read for support, rewritten as the worker finishes it.

Reads are off the hot path; an event_id is looked up in every queue shard because the
shard depends on the person, which the caller may not know, and in every generation of
buckets that may still hold its mark (``app/store/keys.py``). What a body means (which
delivery it belongs to) is its direction's to say: the caller passes ``delivery_of``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from app.store import marks, queue_entry, scripts
from app.store.keys import CONSUMER_GROUP, KeySpace, first_field

# A queued body -> the delivery it belongs to, if any (its direction knows).
DeliveryOf = Callable[[str], "str | None"]

# Stories of copies that were answered but not accepted; a later copy may still be.
_NOT_ACCEPTED = frozenset({"ignored", "quarantined"})


def find_event(
    redis: Any, keys: KeySpace, event_id: str, delivery_of: DeliveryOf
) -> dict[str, Any] | None:
    """Everything the relay remembers of one event, or None if unseen."""
    now = time.time()
    looked_in = [(shard, bucket) for shard in range(keys.shards)
                 for bucket in keys.mark_buckets(shard, event_id, now).keys]
    pipe = redis.pipeline(transaction=False)
    for _, bucket in looked_in:
        pipe.hget(bucket, event_id)
        pipe.ttl(bucket)
    replies = pipe.execute()
    found = [(shard, marks.unpack(replies[2 * i]), replies[2 * i + 1])
             for i, (shard, _) in enumerate(looked_in) if replies[2 * i] is not None]
    if not found:
        return None
    # A payload quarantined before its person was known left its story on another shard
    # than a later, accepted copy: the accepted copy's story is the one that matters.
    found.sort(key=lambda item: item[1]["status"] in _NOT_ACCEPTED)
    shard, told, ttl = found[0]
    return _story(redis, keys, shard, event_id, told, ttl, delivery_of)


def _story(
    redis: Any, keys: KeySpace, shard: int, event_id: str, told: dict[str, Any], ttl: int,
    delivery_of: DeliveryOf,
) -> dict[str, Any]:
    # The TTL is the mark's bucket's: at least what is left of the event's dedup window.
    story: dict[str, Any] = {"event_id": event_id, "seen": True, "ttl_seconds": ttl, **told}
    status = story["status"]
    if status == "relayed":
        story.setdefault("attempts", 1)  # counted only past the first
    if status == "suppressed" and story.get("delivery_id") and story.get("event"):
        # Not kept twice: the delivery's flag for the type names the first event.
        for _, flags in _flags(redis, keys, [shard], story["delivery_id"], [story["event"]]):
            if story["event"] in flags:
                story["suppressed_by"] = flags[story["event"]]
    if status == "queued":
        story["where"] = _queue_position(redis, keys, shard, story, delivery_of)
    else:
        story["where"] = {
            "relayed": "relayed",
            "dead_lettered": "in the dead-letter store",
            "suppressed": "not forwarded: not the first of its type for this delivery",
            "ignored": f"not forwarded: {story.get('reason')}",
            "quarantined": "in the dead-letter store, raw (quarantined: "
                           f"{story.get('reason')})",
        }.get(status, status)
    return story


def _queue_position(
    redis: Any, keys: KeySpace, shard: int, story: dict[str, Any], delivery_of: DeliveryOf
) -> str:
    """Where a queued event is; fills in its delivery from the entry (not kept twice)."""
    entry_id = story.get("queue_entry")
    if not entry_id:
        return "queued"
    queue = keys.queue(shard)
    entry = redis.xrange(queue, entry_id, entry_id)
    if not entry:
        return "queued (entry no longer in the stream)"
    story.setdefault("delivery_id", _delivery_in(entry[0][1], delivery_of))
    try:
        pending = redis.xpending_range(queue, CONSUMER_GROUP, entry_id, entry_id, 1)
    except Exception as exc:  # no consumer group yet: no worker has started
        if "NOGROUP" not in str(exc):
            raise
        pending = []
    if pending:
        consumer = pending[0]["consumer"]
        return f"being sent by worker {consumer} (delivered {pending[0]['times_delivered']}x)"
    return "waiting in the queue"


def _delivery_in(fields: dict[str, str], delivery_of: DeliveryOf) -> str | None:
    try:
        return delivery_of(queue_entry.unpack(fields))
    except (KeyError, ValueError):
        return None


def first_flags(
    redis: Any, keys: KeySpace, delivery_id: str, event_types: list[str]
) -> dict[str, Any]:
    """The first-occurrence flags set for a delivery: event type -> first event_id."""
    found = _flags(redis, keys, range(keys.shards), delivery_id, event_types)
    flags: dict[str, str] = {}
    ttl = -2
    for ttl_left, in_bucket in found:
        if in_bucket:
            flags.update(in_bucket)
            ttl = max(ttl, ttl_left)
    return {"delivery_id": delivery_id, "flags": flags, "ttl_seconds": ttl if flags else None}


def _flags(
    redis: Any, keys: KeySpace, shards: Iterable[int], delivery_id: str, event_types: list[str]
) -> list[tuple[int, dict[str, str]]]:
    """(TTL, type -> first event_id) of each bucket that may hold the delivery's flags.

    Newest generation last, so a flag written again (after a ``dedup forget``) wins.
    """
    now = time.time()
    fields = [first_field(delivery_id, event_type) for event_type in event_types]
    pipe = redis.pipeline(transaction=False)
    looked_in = 0
    for shard in shards:
        for bucket in keys.first_buckets(shard, delivery_id, now).keys:
            pipe.hmget(bucket, fields)
            pipe.ttl(bucket)
            looked_in += 1
    replies = pipe.execute()
    found = []
    for i in range(looked_in):
        values, ttl = replies[2 * i], replies[2 * i + 1]
        found.append((ttl, {event_type: value for event_type, value in zip(
            event_types, values, strict=True) if value is not None}))
    return found


def forget_event(redis: Any, keys: KeySpace, event_id: str) -> bool:
    """Drop an event's dedup mark so a resent copy is accepted again."""
    now = time.time()
    pipe = redis.pipeline(transaction=False)
    for shard in range(keys.shards):
        for bucket in keys.mark_buckets(shard, event_id, now).keys:
            pipe.hdel(bucket, event_id)
    return any(pipe.execute())


def oldest_age_seconds(redis: Any, keys: KeySpace, now_ms: int | None = None) -> float | None:
    """Age of the oldest entry still in the queue, from its stream id."""
    pipe = redis.pipeline(transaction=False)
    for queue in keys.queues():
        pipe.xrange(queue, count=1)
    firsts = [reply[0][0] for reply in pipe.execute() if reply]
    if not firsts:
        return None
    oldest = min(int(entry_id.split("-", 1)[0]) for entry_id in firsts)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    return max(0.0, (now - oldest) / 1000)


class StoryUpdates:
    """The story rewrites of one pass, gathered per queue shard: one script call each.

    ``status`` is the new story's letter: ``r`` relayed or ``d`` dead-lettered
    (``scripts/tell_stories.lua``).
    """

    def __init__(self, keys: KeySpace, now_ms: int, status: str) -> None:
        self._keys = keys
        self._now_ms = now_ms
        self._status = status
        self._by_shard: dict[int, tuple[list[str], list[Any]]] = {}

    def add(self, event: Any, ending: str) -> None:
        """Rewrite this event's story, if it has one, to end with ``ending``."""
        # Its mark was written when its entry was (a replayed dead letter's: earlier), so
        # the buckets alive then hold it; the newest first, where it nearly always is.
        received = (event.received_ms or self._now_ms) / 1000
        buckets = self._keys.mark_buckets(event.shard, event.event_id, received).keys[::-1]
        keys, args = self._by_shard.setdefault(event.shard, ([], [self._now_ms, self._status]))
        keys += buckets
        args += [event.event_id, len(buckets), marks.escape(event.event_type),
                 event.entry_id, ending]

    def queue_on(self, pipe: Any) -> None:
        """Queue the rewrites on a pipeline (one script call per shard)."""
        for keys, args in self._by_shard.values():
            scripts.queue_on(pipe, "tell_stories", keys, args)
