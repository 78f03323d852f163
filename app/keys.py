"""Every Redis key the relay writes, in one place.

Layout (``cior`` is ``[redis] key_prefix``; ``{q3}`` is a Redis Cluster hash tag)::

    cior:{q3}:queue               stream: accepted events waiting for mParticle
    cior:{q3}:event:<event_id>    hash: dedup mark and story of one event (TTL 8 days)
                                  (also for ignored and quarantined events)
    cior:{q3}:first:<delivery_id> hash: event type -> first event_id (TTL 90 days)
    cior:dead-letters             stream: events mParticle refused, quarantined payloads
    cior:toggles                  hash: admins' event-type overrides
    cior:mparticle:auth           string: set while mParticle refuses the credentials
    cior:mparticle:health         hash: mParticle's last answer and rate-limit use
    cior:mparticle:throttle:<id>  string: every worker waits out its TTL (id: hash of the key)
    cior:relayed:<minute>         counter: events relayed that minute (TTL 1 hour)

An event's mark, its delivery's first-occurrence flags and its queue entry share a
hash tag, so the one script that writes them together runs on one Cluster node. The
shard is chosen by hashing the person, so each person's events stay in order in one
stream, and the same event always lands on the same shard (retries are deduplicated).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

CONSUMER_GROUP = "relay"


@dataclass(frozen=True)
class KeySpace:
    """Names of the relay's keys under one prefix, split into ``shards`` queue streams."""

    prefix: str = "cior"
    shards: int = 4

    def shard_for(self, routing_key: str) -> int:
        """Shard of a person (or whatever identifies the event's owner)."""
        return zlib.crc32(routing_key.encode("utf-8")) % self.shards

    def _tag(self, shard: int) -> str:
        return f"{self.prefix}:{{q{shard}}}"

    def queue(self, shard: int) -> str:
        return f"{self._tag(shard)}:queue"

    def queues(self) -> list[str]:
        return [self.queue(shard) for shard in range(self.shards)]

    def event(self, shard: int, event_id: str) -> str:
        return f"{self._tag(shard)}:event:{event_id}"

    def first(self, shard: int, delivery_id: str) -> str:
        return f"{self._tag(shard)}:first:{delivery_id}"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}:dead-letters"

    @property
    def toggles(self) -> str:
        return f"{self.prefix}:toggles"

    @property
    def toggle_changes(self) -> str:
        return f"{self.prefix}:toggles:changes"

    @property
    def mparticle_health(self) -> str:
        """Hash: mParticle's last answer and rate-limit use, as the workers saw them."""
        return f"{self.prefix}:mparticle:health"

    def relayed_minute(self, minute: int) -> str:
        """Counter of events relayed in one minute (unix time // 60); expires in an hour."""
        return f"{self.prefix}:relayed:{minute}"

    @property
    def mparticle_auth(self) -> str:
        """Set while mParticle refuses the credentials; /readyz reports not ready."""
        return f"{self.prefix}:mparticle:auth"

    def mparticle_throttle(self, credential: str) -> str:
        """String whose TTL is how long every worker waits before sending with a credential.

        ``credential`` is a short hash of the API key, never the key itself.
        """
        return f"{self.prefix}:mparticle:throttle:{credential}"
