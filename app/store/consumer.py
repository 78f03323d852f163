"""One worker's side of the queue streams: read, claim, renew, finish, hand over, forget.

Entries stay pending in the consumer group until their destination has them, so a
killed worker loses nothing: another takes its entries over after
``claim_idle_seconds``. New entries of a shard are read only while no other worker
holds any of it (``scripts/read_new_in_order.lua``), so each person's events are sent
in the order they were accepted, however many workers share the group.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from app.store import scripts
from app.store.keys import CONSUMER_GROUP, KeySpace
from app.store.redis_health import FULL_ERRORS

logger = logging.getLogger(__name__)

# A consumer idle this long, with nothing pending, is a worker that is gone: live ones
# read their queues every pass.
FORGET_IDLE_CONSUMERS_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class Entry:
    """One queue entry as read: its shard, stream, id and fields."""

    shard: int
    queue: str
    entry_id: str
    fields: dict[str, str]

    @property
    def received_ms(self) -> int | None:
        """Stream ids start with the milliseconds at which Redis stored the entry."""
        try:
            return int(self.entry_id.split("-", 1)[0])
        except ValueError:
            return None


def consumer_name() -> str:
    """Unique per process and readable in XINFO: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


class StreamConsumer:
    """Reads the queue shards as one consumer of the group, and finishes what it read."""

    def __init__(
        self,
        redis: Any,
        keys: KeySpace,
        *,
        read_count: int,
        claim_idle_seconds: float,
        consumer: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._read_count = read_count
        self.claim_idle_seconds = claim_idle_seconds
        self.name = consumer or consumer_name()
        self._clock = clock
        self._next_claim_at = 0.0
        self._read_new = scripts.register(redis, "read_new_in_order")
        self._forget = scripts.register(redis, "forget_consumers")
        self.forget_idle_consumers_seconds = FORGET_IDLE_CONSUMERS_SECONDS
        self._next_forgetting_at = 0.0
        # (shard, stream) of every shard whose consumer group exists: the ones read.
        self._shards: list[tuple[int, str]] = list(enumerate(keys.queues()))

    def ensure_groups(self) -> bool:
        """Create the consumer group on every queue shard (idempotent).

        A full Redis refuses XGROUP CREATE even for a group that exists, yet lets the
        worker read, ack and delete, which frees memory: a shard whose group exists is
        read; one without (no stream yet: nothing to read) is left for a later pass.
        Returns whether every shard has its group.
        """
        ready: list[tuple[int, str]] = []
        for shard, queue in enumerate(self._keys.queues()):
            try:
                self._redis.xgroup_create(queue, CONSUMER_GROUP, id="0", mkstream=True)
            except FULL_ERRORS:
                if not self._group_exists(queue):
                    continue
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            ready.append((shard, queue))
        self._shards = ready
        return len(ready) == self._keys.shards

    def _group_exists(self, queue: str) -> bool:
        try:
            groups = self._redis.xinfo_groups(queue)
        except ResponseError:  # no such stream
            return False
        return any(group["name"] == CONSUMER_GROUP for group in groups)

    def read(self) -> list[Entry]:
        """This worker's own unfinished entries, stale ones of dead workers, then new ones."""
        count = self._read_count
        shards = self._shards
        if not shards:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for _shard, queue in shards:
            pipe.xreadgroup(CONSUMER_GROUP, self.name, {queue: "0"}, count=count)
        entries = [entry for (shard, _queue), reply in zip(shards, pipe.execute(), strict=True)
                   for entry in self._entries(shard, reply)]
        if not entries and self._clock() >= self._next_claim_at:
            entries += self._claim_stale(shards, count)
        if not entries:
            # Shard by shard from a random one, until the pass is full: under load each
            # worker then holds about one shard, and the others stay free for the rest.
            start = random.randrange(len(shards))  # noqa: S311 - spreading, not security
            for shard, queue in [*shards[start:], *shards[:start]]:
                reply = self._read_new(keys=[queue],
                                       args=[CONSUMER_GROUP, self.name, count - len(entries)])
                entries += self._entries(shard, _stream_reply(reply))
                if len(entries) >= count:
                    break
        gone = [entry for entry in entries if not entry.fields]
        if gone:  # pending, but deleted from the stream already: nothing left to send
            pipe = self._redis.pipeline(transaction=False)
            for entry in gone:
                pipe.xack(entry.queue, CONSUMER_GROUP, entry.entry_id)
            pipe.execute()
        return [entry for entry in entries if entry.fields]

    def _claim_stale(self, shards: list[tuple[int, str]], count: int) -> list[Entry]:
        """Take over entries a dead worker left pending longer than claim_idle_seconds."""
        idle_ms = int(self.claim_idle_seconds * 1000)
        self._next_claim_at = self._clock() + self.claim_idle_seconds / 4
        claimed: list[Entry] = []
        for shard, queue in shards:
            reply = self._redis.xautoclaim(
                queue, CONSUMER_GROUP, self.name, min_idle_time=idle_ms, count=count
            )
            found = [Entry(shard, queue, entry_id, fields or {}) for entry_id, fields in reply[1]]
            if found:
                logger.warning("took over %d entries left pending on %s", len(found), queue)
            claimed += found
        return claimed

    def _entries(self, shard: int, reply: Any) -> list[Entry]:
        """Flatten an XREADGROUP reply for one stream; deleted entries come back empty."""
        queue = self._keys.queue(shard)
        return [Entry(shard, queue, entry_id, fields or {})
                for _stream, items in reply or [] for entry_id, fields in items]

    def renew(self, entries: Iterable[Any]) -> None:
        """Reset the idle time of entries this worker still holds, so none is taken over."""
        for queue, ids in entries_by_queue(entries).items():
            self._redis.xclaim(queue, CONSUMER_GROUP, self.name, 0, ids, justid=True)

    @staticmethod
    def finish(pipe: Any, entries: Iterable[Any]) -> None:
        """Queue the ack and delete of finished entries on a pipeline the caller executes."""
        for queue, ids in entries_by_queue(entries).items():
            pipe.xack(queue, CONSUMER_GROUP, *ids)
            pipe.xdel(queue, *ids)

    def hand_over(self) -> None:
        """On the way out, mark what this worker read but did not send as abandoned.

        The entries stay pending (nothing is lost, nothing is sent twice), but with an
        idle time of claim_idle_seconds, so the next worker (the one a deploy starts)
        takes them over at once instead of after claim_idle_seconds: their shards would
        otherwise wait that long, since a shard is read only while nobody else holds any
        of it.
        """
        idle_ms = int(self.claim_idle_seconds * 1000)
        try:
            for queue in self._keys.queues():
                ids = [row["message_id"] for row in self._redis.xpending_range(
                    queue, CONSUMER_GROUP, "-", "+", 100_000, consumername=self.name)]
                if ids:
                    self._redis.xclaim(queue, CONSUMER_GROUP, self.name, 0, ids,
                                       idle=idle_ms, justid=True)
                    logger.info("handed over %d unsent entries of %s", len(ids), queue)
            self.forget_gone_consumers(only_this_one=True)  # where it holds nothing
        except RedisError as exc:  # Redis is away: they are taken over after the idle time
            logger.warning("could not hand over unsent entries (%s)", exc.__class__.__name__)

    def forget_gone_consumers_if_due(self) -> None:
        """Forget gone consumers at start, then every forget_idle_consumers_seconds."""
        if self._clock() >= self._next_forgetting_at:
            self.forget_gone_consumers()

    def forget_gone_consumers(self, only_this_one: bool = False) -> int:
        """Remove consumers that hold nothing from the groups, so XINFO lists live workers.

        Those idle for ``forget_idle_consumers_seconds`` (workers that died or left), or
        with ``only_this_one``, this worker as it leaves. Returns how many went.
        """
        idle_ms = int(self.forget_idle_consumers_seconds * 1000)
        name = self.name if only_this_one else ""
        forgotten = 0
        for queue in self._keys.queues():
            forgotten += int(self._forget(keys=[queue], args=[CONSUMER_GROUP, idle_ms, name]))
        if forgotten and not only_this_one:
            logger.info("forgot %d consumers idle for %.0fs with nothing pending",
                        forgotten, self.forget_idle_consumers_seconds)
        self._next_forgetting_at = self._clock() + self.forget_idle_consumers_seconds
        return forgotten


def entries_by_queue(entries: Iterable[Any]) -> dict[str, list[str]]:
    """Entry ids per stream, so one XACK and one XDEL per stream cover a whole request.

    An item that is not its entry's last (``completes_entry`` False) leaves the entry
    pending: the entry is finished with its last item.
    """
    by_queue: dict[str, list[str]] = {}
    for entry in entries:
        if getattr(entry, "completes_entry", True):
            by_queue.setdefault(entry.queue, []).append(entry.entry_id)
    return by_queue


def _stream_reply(reply: Any) -> Any:
    """An XREADGROUP reply from a script (flat field lists) in redis-py's parsed shape."""
    if reply and isinstance(reply[0], str | bytes):
        # fakeredis (the embedded default) drops the outer list of a one-stream reply.
        reply = [reply]
    return [
        [stream, [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))
                  for entry_id, flat in items]]
        for stream, items in reply or []
    ]
