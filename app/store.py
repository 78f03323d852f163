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

from app.keys import KeySpace

ACCEPT_SCRIPT = resources.files("app").joinpath("accept_event.lua").read_text()


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

    def accept(self, event: IncomingEvent) -> Outcome:
        """Queue the event unless it is a duplicate or not the first of its kind."""
        shard = self._keys.shard_for(event.routing_key)
        delivery = event.delivery_id or ""
        check_first = self._first_only and bool(delivery)
        status, detail = self._accept(
            keys=[
                self._keys.event(shard, event.event_id),
                self._keys.first(shard, delivery),
                self._keys.queue(shard),
            ],
            args=[
                event.event_id,
                event.event_type,
                event.body,
                int(self._clock() * 1000),
                self._event_ttl,
                self._first_ttl,
                "1" if check_first else "0",
                delivery,
            ],
        )
        return Outcome(_text(status), _text(detail))

    def quarantine(self, body: bytes, reason: str, details: dict[str, Any]) -> str:
        """Keep a signed but unusable payload, raw, in the dead-letter stream."""
        entry = {
            "kind": "quarantined",
            "reason": reason,
            "details": json.dumps(details, sort_keys=True),
            "body": body.decode("utf-8", "replace"),
            "at_ms": int(self._clock() * 1000),
        }
        entry_id = self._redis.xadd(
            self._keys.dead_letters, entry, maxlen=self._dead_letter_cap, approximate=True
        )
        return _text(entry_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
