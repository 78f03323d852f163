"""The dead-letter store: events mParticle refused or that name no person, and
quarantined payloads, kept raw with the reason, for support to read and replay.

Replay puts a letter's Customer.io webhook back on the queue as it is, without
touching dedup marks, so the original's marks neither block nor are reset by it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from marshmallow import ValidationError

from app import mapping
from app.keys import KeySpace
from app.webhooks.schemas import load_webhook

# A whole stream entry id. Anything else is "not found": Redis refuses a malformed id
# ("Invalid stream ID") and reads a bare "1700000000000" as every entry of that millisecond.
_ENTRY_ID = re.compile(r"[0-9]+-[0-9]+")


@dataclass
class ReplayReport:
    """What a replay did, per dead-letter id."""

    replayed: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    still_invalid: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "replayed": self.replayed,
            "not_found": self.not_found,
            "still_invalid": self.still_invalid,
        }


def list_dead_letters(redis: Any, keys: KeySpace, count: int = 100) -> list[dict[str, Any]]:
    """The newest dead letters first."""
    entries = redis.xrevrange(keys.dead_letters, count=count)
    return [_letter(entry_id, fields) for entry_id, fields in entries]


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


def replay_dead_letters(
    redis: Any, keys: KeySpace, ids: list[str] | None = None
) -> ReplayReport:
    """Queue the letters again (all of them when ``ids`` is None) and remove them."""
    report = ReplayReport()
    if ids is None:
        entries = redis.xrange(keys.dead_letters)
    else:
        entries = []
        for entry_id in ids:
            found = (
                redis.xrange(keys.dead_letters, entry_id, entry_id)
                if _ENTRY_ID.fullmatch(entry_id)
                else []
            )
            if found:
                entries += found
            else:
                report.not_found.append(entry_id)
    for entry_id, fields in entries:
        body = fields.get("body", "")
        try:
            # As bytes: a body that is not UTF-8 (a letter written by hand) is refused.
            webhook = load_webhook(json.loads(body.encode("utf-8")))
        except (ValueError, ValidationError) as exc:
            report.still_invalid[entry_id] = str(exc)[:300]
            continue
        shard = keys.shard_for(mapping.routing_key(webhook))
        pipe = redis.pipeline(transaction=False)
        pipe.xadd(keys.queue(shard), {"b": body})
        pipe.xdel(keys.dead_letters, entry_id)
        pipe.execute()
        report.replayed.append(entry_id)
    return report


def find_dead_letter(redis: Any, keys: KeySpace, entry_id: str) -> dict[str, Any] | None:
    """One dead letter by its id, or None."""
    if not _ENTRY_ID.fullmatch(entry_id):
        return None
    found = redis.xrange(keys.dead_letters, entry_id, entry_id)
    return _letter(*found[0]) if found else None
