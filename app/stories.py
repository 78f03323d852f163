"""The read side for support: where is event X, what did delivery Y see, dead letters.

Everything here is off the hot path; an event_id is looked up in every queue shard
because the shard depends on the person, which the caller may not know.
"""

from __future__ import annotations

import time
from typing import Any

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
    "why": "dead_letter_reason",
}


def find_event(redis: Any, keys: KeySpace, event_id: str) -> dict[str, Any] | None:
    """Everything the relay remembers of one Customer.io event, or None if unseen."""
    pipe = redis.pipeline(transaction=False)
    for shard in range(keys.shards):
        pipe.hgetall(keys.event(shard, event_id))
        pipe.ttl(keys.event(shard, event_id))
    replies = pipe.execute()
    for shard in range(keys.shards):
        story, ttl = replies[2 * shard], replies[2 * shard + 1]
        if story:
            return _story(redis, keys, shard, event_id, story, ttl)
    return None


def _story(
    redis: Any, keys: KeySpace, shard: int, event_id: str, raw: dict[str, str], ttl: int
) -> dict[str, Any]:
    story: dict[str, Any] = {"event_id": event_id, "seen": True, "ttl_seconds": ttl}
    story.update({STORY_FIELDS.get(name, name): value for name, value in raw.items()})
    for name in ("received_at_ms", "status_at_ms", "mparticle_status"):
        if name in story:
            story[name] = int(story[name])
    status = story.get("status")
    if status == "queued":
        story["where"] = _queue_position(redis, keys, shard, story.get("queue_entry"))
    else:
        story["where"] = {
            "relayed": "relayed to mParticle",
            "dead_lettered": "in the dead-letter store",
            "suppressed": "not forwarded: not the first of its type for this delivery",
        }.get(status, status)
    return story


def _queue_position(redis: Any, keys: KeySpace, shard: int, entry_id: str | None) -> str:
    if not entry_id:
        return "queued"
    queue = keys.queue(shard)
    if not redis.xrange(queue, entry_id, entry_id):
        return "queued (entry no longer in the stream)"
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
