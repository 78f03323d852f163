"""Builds the relay's services once per app and hands them out; the seam tests use.

Everything that holds a connection (Redis, the HTTP session) is created here, never
at import time, and kept on ``app.extensions["relay"]``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import requests
from flask import Flask

from app.config import Settings
from app.keys import CONSUMER_GROUP, KeySpace
from app.metrics import RelayMetrics
from app.mparticle import MParticleClient
from app.store import EventStore
from app.toggles import ToggleStore

logger = logging.getLogger(__name__)

EXTENSION = "relay"

# How every Redis client of the relay (and of its tests and bench) reads replies: as str.
# A queued body is binary (app/queue_entry.py): its bytes that are not UTF-8 read as lone
# surrogates (PEP 383) instead of failing the whole reply, and
# .encode("utf-8", "surrogateescape") gives them back exactly.
REDIS_DECODING: dict[str, Any] = {"decode_responses": True, "encoding_errors": "surrogateescape"}


@dataclass
class Services:
    """The relay's long-lived objects for one app."""

    settings: Settings
    redis: Any
    keys: KeySpace
    event_store: EventStore
    toggles: ToggleStore
    metrics: RelayMetrics
    extras: dict[str, Any] = field(default_factory=dict)

    def mparticle_client(self) -> MParticleClient:
        """The mParticle client over one pooled session (created on first use)."""
        if "mparticle" not in self.extras:
            config = self.settings
            session = requests.Session()
            self.extras["mparticle"] = MParticleClient(
                session,
                config.mparticle_base_url,
                config.secrets.mparticle_api_key,
                config.secrets.mparticle_api_secret,
                connect_timeout=config.mparticle["connect_timeout_seconds"],
                read_timeout=config.mparticle["read_timeout_seconds"],
            )
        return self.extras["mparticle"]

    def queue_stats(self) -> dict[str, int]:
        """Length, pending and dead letters, summed over the queue's shards."""
        pipe = self.redis.pipeline(transaction=False)
        for queue in self.keys.queues():
            pipe.xlen(queue)
        pipe.xlen(self.keys.dead_letters)
        *lengths, dead = pipe.execute()
        pending = 0
        for queue in self.keys.queues():
            try:
                pending += int(self.redis.xpending(queue, CONSUMER_GROUP)["pending"])
            except Exception as exc:  # no group yet: nothing is pending
                if "NOGROUP" not in str(exc):
                    raise
        return {"length": sum(lengths), "pending": pending, "dead_letters": dead}


def build_redis(settings: Settings) -> Any:
    """A Redis client for REDIS_URL, or the embedded in-process store when it is unset."""
    if settings.embedded:
        import fakeredis

        return fakeredis.FakeRedis(server=fakeredis.FakeServer(), **REDIS_DECODING)
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.retry import Retry

    timeout = settings.redis["socket_timeout_seconds"]
    url = settings.redis_url or ""
    options = {
        **REDIS_DECODING,
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout(timeout),
        "health_check_interval": 30,
        # One immediate retry, on connection errors only: it replaces a pooled connection
        # that a Redis restart closed. No backoff and no retry of a timeout: each would add
        # its wait to the webhook's answer, and Customer.io gives it 4 s in all; a fast
        # 503 makes it retry later with nothing lost.
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }
    if url.startswith("redis+cluster://") or url.startswith("rediss+cluster://"):
        from redis.cluster import RedisCluster

        # On a cluster a connection error also means "refresh the slot map and try again"
        # (a failover), so the one quick retry covers timeouts too.
        options["retry"] = Retry(NoBackoff(), 1)
        return RedisCluster.from_url(url.replace("+cluster", "", 1), **options)
    import redis

    return redis.Redis.from_url(url, **options)


def connect_timeout(socket_timeout: float) -> float:
    """Seconds to wait for a TCP connection to Redis: half the command timeout, at most 1 s.

    A refused connection fails at once anyway; this bounds the unreachable-host case, so
    connect + one retry + a command stay within the command budget.
    """
    return min(1.0, socket_timeout / 2)


def init_services(app: Flask, settings: Settings, redis_client: Any | None = None) -> Services:
    """Create the services for this app (tests may pass their own Redis client)."""
    client = redis_client if redis_client is not None else build_redis(settings)
    keys = KeySpace(
        settings.redis["key_prefix"],
        settings.relay["queue_shards"],
        event_ttl_seconds=settings.dedup["event_ttl_seconds"],
        first_occurrence_ttl_seconds=settings.dedup["first_occurrence_ttl_seconds"],
    )
    services = Services(
        settings=settings,
        redis=client,
        keys=keys,
        event_store=EventStore(
            client,
            keys,
            first_occurrence_only=settings.dedup["first_occurrence_only"],
            dead_letter_max_entries=settings.relay["dead_letter_max_entries"],
        ),
        toggles=ToggleStore(
            client, keys, settings.events, refresh_seconds=settings.redis["toggle_refresh_seconds"]
        ),
        metrics=RelayMetrics(),
    )
    app.extensions[EXTENSION] = services
    return services


def services(app: Flask) -> Services:
    return app.extensions[EXTENSION]


def settings(app: Flask) -> Settings:
    return app.extensions[EXTENSION].settings


def event_store(app: Flask) -> EventStore:
    return app.extensions[EXTENSION].event_store


def toggles(app: Flask) -> ToggleStore:
    return app.extensions[EXTENSION].toggles


def metrics(app: Flask) -> RelayMetrics:
    return app.extensions[EXTENSION].metrics
