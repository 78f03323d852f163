"""Moving marks and flags kept in keys of their own (before buckets) into buckets.

Until bucket hashes (``app/store/keys.py``), each event's mark was a hash
``<prefix>:{q<shard>}:event:<event_id>`` (fields s, t, q, n, by, r, d, at, rid, st,
why, dl, a) and each delivery's flags a hash ``<prefix>:{q<shard>}:first:<delivery_id>``
(event type -> first event_id). The relay no longer reads them: ``cio-relay dedup
migrate``, run right after deploying, moves what they say into the present generation's
buckets (which expire no sooner than they would have) and deletes them. It may run
again at any time: a key already moved is gone, and a mark or flag the relay has
written since is kept as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from app.store import marks, scripts
from app.store.keys import KeySpace, first_field

_STATUS_LETTERS = {word: letter for letter, word in marks.STATUSES.items()}

# A bucket of flags is named <generation>:<bucket>; a delivery's key of its own, by its id.
_BUCKET_NAME = re.compile(r"[0-9]+:[0-9]+")
_TAGGED = re.compile(r"\{q([0-9]+)\}:(event|first):(.*)", re.DOTALL)


@dataclass
class MigrationReport:
    """What a migration moved: fields written into buckets, keys deleted."""

    marks: int = 0
    flags: int = 0
    keys: int = 0
    unreadable: int = 0  # old marks whose status was not one the relay wrote


def migrate(redis: Any, keys: KeySpace, now: float, batch: int = 1000) -> MigrationReport:
    """Move every mark and flag kept in a key of its own into buckets."""
    report = MigrationReport()
    move = scripts.register(redis, "move_legacy_keys")
    found: list[str] = []
    for key in redis.scan_iter(match=f"{keys.prefix}:{{q*}}:*", count=batch):
        if _TAGGED.fullmatch(key[len(keys.prefix) + 1:]):
            found.append(key)
        if len(found) >= batch:
            _move_batch(redis, keys, move, found, now, report)
            found = []
    _move_batch(redis, keys, move, found, now, report)
    return report


def _move_batch(
    redis: Any, keys: KeySpace, move: Any, found: list[str], now: float,
    report: MigrationReport,
) -> None:
    pipe = redis.pipeline(transaction=False)
    for key in found:
        pipe.type(key)
        pipe.hgetall(key)
    replies = pipe.execute()
    for i, key in enumerate(found):
        kind_of_key, old = replies[2 * i], replies[2 * i + 1]
        match = _TAGGED.fullmatch(key[len(keys.prefix) + 1:])
        if kind_of_key != "hash" or not old or match is None:
            continue
        shard, kind, name = int(match[1]), match[2], match[3]
        if kind == "first" and _BUCKET_NAME.fullmatch(name) and all(":" in f for f in old):
            continue  # a bucket already
        if kind == "event":
            story = legacy_story(old)
            if story is None:
                report.unreadable += 1
                continue
            fields = [name, story]
            buckets = keys.mark_buckets(shard, name, now)
            generations = keys.mark_generations
        else:
            fields = [part for event_type, event_id in old.items()
                      for part in (first_field(name, event_type), event_id)]
            buckets = keys.first_buckets(shard, name, now)
            generations = keys.first_generations
        moved = move(keys=[key, *buckets.keys], args=[
            buckets.oldest, generations.span_seconds, generations.ttl_seconds, *fields])
        report.keys += 1
        if kind == "event":
            report.marks += moved
        else:
            report.flags += moved


def legacy_story(old: dict[str, str]) -> str | None:
    """The packed story (``app/store/marks.py``) of a mark kept as a hash of its own."""
    try:
        return _packed(old)
    except (KeyError, ValueError):  # not as the relay wrote it
        return None


def _packed(old: dict[str, str]) -> str | None:
    letter = _STATUS_LETTERS.get(old.get("s", ""))
    if letter is None:
        return None
    copies = old.get("n", "0").lstrip("0")
    event_type = marks.escape(old.get("t", ""))
    head = f"{letter}{copies}|{event_type}"
    reason = marks.packed_reason(old.get("why", ""))
    if letter in "qrd":
        entry = old.get("q", "0-0")
        if letter == "q":
            return f"{head}|{entry}"
        received_ms = int(entry.split("-", 1)[0])
        after = marks.base36(int(old.get("at", received_ms)) - received_ms)
        if letter == "d":
            return f"{head}|{marks.packed_entry(entry)}|{after}|{reason}"
        ending = marks.relayed_ending(int(old.get("st", 202)), old["rid"], int(old.get("a", 1)))
        return f"{head}|{marks.packed_entry(entry)}|{after}|{ending}"
    received = marks.base36(int(old.get("r", 0)))
    if letter == "s":  # the event it was suppressed by is the delivery's flag
        return f"{head}|{received}|{marks.escape(old.get('d', ''))}"
    if letter == "i":
        return f"{head}|{received}|{reason}"
    return f"{letter}{copies}||{received}|{old.get('dl', '')}|{reason}"
