"""What the worker writes once a request is finished: acks, stories, dead letters, state.

Each step is one pipeline: the entries are acked and deleted, each event's story says
what became of it, and the direction's state (last answer, events relayed per minute,
credentials refused) is noted for ``/readyz``, the console and ``/admin/queue``.
Dead letters are written before their entries are acked, so a crash between the two
leaves an entry to send again, never an event in neither place.

A full Redis (maxmemory, noeviction) still acks and deletes, which frees memory, but
refuses the notes (stories, state): those are skipped with a warning rather than stop
the worker, since draining the queue is what makes room again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.store import dead_letters, marks, relay_state
from app.store.consumer import StreamConsumer
from app.store.keys import KeySpace
from app.store.redis_health import FULL_ERRORS
from app.store.stories import StoryUpdates

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    """Why events were moved to the dead-letter store."""

    reason: str
    status: int | None = None
    response: str = ""
    attempts: int = 0


class Ledger:
    """Writes the results of one direction's deliveries."""

    def __init__(
        self, redis: Any, keys: KeySpace, *, health_key: str, auth_key: str,
        dead_letter_max_entries: int,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._health_key = health_key
        self._auth_key = auth_key
        self._dead_letter_cap = dead_letter_max_entries

    def relayed(
        self, events: list[Any], endings: Iterable[tuple[Any, str]], *, status: int,
        rate_limit_percent: float | None, now_ms: int,
    ) -> None:
        """Ack and delete sent entries; each story says relayed (ending as given)."""
        pipe = self._redis.pipeline(transaction=False)
        # The destination took the credentials, so any "refused" flag is stale, e.g. one a
        # worker set before it was restarted with the corrected secret; /readyz reads it.
        pipe.delete(self._auth_key)
        StreamConsumer.finish(pipe, events)
        stories = StoryUpdates(self._keys, now_ms, "r")
        for event, ending in endings:
            stories.add(event, ending)
        stories.queue_on(pipe)
        relay_state.record_delivery(
            pipe, self._keys, self._health_key, status=status, events=len(events),
            rate_limit_percent=rate_limit_percent, now=now_ms / 1000,
        )
        _execute_skipping_refused_notes(pipe)

    def dead_lettered(self, events: list[Any], letter: DeadLetter, *, now_ms: int) -> None:
        """Move events to the dead-letter store (first), then ack them (second)."""
        pipe = self._redis.pipeline(transaction=False)
        for event in events:
            dead_letters.add(pipe, self._keys, dead_letters.event_letter(
                reason=letter.reason, event_id=event.event_id, event_type=event.event_type,
                status=letter.status, response=letter.response, attempts=letter.attempts,
                queue=event.queue, entry_id=event.entry_id, body=event.raw, at_ms=now_ms,
            ), self._dead_letter_cap)
        pipe.execute()
        pipe = self._redis.pipeline(transaction=False)
        stories = StoryUpdates(self._keys, now_ms, "d")
        reason = marks.packed_reason(letter.reason)
        StreamConsumer.finish(pipe, events)
        for event in events:
            if event.event_id:
                stories.add(event, reason)
        stories.queue_on(pipe)
        _execute_skipping_refused_notes(pipe)

    def answered(self, status: int | None, rate_limit_percent: float | None) -> None:
        """Note a failed answer for /readyz and the console (successes: in relayed)."""
        pipe = self._redis.pipeline(transaction=False)
        relay_state.record_delivery(pipe, self._keys, self._health_key, status=status,
                                    events=0, rate_limit_percent=rate_limit_percent)
        _execute_skipping_refused_notes(pipe)

    def credentials_refused(self, status: int | None) -> None:
        """Say, for every process, that the destination refuses the credentials."""
        self._redis.set(self._auth_key, f"refused:{status}")

    def credentials_pass(self) -> None:
        self._redis.delete(self._auth_key)


def _execute_skipping_refused_notes(pipe: Any) -> None:
    """Run a pipeline whose acks must hold and whose notes a full Redis may refuse.

    Acks and deletes free memory, so a full Redis takes them; a refused write (a story,
    the state) is skipped with a warning. Any other error is raised.
    """
    refused = 0
    for reply in pipe.execute(raise_on_error=False):
        if isinstance(reply, FULL_ERRORS):
            refused += 1
        elif isinstance(reply, Exception):
            raise reply
    if refused:
        logger.warning("redis is full: %d story or state updates were not written", refused)
