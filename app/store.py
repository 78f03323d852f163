"""The Redis side of accepting an event: dedup, first occurrence, queue, quarantine.

The webhook view calls :meth:`EventStore.accept` once per event; it is one script
call, so one round trip, and atomic (see ``accept_event.lua``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from app import queue_entry
from app.keys import KeySpace

ACCEPT_SCRIPT = resources.files("app").joinpath("accept_event.lua").read_text()

# The story of an event that is not queued (ignored, quarantined): written only when
# the event has no mark yet, so a later copy never rewrites what happened to the first.
_NOTE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'n', 1)
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


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
    """Accepts events into Redis and quarantines unusable payloads."""

    def __init__(
        self,
        redis: Any,
        keys: KeySpace,
        *,
        event_ttl_seconds: int,
        first_occurrence_ttl_seconds: int,
        first_occurrence_only: bool,
        dead_letter_max_entries: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._event_ttl = event_ttl_seconds
        self._first_ttl = first_occurrence_ttl_seconds
        self._first_only = first_occurrence_only
        self._dead_letter_cap = dead_letter_max_entries
        self._clock = clock
        self._accept = redis.register_script(ACCEPT_SCRIPT)
        self._note = redis.register_script(_NOTE_SCRIPT)

    def accept(self, event: IncomingEvent) -> Outcome:
        """Queue the event unless it is a duplicate or not the first of its kind."""
        shard = self._keys.shard_for(event.routing_key)
        delivery = event.delivery_id or ""
        check_first = self._first_only and bool(delivery)
        ((body_field, body),) = queue_entry.pack(event.body).items()
        status, detail = self._accept(
            keys=[
                self._keys.event(shard, event.event_id),
                self._keys.first(shard, delivery),
                self._keys.queue(shard),
            ],
            args=[
                event.event_id,
                event.event_type,
                body_field,
                body,
                int(self._clock() * 1000),
                self._event_ttl,
                self._first_ttl,
                "1" if check_first else "0",
                delivery,
            ],
        )
        return Outcome(_text(status), _text(detail))

    def note_ignored(self, event_id: str, event_type: str, routing_key: str, reason: str) -> None:
        """Remember that an event was answered "ignored", and why (one round trip).

        Under the same shard as an accepted copy, so a later copy replaces this story.
        """
        self._note(
            keys=[self._keys.event(self._keys.shard_for(routing_key), event_id)],
            args=[self._event_ttl, "s", "ignored", "t", event_type, "why", reason,
                  "r", int(self._clock() * 1000)],
        )

    def quarantine(
        self, body: bytes, reason: str, details: dict[str, Any], event_id: str | None = None
    ) -> str:
        """Keep a signed but unusable payload, raw, in the dead-letter stream.

        When the payload names an event_id, its story says where the payload went.
        """
        entry = {
            "kind": "quarantined",
            "reason": reason,
            "details": json.dumps(details, sort_keys=True),
            "body": body.decode("utf-8", "replace"),
            "at_ms": int(self._clock() * 1000),
        }
        entry_id = _text(self._redis.xadd(
            self._keys.dead_letters, entry, maxlen=self._dead_letter_cap, approximate=True
        ))
        if event_id:
            self._note(
                keys=[self._keys.event(self._keys.shard_for(event_id), event_id)],
                args=[self._event_ttl, "s", "quarantined", "why", reason, "dl", entry_id,
                      "r", entry["at_ms"]],
            )
        return entry_id


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
