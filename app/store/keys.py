"""Every Redis key the relay writes, in one place.

Layout (``cior`` is ``[redis] key_prefix``; ``{q3}`` is a Redis Cluster hash tag)::

    cior:{q3}:queue                     stream: accepted events waiting for mParticle
    cior:{q3}:marks:<generation>:<b>    hash: event_id -> that event's dedup mark and
                                        story, packed (app/store/marks.py); also for ignored
                                        and quarantined events
    cior:{q3}:first:<generation>:<b>    hash: "<delivery_id>:<event type>" -> the
                                        event_id forwarded first
    cior:dead-letters                   stream: events mParticle refused, quarantined payloads
    cior:dead-letters:replayed:<id>     string: this letter was taken by a replay (1 hour)
    cior:toggles                        hash: admins' event-type overrides
    cior:mparticle:auth                 string: set while mParticle refuses the credentials
    cior:mparticle:health               hash: mParticle's last answer and rate-limit use
    cior:mparticle:throttle:<id>        string: every worker waits out its TTL (id: hash of the key)
    cior:relayed:<minute>               counter: events relayed that minute (TTL 1 hour)
    cior:admin:failures:<address>       counter: wrong admin tokens from one client address
                                        (TTL: the rest of its throttle window)
    cior:admin:session:<hash>           string: a live console sign-in (TTL: its lifetime;
                                        <hash>: a hash of the id its cookie carries)

mParticle → Customer.io has a key space of its own (``KeySpace.for_direction``): the
same shapes under ``{c3}`` (queue, marks: by each mParticle event's idempotency key, and
by each batch's) and ``cior:to-customerio:`` (dead letters, relayed counters), beside
``cior:customerio:auth``, ``:health`` and ``:throttle:<id>``.

Marks and first-occurrence flags are fields of *bucket* hashes, not keys of their own:
a Redis key with a TTL costs about 100 bytes before its contents, while a field of a
compact hash (a listpack: by default at most 512 fields, none longer than 64 bytes)
costs its own bytes and a few more. ``<b>`` is a stable hash of the event_id (of the
delivery_id for flags) over MARK_BUCKETS (FIRST_BUCKETS) buckets per shard;
``<generation>`` is Redis's time when the field was written divided by the generation's
span (4 days for marks, 45 for flags: half the default TTLs). A bucket expires at the
end of its generation plus the TTL, so every field in it lives at least the TTL (the
idempotency window) and less than the TTL plus one span. See :class:`Generations`.

An event's mark, its delivery's first-occurrence flags and its queue entry share a
hash tag, so the one script that writes them together runs on one Cluster node. The
shard is chosen by hashing the person, so each person's events stay in order in one
stream, and the same event always lands on the same shard (retries are deduplicated).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from functools import cached_property

CONSUMER_GROUP = "relay"

# Buckets per queue shard and generation. Marks: with 4 shards, 8,192 per 4-day
# generation, so 100,000 to 1 million events a generation fill them with 12 to 122
# marks each (a listpack up to 512: about 3.5 million), and a bucket key's ~130 bytes
# weigh 1-11 bytes per mark. Flags: a generation spans 45 days, so it holds ~11 times
# more per event a day than marks do: 16,384 buckets hold up to ~7 million flags per
# generation as listpacks, past that as hashtables (about twice the bytes a flag, and
# no more scanning). A lookup in a listpack reads it through (~7 ns a field), which is
# what caps a bucket's size; a hashtable bucket frees its fields one by one when it
# expires, on Redis's main thread (about 2 ms per 10,000, unless lazyfree-lazy-expire).
# Changing either count on a live system loses every mark or flag: they are then looked
# up in other buckets.
MARK_BUCKETS = 2048
FIRST_BUCKETS = 4096

# How long a generation of buckets is: half the default TTL (8 days for marks, 90 for
# flags), so a lookup reads the 3 buckets that may hold the field (4 within
# CLOCK_SKEW_SECONDS of a change of generation), and a field outlives its TTL by up to
# half of it (a quarter on average). Fixed, not derived from the TTL settings, so that
# changing a TTL forgets nothing: lookups then pass more or fewer generations.
MARK_GENERATION_SECONDS = 4 * 24 * 3600
FIRST_GENERATION_SECONDS = 45 * 24 * 3600

# How far a web process's clock may be from Redis's (Redis's own clock decides a field's
# generation and its bucket's expiry): it then still reads every bucket that may hold a
# mark, and writes. Past that, near a change of generation, it is refused (503) rather
# than write where the others would not look. A web off by more than the webhook's
# timestamp tolerance (300 s by default) refuses every signed webhook anyway.
CLOCK_SKEW_SECONDS = 300


@dataclass(frozen=True)
class Generations:
    """Time cut into spans; a field lives in the bucket of the span it was written in.

    The bucket of generation ``g`` expires at ``(g + 1) * span + ttl``: a field written
    at time ``t`` in it lives at least ``ttl`` and less than ``ttl + span``. A lookup
    passes every generation that may be alive by a Redis clock up to CLOCK_SKEW_SECONDS
    from this process's: ttl / span + 1 of them, one more within CLOCK_SKEW_SECONDS of a
    change of generation.
    """

    ttl_seconds: int
    span_seconds: int

    def of(self, unix_seconds: float) -> int:
        """The generation of a moment."""
        return int(unix_seconds // self.span_seconds)

    def expires_at(self, generation: int) -> int:
        """Unix time at which a generation's buckets expire."""
        return (generation + 1) * self.span_seconds + self.ttl_seconds

    def live(self, now: float) -> range:
        """Every generation whose buckets may be alive at ``now``, oldest first.

        Redis's time, which decides, is taken to be within CLOCK_SKEW_SECONDS of ``now``.
        """
        margin = min(CLOCK_SKEW_SECONDS, self.span_seconds)
        # A bucket of generation g is alive while (g + 1) * span + ttl > Redis's time, and
        # none is written after Redis's present generation.
        return range(self.of(now - self.ttl_seconds - margin), self.of(now + margin) + 1)


def first_field(delivery_id: str, event_type: str) -> str:
    """The field of a first-occurrence bucket that flags one type of one delivery."""
    return f"{delivery_id}:{event_type}"


@dataclass(frozen=True, slots=True)
class Buckets:
    """The bucket keys that may hold one field, oldest generation first."""

    oldest: int  # the generation of keys[0]; keys[i] is generation oldest + i
    keys: list[str]


@dataclass(frozen=True)
class KeySpace:
    """Names of the relay's keys under one prefix, split into ``shards`` queue streams."""

    prefix: str = "cior"
    shards: int = 4
    # The dedup windows: how many generations of buckets a lookup reads, and when a
    # bucket expires.
    event_ttl_seconds: int = 8 * 24 * 3600
    first_occurrence_ttl_seconds: int = 90 * 24 * 3600
    mark_buckets_per_shard: int = MARK_BUCKETS
    first_buckets_per_shard: int = FIRST_BUCKETS
    # Each direction has a key space of its own: its shards' hash tag ("q" for Customer.io
    # → mParticle, "c" for mParticle → Customer.io) and a scope before its other keys
    # ("" and "to-customerio").
    shard_tag: str = "q"
    scope: str = ""

    def for_direction(self, shard_tag: str, scope: str) -> KeySpace:
        """The same windows and shards, under another direction's names."""
        return replace(self, shard_tag=shard_tag, scope=scope)

    @property
    def _scoped(self) -> str:
        return f"{self.prefix}:{self.scope}" if self.scope else self.prefix

    @cached_property
    def mark_generations(self) -> Generations:
        return Generations(self.event_ttl_seconds, MARK_GENERATION_SECONDS)

    @cached_property
    def first_generations(self) -> Generations:
        return Generations(self.first_occurrence_ttl_seconds, FIRST_GENERATION_SECONDS)

    def shard_for(self, routing_key: str) -> int:
        """Shard of a person (or whatever identifies the event's owner)."""
        return zlib.crc32(routing_key.encode("utf-8")) % self.shards

    def _tag(self, shard: int) -> str:
        return f"{self.prefix}:{{{self.shard_tag}{shard}}}"

    def queue(self, shard: int) -> str:
        return f"{self._tag(shard)}:queue"

    def queues(self) -> list[str]:
        return [self.queue(shard) for shard in range(self.shards)]

    @staticmethod
    def _bucket(name: str, buckets: int) -> int:
        # The high bits of a multiplicative hash of the crc: crc32 alone is linear, and
        # its low bits follow the shard's (crc32 of the person) when ids share digits.
        mixed = zlib.crc32(name.encode("utf-8")) * 0x9E3779B1 & 0xFFFFFFFF
        return mixed * buckets >> 32

    def marks(self, shard: int, generation: int, bucket: int) -> str:
        """Hash of the marks of one generation's events that fall in one bucket."""
        return f"{self._tag(shard)}:marks:{generation}:{bucket}"

    def first(self, shard: int, generation: int, bucket: int) -> str:
        """Hash of the first-occurrence flags of one generation's deliveries in one bucket."""
        return f"{self._tag(shard)}:first:{generation}:{bucket}"

    def mark_buckets(self, shard: int, event_id: str, now: float) -> Buckets:
        """Every bucket that may hold this event's mark at ``now``."""
        bucket = self._bucket(event_id, self.mark_buckets_per_shard)
        live = self.mark_generations.live(now)
        return Buckets(live.start, [self.marks(shard, g, bucket) for g in live])

    def first_buckets(self, shard: int, delivery_id: str, now: float) -> Buckets:
        """Every bucket that may hold this delivery's first-occurrence flags at ``now``."""
        bucket = self._bucket(delivery_id, self.first_buckets_per_shard)
        live = self.first_generations.live(now)
        return Buckets(live.start, [self.first(shard, g, bucket) for g in live])

    @property
    def dead_letters(self) -> str:
        return f"{self._scoped}:dead-letters"

    def replayed_letter(self, entry_id: str) -> str:
        """Set by the one replay that takes a letter: the others leave it alone."""
        return f"{self._scoped}:dead-letters:replayed:{entry_id}"

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
        return f"{self._scoped}:relayed:{minute}"

    @property
    def mparticle_auth(self) -> str:
        """Set while mParticle refuses the credentials; /readyz reports not ready."""
        return f"{self.prefix}:mparticle:auth"

    def mparticle_throttle(self, credential: str) -> str:
        """String whose TTL is how long every worker waits before sending with a credential.

        ``credential`` is a short hash of the API key, never the key itself.
        """
        return f"{self.prefix}:mparticle:throttle:{credential}"

    def admin_failures(self, client_address: str) -> str:
        """Counter of wrong admin tokens from one client address, gone when its window ends.

        The address is kept readable, so an operator can find and delete a lockout.
        """
        return f"{self.prefix}:admin:failures:{client_address}"

    def console_session(self, session_hash: str) -> str:
        """String: one live console sign-in; sign-out deletes it, its TTL ends it.

        ``session_hash`` is a hash of the session id, never the id the cookie carries.
        """
        return f"{self.prefix}:admin:session:{session_hash}"

    @property
    def customerio_health(self) -> str:
        """Hash: Customer.io's last answer, as the workers saw it."""
        return f"{self.prefix}:customerio:health"

    @property
    def customerio_auth(self) -> str:
        """Set while Customer.io refuses the Track API credentials; /readyz reports it."""
        return f"{self.prefix}:customerio:auth"

    def customerio_throttle(self, credential: str) -> str:
        """The shared wait before sending with one Track API credential (a hash of it)."""
        return f"{self.prefix}:customerio:throttle:{credential}"

    def audience_state(self, shard: int, routing_key: str) -> str:
        """Hash: one person's audiences (id -> last change applied: time, in or out, name)."""
        return f"{self._tag(shard)}:audiences:{routing_key}"

    def audience_delivery(self, request_id: str) -> str:
        """Set once a Firehose delivery (by its request id) was taken, for the dedup window."""
        return f"{self._scoped}:deliveries:{request_id}"
