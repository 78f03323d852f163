"""The dead-letter stream: what a destination refused for good, events that cannot be
sent, and quarantined payloads, each kept raw with its reason for support to read and
replay.

This module owns a letter's field names; the worker, the quarantine and replay write
and read letters through it.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from app.store import queue_entry
from app.store.keys import KeySpace

# A whole stream entry id. Anything else is "not found": Redis refuses a malformed id
# ("Invalid stream ID") and reads a bare "1700000000000" as every entry of that millisecond.
_ENTRY_ID = re.compile(r"[0-9]+-[0-9]+")

# A destination's answer is kept up to this many characters: enough to read its reason.
MAX_RESPONSE_CHARS = 2000

# How long a replayed letter's claim is kept: a replay that races another one, or comes
# back within the hour, is told the letter was replayed already.
REPLAY_CLAIM_SECONDS = 3600


def quarantined(body: bytes, reason: str, details: dict[str, Any], at_ms: int) -> dict[str, Any]:
    """The fields of a letter for a payload that was authenticated but is unusable."""
    return {
        "kind": "quarantined",
        "reason": reason,
        "details": json.dumps(details, sort_keys=True),
        "body": body.decode("utf-8", "replace"),
        "at_ms": at_ms,
    }


def event_letter(
    *, reason: str, event_id: str, event_type: str, status: int | None, response: str,
    attempts: int, queue: str, entry_id: str, body: str, at_ms: int,
) -> dict[str, Any]:
    """The fields of a letter for a queued event that will not be sent."""
    return {
        "kind": "event",
        "reason": reason,
        "event_id": event_id,
        "event": event_type,
        "status": "" if status is None else str(status),
        "response": response[:MAX_RESPONSE_CHARS],
        "attempts": attempts,
        "queue": queue,
        "entry_id": entry_id,
        "body": body,
        "at_ms": at_ms,
    }


def add(pipe: Any, keys: KeySpace, letter: dict[str, Any], max_entries: int) -> None:
    """Queue the XADD of a letter on a pipeline (the stream kept near ``max_entries``)."""
    pipe.xadd(keys.dead_letters, letter, maxlen=max_entries, approximate=True)


def list_dead_letters(redis: Any, keys: KeySpace, count: int = 100) -> list[dict[str, Any]]:
    """The newest dead letters first."""
    entries = redis.xrevrange(keys.dead_letters, count=count)
    return [_letter(entry_id, fields) for entry_id, fields in entries]


def all_letters(redis: Any, keys: KeySpace) -> list[tuple[str, dict[str, str]]]:
    """Every letter as stored (id, fields), oldest first."""
    return redis.xrange(keys.dead_letters)


def stored_letter(redis: Any, keys: KeySpace, entry_id: str) -> dict[str, str] | None:
    """One letter's fields as stored, or None."""
    if not _ENTRY_ID.fullmatch(entry_id):
        return None
    found = redis.xrange(keys.dead_letters, entry_id, entry_id)
    return found[0][1] if found else None


def find_dead_letter(redis: Any, keys: KeySpace, entry_id: str) -> dict[str, Any] | None:
    """One dead letter by its id, as people read it, or None."""
    fields = stored_letter(redis, keys, entry_id)
    return _letter(entry_id, fields) if fields is not None else None


def claim_for_replay(redis: Any, keys: KeySpace, entry_id: str) -> bool:
    """Take a letter for this replay only (SET NX): False when another replay has it."""
    return bool(redis.set(keys.replayed_letter(entry_id), str(int(time.time())), nx=True,
                          ex=REPLAY_CLAIM_SECONDS))


def was_replayed(redis: Any, keys: KeySpace, entry_id: str) -> bool:
    """Whether a replay took this letter within the last REPLAY_CLAIM_SECONDS."""
    if not _ENTRY_ID.fullmatch(entry_id):  # never a letter's id (nor a key Redis can hold)
        return False
    return bool(redis.exists(keys.replayed_letter(entry_id)))


def requeue(redis: Any, keys: KeySpace, entry_id: str, shard: int, body: str) -> None:
    """Put a letter's body back on a queue shard as it is, and remove the letter.

    Call it only with the letter claimed (:func:`claim_for_replay`): the claim, not
    this step, makes two racing replays queue a letter once. The entry comes before the
    removal, so a crash between the two keeps the letter (it can be replayed again once
    the claim expires) rather than lose it.
    """
    pipe = redis.pipeline(transaction=False)
    pipe.xadd(keys.queue(shard), {queue_entry.PLAIN_FIELD: body})
    pipe.xdel(keys.dead_letters, entry_id)
    pipe.execute()


def _letter(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    letter: dict[str, Any] = {"id": entry_id, **{name: _readable(value)
                                                 for name, value in fields.items()}}
    if "details" in letter:
        letter["details"] = json.loads(letter["details"])
    if "at_ms" in letter:
        seconds = int(letter["at_ms"]) / 1000
        letter["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    return letter


def _readable(value: str) -> str:
    """A letter's value as valid UTF-8 text, whoever wrote it: non-UTF-8 bytes become U+FFFD.

    The relay writes letters as text, but its clients read any bytes (REDIS_DECODING in
    app/services.py), so a letter written by hand could hold lone surrogates, which
    JSON and the console must never show.
    """
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
