"""Replaying dead letters: each letter's body goes back on its queue as it is.

A replayed body is checked again by its direction's decoder (``route``), which also
names the person it belongs to, hence its queue shard. Dedup marks are not touched, so
the original's marks neither block the replay nor are reset by it. Each letter is
claimed first, so however many replays race (two admins, the CLI beside the console),
each letter is queued once; the others are told it was replayed already.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.store import dead_letters
from app.store.keys import KeySpace

# A body -> the routing key of the person it belongs to; ValueError if it is not usable.
Route = Callable[[str], str]


@dataclass
class ReplayReport:
    """What a replay did, per dead-letter id."""

    replayed: list[str] = field(default_factory=list)
    already_replayed: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    still_invalid: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "replayed": self.replayed,
            "already_replayed": self.already_replayed,
            "not_found": self.not_found,
            "still_invalid": self.still_invalid,
        }


def replay(relay: Any, ids: list[str] | None = None) -> ReplayReport:
    """Replay with an app's services: every direction's letters, each on its own queue.

    An id is looked for in every direction's dead letters; it is "not found" only when
    no direction has it.
    """
    total = ReplayReport()
    missing: list[str] | None = None
    for keys, route in relay.replay_sources():
        report = replay_dead_letters(relay.redis, keys, route, ids)
        total.replayed += report.replayed
        total.already_replayed += report.already_replayed
        total.still_invalid.update(report.still_invalid)
        missing = (report.not_found if missing is None
                   else [entry_id for entry_id in missing if entry_id in report.not_found])
    total.not_found = missing or []
    return total


def replay_dead_letters(
    redis: Any, keys: KeySpace, route: Route, ids: list[str] | None = None
) -> ReplayReport:
    """Queue the letters again (all of them when ``ids`` is None) and remove them."""
    report = ReplayReport()
    if ids is None:
        letters = dead_letters.all_letters(redis, keys)
    else:
        letters = []
        for entry_id in ids:
            fields = dead_letters.stored_letter(redis, keys, entry_id)
            if fields is not None:
                letters.append((entry_id, fields))
            elif dead_letters.was_replayed(redis, keys, entry_id):
                report.already_replayed.append(entry_id)
            else:
                report.not_found.append(entry_id)
    for entry_id, fields in letters:
        body = fields.get("body", "")
        try:
            routing_key = route(body)
        except ValueError as exc:
            report.still_invalid[entry_id] = str(exc)[:300]
            continue
        if not dead_letters.claim_for_replay(redis, keys, entry_id):
            report.already_replayed.append(entry_id)
            continue
        dead_letters.requeue(redis, keys, entry_id, keys.shard_for(routing_key), body)
        report.replayed.append(entry_id)
    return report
