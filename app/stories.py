"""The read side for support: where is event X, what did delivery Y see, dead letters.

Everything here is off the hot path; an event_id is looked up in every queue shard
because the shard depends on the person, which the caller may not know.
"""

from __future__ import annotations

import json
import time
from typing import Any

from app import queue_entry
from app.keys import CONSUMER_GROUP, KeySpace

# Short field names keep each event's story small in Redis; these are the long ones.
STORY_FIELDS = {
    "s": "status",
    "t": "event",
    "r": "received_at_ms",
    "q": "queue_entry",
    "d": "delivery_id",
    "by": "suppressed_by",
    "at": "status_at_ms",
    "rid": "source_request_id",
    "st": "mparticle_status",
    "why": "reason",
    "n": "copies_received_after_first",
    "dl": "dead_letter_id",
    "a": "attempts",
}


# Stories of copies that were answered but not accepted; a later copy may still be.
_NOT_ACCEPTED = frozenset({"ignored", "quarantined"})


def find_event(redis: Any, keys: KeySpace, event_id: str) -> dict[str, Any] | None:
    """Everything the relay remembers of one Customer.io event, or None if unseen."""
    pipe = redis.pipeline(transaction=False)
    for shard in range(keys.shards):
        pipe.hgetall(keys.event(shard, event_id))
        pipe.ttl(keys.event(shard, event_id))
    replies = pipe.execute()
    found = [(shard, replies[2 * shard], replies[2 * shard + 1])
             for shard in range(keys.shards) if replies[2 * shard]]
    if not found:
        return None
    # A payload quarantined before its person was known left its story on another shard
    # than a later, accepted copy: the accepted copy's story is the one that matters.
    found.sort(key=lambda item: item[1].get("s") in _NOT_ACCEPTED)
    shard, story, ttl = found[0]
    return _story(redis, keys, shard, event_id, story, ttl)


def _story(
    redis: Any, keys: KeySpace, shard: int, event_id: str, raw: dict[str, str], ttl: int
) -> dict[str, Any]:
    story: dict[str, Any] = {"event_id": event_id, "seen": True, "ttl_seconds": ttl}
    story.update({STORY_FIELDS.get(name, name): value for name, value in raw.items()})
    if "received_at_ms" not in story and story.get("queue_entry"):
        # A queued event's receipt time is not stored twice: its stream id starts with it.
        story["received_at_ms"] = story["queue_entry"].split("-", 1)[0]
    if story.get("status") == "relayed":
        story.setdefault("attempts", 1)  # counted only past the first
    for name in ("received_at_ms", "status_at_ms", "mparticle_status",
                 "copies_received_after_first", "attempts"):
        if name in story:
            story[name] = int(story[name])
    status = story.get("status")
    if status == "queued":
        story["where"] = _queue_position(redis, keys, shard, story)
    else:
        story["where"] = {
            "relayed": "relayed to mParticle",
            "dead_lettered": "in the dead-letter store",
            "suppressed": "not forwarded: not the first of its type for this delivery",
            "ignored": f"not forwarded: {story.get('reason')}",
            "quarantined": "in the dead-letter store, raw (quarantined: "
                           f"{story.get('reason')})",
        }.get(status, status)
    return story


def _queue_position(redis: Any, keys: KeySpace, shard: int, story: dict[str, Any]) -> str:
    """Where a queued event is; fills in its delivery from the entry (not kept twice)."""
    entry_id = story.get("queue_entry")
    if not entry_id:
        return "queued"
    queue = keys.queue(shard)
    entry = redis.xrange(queue, entry_id, entry_id)
    if not entry:
        return "queued (entry no longer in the stream)"
    story.setdefault("delivery_id", _delivery_of(entry[0][1]))
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


def _delivery_of(fields: dict[str, str]) -> str | None:
    try:
        data = json.loads(queue_entry.unpack(fields)).get("data")
    except (KeyError, ValueError, AttributeError):
        return None
    delivery = data.get("delivery_id") if isinstance(data, dict) else None
    return str(delivery) if delivery is not None else None


def first_flags(redis: Any, keys: KeySpace, delivery_id: str) -> dict[str, Any]:
    """The first-occurrence flags set for a delivery: event type -> first event_id."""
    pipe = redis.pipeline(transaction=False)
    for shard in range(keys.shards):
        pipe.hgetall(keys.first(shard, delivery_id))
        pipe.ttl(keys.first(shard, delivery_id))
    replies = pipe.execute()
    flags: dict[str, str] = {}
    ttl = -2
    for shard in range(keys.shards):
        if replies[2 * shard]:
            flags.update(replies[2 * shard])
            ttl = max(ttl, replies[2 * shard + 1])
    return {"delivery_id": delivery_id, "flags": flags, "ttl_seconds": ttl if flags else None}


def forget_event(redis: Any, keys: KeySpace, event_id: str) -> bool:
    """Drop an event's dedup mark so a resent copy is accepted again."""
    pipe = redis.pipeline(transaction=False)
    for shard in range(keys.shards):
        pipe.delete(keys.event(shard, event_id))
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
