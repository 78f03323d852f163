"""Each person's audiences, kept in Redis, and the changes that reach Customer.io.

mParticle's audience output sends one change per record (a person joined or left one
audience), so the full ``SegmentMembership`` needs state: per person a hash of audience
id -> the time and direction of the last change applied, and the audience's name. A
delivery's changes are applied per queue shard in one script each
(``scripts/apply_audience_changes.lua``), all in one pipeline: one round trip per
delivery. A delivery is remembered by its id for the dedup window, so a retried one is
answered again without being applied twice (and its changes, being no newer than the
ones applied, would change nothing anyway).

The state lives ``membership_ttl_seconds`` after a person's last change: the longer, the
more memory (docs/audiences.md), the shorter, the sooner a person who changes nothing
for that long is sent a ``SegmentMembership`` that forgets audiences they are still in.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.store import scripts
from app.store.keys import KeySpace


@dataclass(frozen=True, slots=True)
class PersonChanges:
    """One person's changes of one delivery, and the queue entry to write if any applies."""

    routing_key: str
    body: str  # the queue entry's text
    changes: list[tuple[int, int, bool, str]]  # (audience id, changed at ms, member, name)


@dataclass(frozen=True, slots=True)
class Applied:
    """What a delivery did: per person the entry written (None: no change applied), and
    per change whether it applied (False: older than the one applied already)."""

    entries: list[str | None]
    applied: list[list[bool]]
    delivery_seen_before: bool


class AudienceStore:
    """People's audience state, their queue entries, and the deliveries already taken."""

    def __init__(self, redis: Any, keys: KeySpace, *, membership_ttl_seconds: int,
                 delivery_ttl_seconds: int) -> None:
        self._redis = redis
        self._keys = keys
        self._state_ttl = membership_ttl_seconds
        self._delivery_ttl = delivery_ttl_seconds


    def apply(self, request_id: str, people: Sequence[PersonChanges]) -> Applied:
        """Apply a delivery's changes and queue each changed person; remember the delivery."""
        by_shard: dict[int, list[int]] = defaultdict(list)
        for index, person in enumerate(people):
            by_shard[self._keys.shard_for(person.routing_key)].append(index)
        pipe = self._redis.pipeline(transaction=False)
        order = []
        for shard, indexes in by_shard.items():
            keys = [self._keys.queue(shard)]
            args: list[Any] = [self._state_ttl]
            for index in indexes:
                person = people[index]
                keys.append(self._keys.audience_state(shard, person.routing_key))
                args += [len(person.changes), person.body]
                for audience_id, changed_at, member, name in person.changes:
                    args += [audience_id, changed_at, "1" if member else "0", name]
            scripts.queue_on(pipe, "apply_audience_changes", keys, args)
            order.append(indexes)
        pipe.set(self._keys.audience_delivery(_delivery_name(request_id)), "1", nx=True,
                 ex=self._delivery_ttl)
        *replies, first_time = pipe.execute()
        entries: list[str | None] = [None] * len(people)
        applied: list[list[bool]] = [[] for _ in people]
        for indexes, reply in zip(order, replies, strict=True):
            for position, index in enumerate(indexes):
                entry, letters = reply[2 * position], reply[2 * position + 1]
                entries[index] = str(entry) or None
                applied[index] = [letter == "a" for letter in str(letters)]
        return Applied(entries, applied, delivery_seen_before=not first_time)

    def members(self, targets: Sequence[tuple[int, str]]) -> list[dict[int, str]]:
        """For each (shard, routing key): audience id -> name of every audience they are in."""
        pipe = self._redis.pipeline(transaction=False)
        for shard, routing_key in targets:
            pipe.hgetall(self._keys.audience_state(shard, routing_key))
        return [_members_of(state) for state in pipe.execute()]

    def history(self, routing_key: str) -> dict[int, dict[str, Any]]:
        """A person's last change applied per audience (for support): when, in or out, name."""
        shard = self._keys.shard_for(routing_key)
        state = self._redis.hgetall(self._keys.audience_state(shard, routing_key))
        told = {}
        for audience, value in state.items():
            at, member, name = value.split("|", 2)
            told[int(audience)] = {"changed_at_ms": int(at), "member": member == "1",
                                   "name": name}
        return told


def _delivery_name(request_id: str) -> str:
    """A delivery's id as its key holds it: as sent when plain, else by its hash (an id
    with text Redis cannot take, e.g. a lone surrogate, is still the same id)."""
    if request_id.isascii() and len(request_id) <= 200:
        return request_id
    return "sha256:" + hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()


def _members_of(state: dict[str, str]) -> dict[int, str]:
    members = {}
    for audience, value in state.items():
        _at, member, name = value.split("|", 2)
        if member == "1":
            members[int(audience)] = name
    return members
