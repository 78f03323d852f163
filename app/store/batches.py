"""Accepting a batch of events into Redis in one round trip (``scripts/accept_batch.lua``).

A batch (one POST of mParticle's Webhook output) carries one person's events, each with
an idempotency key of its own. Its new events, and only those, go into one queue entry
on the person's shard, with a mark per event and one for the batch, written together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from app.store import marks, scripts
from app.store.events import ClockSkewError
from app.store.keys import KeySpace

_CLOCK_SKEW = "this process and Redis disagree on the time"

_STATUSES = {"q": "queued", "d": "duplicate"}


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """One event of a batch as the store keeps it: its key, its type, its JSON."""

    key: str
    event_type: str
    json: str


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """The queue entry written (None: nothing was to be sent), each event's status, and
    whether the batch itself was accepted before (a retried POST)."""

    entry_id: str | None
    statuses: list[str]
    batch_seen_before: bool = False


class BatchStore:
    """Accepts batches of one direction's key space."""

    def __init__(
        self, redis: Any, keys: KeySpace, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._keys = keys
        self._clock = clock
        self._accept = scripts.register(redis, "accept_batch")

    def accept(
        self, *, routing_key: str, batch_key: str, events: list[BatchEvent], head: str,
        tail: str, send_without_events: bool,
    ) -> BatchOutcome:
        """Queue the batch's new events (as ``head + events joined by "," + tail``).

        The entry is written when any event is new, or when ``send_without_events`` and
        the batch itself is new (a batch of attribute changes, retried, is sent once).
        """
        keys = self._keys
        shard = keys.shard_for(routing_key)
        now = self._clock()
        generations = keys.mark_generations
        key_list = [keys.queue(shard)]
        args: list[Any] = [generations.span_seconds, generations.ttl_seconds, head, tail,
                           "1" if send_without_events else "0", len(events) + 1, _CLOCK_SKEW]
        for key, event_type, text in [*((e.key, e.event_type, e.json) for e in events),
                                      (batch_key, "batch", "")]:
            buckets = keys.mark_buckets(shard, key, now)
            key_list += buckets.keys
            args += [key, marks.escape(event_type), text, len(buckets.keys), buckets.oldest]
        try:
            entry, statuses, batch_status = self._accept(keys=key_list, args=args)
        except ResponseError as exc:
            if _CLOCK_SKEW in str(exc):
                raise ClockSkewError(str(exc)) from exc
            raise
        return BatchOutcome(str(entry) or None, [_STATUSES[letter] for letter in str(statuses)],
                            batch_seen_before=batch_status == "d")
