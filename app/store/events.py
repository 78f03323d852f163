"""Accepting an event into Redis: dedup, first occurrence, queue; quarantine and notes.

The webhook view calls :meth:`EventStore.accept` once per event: one registered script,
so one round trip through redis-py, and atomic (see ``scripts/accept_event.lua``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from app.store import dead_letters, marks, queue_entry, scripts
from app.store.keys import Buckets, KeySpace, first_field

# How the scripts refuse to write when this process's clock is too far from Redis's:
# the bucket Redis's clock picks is not among those this process passed.
_CLOCK_SKEW = "this process and Redis disagree on the time"

class ClockSkewError(Exception):
    """This process's clock is too far from Redis's to name the bucket Redis writes to."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of an event: ``queued`` (detail: queue entry id), ``duplicate``
    (detail: the first copy's status) or ``suppressed`` (detail: the earlier event_id)."""

    status: str
    detail: str


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """The parts of a validated webhook the store needs."""

    event_id: str
    event_type: str
    delivery_id: str | None
    routing_key: str
    body: str


class EventStore:
    """Accepts events into Redis and quarantines unusable payloads.

    The dedup windows (``event_ttl_seconds``, ``first_occurrence_ttl_seconds``) are the
    key space's: they shape the bucket layout.
    """

    def __init__(
        self,
        redis: Any,
        keys: KeySpace,
        *,
        first_occurrence_only: bool,
        dead_letter_max_entries: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._first_only = first_occurrence_only
        self._dead_letter_cap = dead_letter_max_entries
        self._clock = clock
        self._accept = scripts.register(redis, "accept_event")
        self._note = scripts.register(redis, "note_story")

    def accept(self, event: IncomingEvent) -> Outcome:
        """Queue the event unless it is a duplicate or not the first of its kind."""
        keys = self._keys
        shard = keys.shard_for(event.routing_key)
        delivery = event.delivery_id or ""
        check_first = self._first_only and bool(delivery)
        ((body_field, body),) = queue_entry.pack(event.body).items()
        now = self._clock()
        mark_buckets = keys.mark_buckets(shard, event.event_id, now)
        marks_span = keys.mark_generations
        # A suppressed event's story names its delivery, and a retried one is answered
        # with the flag that suppressed it: the flags are passed whenever there is one.
        first_buckets = (keys.first_buckets(shard, delivery, now) if delivery
                         else Buckets(0, []))
        firsts_span = keys.first_generations
        status, detail = self._call(
            self._accept,
            keys=[keys.queue(shard), *mark_buckets.keys, *first_buckets.keys],
            args=[
                event.event_id,
                marks.escape(event.event_type),
                body_field,
                body,
                int(now * 1000),
                len(mark_buckets.keys),
                mark_buckets.oldest,
                marks_span.span_seconds,
                marks_span.ttl_seconds,
                first_buckets.oldest,
                firsts_span.span_seconds,
                firsts_span.ttl_seconds,
                "1" if check_first else "0",
                first_field(delivery, event.event_type),
                marks.escape(delivery),
                _CLOCK_SKEW,
            ],
        )
        return Outcome(_text(status), _text(detail))

    def note_ignored(self, event_id: str, event_type: str, routing_key: str, reason: str) -> None:
        """Remember that an event was answered "ignored", and why (one round trip).

        Under the same shard as an accepted copy, so a later copy replaces this story.
        """
        now = self._clock()
        self._remember(self._keys.shard_for(routing_key), event_id, now,
                       marks.ignored(event_type, int(now * 1000), reason))

    def quarantine(
        self, body: bytes, reason: str, details: dict[str, Any], event_id: str | None = None
    ) -> str:
        """Keep a signed but unusable payload, raw, in the dead-letter stream.

        When the payload names an event_id, its story says where the payload went.
        """
        now = self._clock()
        at_ms = int(now * 1000)
        entry_id = _text(self._redis.xadd(
            self._keys.dead_letters, dead_letters.quarantined(body, reason, details, at_ms),
            maxlen=self._dead_letter_cap, approximate=True,
        ))
        if event_id:
            self._remember(self._keys.shard_for(event_id), event_id, now,
                           marks.quarantined(at_ms, entry_id, reason))
        return entry_id

    def _remember(self, shard: int, event_id: str, now: float, story: str) -> None:
        """Write the story of a copy that was not queued, unless the event has a mark."""
        buckets = self._keys.mark_buckets(shard, event_id, now)
        generations = self._keys.mark_generations
        self._call(self._note, keys=buckets.keys, args=[
            event_id, buckets.oldest, generations.span_seconds, generations.ttl_seconds, story,
            _CLOCK_SKEW,
        ])

    @staticmethod
    def _call(script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except ResponseError as exc:
            if _CLOCK_SKEW in str(exc):
                raise ClockSkewError(str(exc)) from exc
            raise


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
