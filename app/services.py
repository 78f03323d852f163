"""Builds the relay's services once per app and hands them out; the seam tests use.

Everything that holds a connection (Redis, the HTTP session) is created here, never
at import time, and kept on ``app.extensions["relay"]``. This is also where a direction
is plugged into the direction-neutral worker (:meth:`Services.build_worker`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import requests
from flask import Flask

from app.config import ConfigError, Settings
from app.extension import EXTENSION
from app.metrics import RelayMetrics
from app.relay.direction import StateKeys
from app.relay.policy import DeliveryPolicy
from app.relay.worker import RelayWorker
from app.store import dead_letters, redis_health, stories
from app.store.admin_guard import ConsoleSessions, SignInFailures
from app.store.audiences import AudienceStore
from app.store.batches import BatchStore
from app.store.consumer import StreamConsumer
from app.store.events import EventStore
from app.store.keys import CONSUMER_GROUP, KeySpace
from app.store.ledger import Ledger
from app.store.throttle import SharedThrottle
from app.store.toggles import ToggleStore
from app.to_customerio import delivery as customerio_delivery
from app.to_customerio.audience_delivery import AudiencesToCustomerIO
from app.to_customerio.audience_delivery import route as audience_route
from app.to_customerio.client import CustomerIOClient
from app.to_customerio.dry_run import DryRunClient as CustomerIODryRunClient
from app.to_customerio.mapping import MappingOptions
from app.to_customerio.ulid import story_id, story_id_of_ulid
from app.to_mparticle import catalog, delivery
from app.to_mparticle.client import MParticleClient, credential_id
from app.to_mparticle.dry_run import DryRunClient

logger = logging.getLogger(__name__)


# How every Redis client of the relay (and of its tests and bench) reads replies: as str.
# A queued body is binary (app/queue_entry.py): its bytes that are not UTF-8 read as lone
# surrogates (PEP 383) instead of failing the whole reply, and
# .encode("utf-8", "surrogateescape") gives them back exactly.
REDIS_DECODING: dict[str, Any] = {"decode_responses": True, "encoding_errors": "surrogateescape"}

# The directions by name, as the admin API, the console and the CLI take them (the first
# is the default): Customer.io → mParticle, mParticle → Customer.io.
DIRECTIONS = (delivery.NAME, customerio_delivery.NAME, "to_customerio_audiences")


@dataclass
class Services:
    """The relay's long-lived objects for one app."""

    settings: Settings
    redis: Any
    keys: KeySpace
    event_store: EventStore
    toggles: ToggleStore
    metrics: RelayMetrics
    sign_in_failures: SignInFailures
    console_sessions: ConsoleSessions
    extras: dict[str, Any] = field(default_factory=dict)

    # -- mParticle → Customer.io -----------------------------------------------------

    @cached_property
    def customerio_keys(self) -> KeySpace:
        """The key space of mParticle → Customer.io: its own queue, marks, dead letters."""
        return self.keys.for_direction("c", "to-customerio")

    @cached_property
    def customerio_options(self) -> MappingOptions:
        """The [customerio] rules, and every Customer.io event type (the echo guard)."""
        config = self.settings.customerio
        names = frozenset(name for event_type in catalog.CATALOG.values()
                          for name in (event_type.name, event_type.feed_name))
        return MappingOptions(
            user_id_type=config["user_id_type"],
            include_user_attributes=config["include_user_attributes"],
            send_created_at=config["send_created_at"],
            forward_screen_views=config["forward_screen_views"],
            forward_commerce_events=config["forward_commerce_events"],
            known_event_names=names,
        )

    @cached_property
    def batch_store(self) -> BatchStore:
        return BatchStore(self.redis, self.customerio_keys)

    @cached_property
    def customerio_events(self) -> EventStore:
        """Quarantines mParticle payloads into this direction's dead letters."""
        return EventStore(self.redis, self.customerio_keys, first_occurrence_only=False,
                          dead_letter_max_entries=self.settings.relay["dead_letter_max_entries"])

    def customerio_client(self) -> CustomerIOClient:
        """The Customer.io Track API client over one pooled session (created on first use)."""
        if "customerio" not in self.extras:
            config = self.settings
            self.extras["customerio"] = CustomerIOClient(
                requests.Session(), config.customerio_base_url,
                config.secrets.customerio_site_id, config.secrets.customerio_api_key,
                connect_timeout=config.customerio["connect_timeout_seconds"],
                read_timeout=config.customerio["read_timeout_seconds"],
            )
        return self.extras["customerio"]

    def to_customerio_state_keys(self) -> StateKeys:
        """Where the mParticle → Customer.io workers keep what they saw of Customer.io."""
        secrets = self.settings.secrets
        credential = credential_id(f"{secrets.customerio_site_id}:{secrets.customerio_api_key}"
                                   if self.settings.has_customerio_credentials else "dry-run")
        return StateKeys(health=self.keys.customerio_health, auth=self.keys.customerio_auth,
                         throttle=self.keys.customerio_throttle(credential))

    def build_customerio_worker(self, *, consumer: str | None = None) -> RelayWorker:
        """A worker for mParticle → Customer.io: the client, or its dry-run stand-in."""
        config = self.settings
        config.require_customerio()
        limits = config.customerio
        client: Any = (CustomerIODryRunClient() if limits["dry_run"]
                       else self.customerio_client())
        state = self.to_customerio_state_keys()
        direction = customerio_delivery.ToCustomerIO(
            client, state, self.customerio_options,
            max_items_per_request=limits["max_items_per_request"],
            max_request_bytes=limits["max_request_bytes"],
            max_item_bytes=limits["max_item_bytes"],
        )
        return self._worker(direction, self.customerio_keys, state, consumer,
                            min_interval_seconds=1 / limits["max_requests_per_second"])

    # -- mParticle's audiences → Customer.io ------------------------------------------

    @cached_property
    def audience_keys(self) -> KeySpace:
        """The key space of audiences: people's memberships, their queue, dead letters."""
        return self.keys.for_direction("a", "to-customerio-audiences")

    @cached_property
    def audience_store(self) -> AudienceStore:
        config = self.settings
        return AudienceStore(
            self.redis, self.audience_keys,
            membership_ttl_seconds=config.customerio["audience_membership_ttl_seconds"],
            delivery_ttl_seconds=config.dedup["event_ttl_seconds"],
        )

    @cached_property
    def audience_events(self) -> EventStore:
        """Quarantines audience records into the audiences' dead letters."""
        return EventStore(self.redis, self.audience_keys, first_occurrence_only=False,
                          dead_letter_max_entries=self.settings.relay["dead_letter_max_entries"])

    def person_audiences(self, person: str) -> dict[str, Any] | None:
        """A person's audiences and the last change applied per audience, or None.

        ``person`` is a customer id, an email or a ``cio_`` id, as mParticle sent it.
        """
        value = person.strip()
        candidates = [f"id:{value}", f"email:{value.lower()}"]
        if value.startswith("cio_"):
            candidates.insert(0, f"cio_id:{value[4:]}")
        for routing_key in candidates:
            history = self.audience_store.history(routing_key)
            if history:
                audiences = sorted(audience for audience, last in history.items()
                                   if last["member"])
                return {"person": routing_key, "audiences": audiences,
                        "changes": {str(audience): last
                                    for audience, last in sorted(history.items())}}
        return None

    def build_audience_worker(self, *, consumer: str | None = None) -> RelayWorker:
        """A worker for audiences → Customer.io (the same client and shared throttle)."""
        config = self.settings
        config.require_customerio()
        limits = config.customerio
        client: Any = (CustomerIODryRunClient() if limits["dry_run"]
                       else self.customerio_client())
        state = self.to_customerio_state_keys()
        direction = AudiencesToCustomerIO(
            client, state, self.customerio_options, self.audience_store,
            one_attribute_per_audience=limits["one_attribute_per_audience"],
            max_items_per_request=limits["max_items_per_request"],
            max_request_bytes=limits["max_request_bytes"],
            max_item_bytes=limits["max_item_bytes"],
        )
        return self._worker(direction, self.audience_keys, state, consumer,
                            min_interval_seconds=1 / limits["max_requests_per_second"])

    def build_workers(self) -> list[RelayWorker]:
        """Every worker this process runs: one per direction that is on (and audiences)."""
        workers = [self.build_worker()]
        if self.settings.to_customerio_enabled:
            workers.append(self.build_customerio_worker())
        if self.settings.audiences_enabled:
            workers.append(self.build_audience_worker())
        return workers

    # -- Customer.io → mParticle -----------------------------------------------------

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

    def require_redis_that_keeps_data(self) -> None:
        """Refuse (ConfigError) a Redis whose maxmemory-policy may evict the relay's data."""
        require_redis_that_keeps_data(self.redis)

    def to_mparticle_state_keys(self) -> StateKeys:
        """Where the Customer.io → mParticle workers keep what they saw of mParticle."""
        # A hash of the API key names the shared wait, never the key itself.
        credential = credential_id(self.settings.secrets.mparticle_api_key or "dry-run")
        return StateKeys(health=self.keys.mparticle_health, auth=self.keys.mparticle_auth,
                         throttle=self.keys.mparticle_throttle(credential))

    def build_worker(self, *, consumer: str | None = None) -> RelayWorker:
        """A worker for Customer.io → mParticle: the client, or its dry-run stand-in."""
        config = self.settings
        config.require_mparticle()
        relay = config.relay
        client: Any = DryRunClient() if config.mparticle["dry_run"] else self.mparticle_client()
        state = self.to_mparticle_state_keys()
        direction = delivery.ToMParticle(
            client, state,
            environment=config.mparticle["environment"],
            event_names=config.mparticle["event_names"],
            max_batch_bytes=relay["max_batch_bytes"],
            max_batches_per_request=relay["max_batches_per_request"],
            max_request_bytes=relay["max_request_bytes"],
        )
        return self._worker(direction, self.keys, state, consumer)

    def _worker(
        self, direction: Any, keys: KeySpace, state: StateKeys, consumer: str | None, *,
        min_interval_seconds: float = 0.0,
    ) -> RelayWorker:
        """The direction-neutral worker around one direction, on its own key space."""
        relay = self.settings.relay
        return RelayWorker(
            direction,
            StreamConsumer(self.redis, keys, read_count=relay["read_count"],
                           claim_idle_seconds=relay["claim_idle_seconds"], consumer=consumer),
            SharedThrottle(self.redis, state.throttle),
            Ledger(self.redis, keys, health_key=state.health, auth_key=state.auth,
                   dead_letter_max_entries=relay["dead_letter_max_entries"]),
            DeliveryPolicy(
                retry_schedule_seconds=tuple(relay["retry_schedule_seconds"]),
                retry_jitter_ratio=relay["retry_jitter_ratio"],
                slow_down_at_rate_limit_percent=relay["slow_down_at_rate_limit_percent"],
                slow_down_max_seconds=relay["slow_down_max_seconds"],
                min_interval_seconds=min_interval_seconds,
            ),
            self.metrics,
            memory_watch=redis_health.MemoryWatch(
                self.redis, warn_at_percent=self.settings.redis["memory_warning_percent"]),
            poll_interval_seconds=relay["poll_interval_seconds"],
            auth_recheck_seconds=relay["auth_recheck_seconds"],
        )

    def find_event(self, event_id: str) -> dict[str, Any] | None:
        """An event's story by its id (either direction's), or None if never seen.

        A Customer.io event_id, or an mParticle event's idempotency key.
        """
        # mParticle's events go by their story id: from their key, inside their ULID, or
        # as given (a dead letter names it).
        customerio_ids = [story_id_of_ulid(event_id) or story_id(event_id), event_id]
        for keys, ids, delivery_of, direction, destination in (
                (self.keys, [event_id], delivery.delivery_of, delivery.NAME, "mParticle"),
                (self.customerio_keys, customerio_ids, _no_delivery, customerio_delivery.NAME,
                 "Customer.io")):
            for found_id in ids:
                story = stories.find_event(self.redis, keys, found_id, delivery_of)
                if story is not None:
                    if story["where"] == "relayed":
                        story["where"] = f"relayed to {destination}"
                    return {"direction": direction, **story, "event_id": event_id}
        return None

    def replay_sources(self) -> list[tuple[KeySpace, Any]]:
        """Each direction's dead letters (its key space) and how to route a letter's body."""
        options = self.customerio_options
        return [(self.keys, delivery.route),
                (self.customerio_keys, lambda body: customerio_delivery.route(options, body)),
                (self.audience_keys, lambda body: audience_route(options, body))]

    def first_flags(self, delivery_id: str) -> dict[str, Any]:
        """The first-occurrence flags set for a Customer.io delivery (every catalog type,
        and the types an admin added)."""
        event_types = [toggle.name for toggle in self.toggles.list()]
        return stories.first_flags(self.redis, self.keys, delivery_id, event_types)

    def direction_keys(self) -> dict[str, KeySpace]:
        """Every direction's key space by its name, on or off (letters outlive a direction)."""
        return {delivery.NAME: self.keys, customerio_delivery.NAME: self.customerio_keys,
                "to_customerio_audiences": self.audience_keys}

    def directions_on(self) -> list[str]:
        """The directions this relay takes: to_mparticle, and to_customerio when it is on."""
        names = [delivery.NAME]
        if self.settings.to_customerio_enabled:
            names.append(customerio_delivery.NAME)
        if self.settings.audiences_enabled:
            names.append("to_customerio_audiences")
        return names

    def queue_stats(self, keys: KeySpace | None = None) -> dict[str, int]:
        """Length, pending and dead letters, summed over the queue's shards.

        Of Customer.io → mParticle unless another direction's ``keys`` are given.
        """
        keys = self.keys if keys is None else keys
        pipe = self.redis.pipeline(transaction=False)
        for queue in keys.queues():
            pipe.xlen(queue)
        pipe.xlen(keys.dead_letters)
        *lengths, dead = pipe.execute()
        pending = 0
        for queue in keys.queues():
            try:
                pending += int(self.redis.xpending(queue, CONSUMER_GROUP)["pending"])
            except Exception as exc:  # no group yet: nothing is pending
                if "NOGROUP" not in str(exc):
                    raise
        return {"length": sum(lengths), "pending": pending, "dead_letters": dead}

    def direction_stats(self, direction: str) -> dict[str, Any]:
        """One direction's queue: length, pending, oldest_age_seconds and dead letters."""
        keys = self.direction_keys()[direction]
        return {**self.queue_stats(keys),
                "oldest_age_seconds": stories.oldest_age_seconds(self.redis, keys)}

    def list_dead_letters(self, direction: str, count: int = 100) -> list[dict[str, Any]]:
        """One direction's newest dead letters first, each with its "direction"."""
        letters = dead_letters.list_dead_letters(self.redis, self.direction_keys()[direction],
                                                 count)
        return [{**letter, "direction": direction} for letter in letters]

    def scrape_stats(self) -> dict[str, Any]:
        """What /metrics reads from Redis at scrape time: every direction on (its queue,
        dead letters, oldest age, refused credentials), and Redis's memory."""
        auth = {"to_mparticle": self.keys.mparticle_auth,
                "to_customerio": self.keys.customerio_auth,
                "to_customerio_audiences": self.keys.customerio_auth}
        directions: dict[str, dict[str, Any]] = {}
        for name in self.directions_on():
            figures = self.direction_stats(name)
            figures["credentials_refused"] = int(bool(self.redis.get(auth[name])))
            # Audiences are part of mParticle → Customer.io: its series count them too.
            label = customerio_delivery.NAME if name == "to_customerio_audiences" else name
            directions[label] = _sum_figures(directions.get(label), figures)
        stats: dict[str, Any] = {"directions": directions}
        memory = redis_health.memory_state(self.redis)
        if memory is not None:
            stats["redis_memory_used_bytes"] = memory.used_bytes
            stats["redis_memory_max_bytes"] = memory.max_bytes
        return stats


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


def _sum_figures(known: dict[str, Any] | None, more: dict[str, Any]) -> dict[str, Any]:
    """Two queues' figures as one: counts added, the oldest age and refusals the larger."""
    if known is None:
        return more
    summed = {name: known.get(name, 0) + more.get(name, 0)
              for name in ("length", "pending", "dead_letters")}
    ages = [age for age in (known.get("oldest_age_seconds"), more.get("oldest_age_seconds"))
            if age is not None]
    summed["oldest_age_seconds"] = max(ages) if ages else None
    summed["credentials_refused"] = max(known["credentials_refused"],
                                        more["credentials_refused"])
    return summed


def _no_delivery(_body: str) -> str | None:
    """mParticle batches belong to no Customer.io delivery."""
    return None


def require_redis_that_keeps_data(redis: Any) -> None:
    """Refuse (ConfigError) a Redis whose maxmemory-policy may evict the relay's data.

    A Redis that cannot be reached now is let pass: the process starts, /readyz says
    not ready, and the webhook answers 503 until it can.
    """
    try:
        problem = redis_health.eviction_problem(redis_health.memory_state(redis))
    except redis_health.UNAVAILABLE_ERRORS as exc:
        logger.warning("could not check Redis's maxmemory-policy at start (%s)",
                       exc.__class__.__name__)
        return
    if problem:
        raise ConfigError(f"REDIS_URL: {problem}")


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
        sign_in_failures=SignInFailures(client, keys),
        console_sessions=ConsoleSessions(client, keys),
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
