"""The relay loop: read the queue, map, batch, send to mParticle, ack, retry, dead-letter.

Error policy, in order (CONTRACT §5):

* 202: acknowledged and deleted from the stream; each event's story says "relayed".
* 429: wait Retry-After, else exponential backoff with full jitter; retry byte-identical.
* 5xx, timeouts, connection errors: the same backoff; nothing is dropped.
* 400/413/422: split the request in halves until the refused batch is alone, and
  dead-letter only that batch, with mParticle's answer.
* 401/403: stop sending, keep everything queued, report not ready, one log line;
  re-check the credentials every ``auth_recheck_seconds`` and resume by itself.

Entries stay pending in the consumer group until mParticle has them, so a killed
worker loses nothing: another takes its entries over after ``claim_idle_seconds``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from marshmallow import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import catalog, mapping
from app.batching import (
    BulkRequest,
    QueuedEvent,
    build_batches,
    pack_requests,
    split_request,
)
from app.config import Settings
from app.keys import CONSUMER_GROUP, KeySpace
from app.metrics import RelayMetrics
from app.mparticle import AuthError, BulkResult, RejectedError, RetryableError
from app.webhooks.schemas import load_webhook

logger = logging.getLogger(__name__)

# Sets a field on an event's story only while the story exists, so a relayed event
# whose mark has expired (or was forgotten) does not leave a key without a TTL behind.
_UPDATE_STORY = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV))
end
return 0
"""

# Backoff while Redis itself is unreachable: the worker waits and reconnects by itself.
_REDIS_RETRY_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class DeadLetter:
    """Why events were moved to the dead-letter store."""

    reason: str
    status: int | None = None
    response: str = ""
    attempts: int = 0


class DryRunClient:
    """Stands in for mParticle when ``[mparticle] dry_run`` is on: logs, sends nothing."""

    def send_bulk(self, body: bytes) -> BulkResult:
        logger.info("dry run: would POST /bulkevents %s", body.decode("utf-8")[:4000])
        return BulkResult(status=202, rate_limit_percent_used=None)

    def check_credentials(self) -> str:
        return "ok (dry run: nothing is sent)"


def consumer_name() -> str:
    """Unique per process and readable in XINFO: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


class RelayWorker:
    """Moves queued events to mParticle; run() until stop() is called."""

    def __init__(
        self,
        redis: Any,
        keys: KeySpace,
        client: Any,
        settings: Settings,
        metrics: RelayMetrics,
        *,
        consumer: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._client = client
        self._settings = settings
        self._relay = settings.relay
        self._metrics = metrics
        self.consumer = consumer or consumer_name()
        self._clock = clock
        self._stopping = threading.Event()
        self._update_story = redis.register_script(_UPDATE_STORY)
        self._auth_blocked_until: float | None = None
        self._next_claim_at = 0.0
        self._event_style = settings.mparticle["event_names"]

    # -- lifecycle -------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the request in flight, then return from run()."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(max(0.0, seconds))

    def ensure_groups(self) -> None:
        """Create the consumer group on every queue shard (idempotent)."""
        for queue in self._keys.queues():
            try:
                self._redis.xgroup_create(queue, CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def run(self, *, once: bool = False) -> None:
        """Relay until stopped (or one pass with ``once=True``, for tests)."""
        logger.info("worker %s started", self.consumer)
        redis_failures = 0
        groups_ready = False
        while not self.stopping:
            try:
                if not groups_ready:
                    self.ensure_groups()
                    groups_ready = True
                worked = self.relay_pending()
                redis_failures = 0
            except (RedisConnectionError, RedisTimeoutError) as exc:
                redis_failures += 1
                groups_ready = False
                wait = min(_REDIS_RETRY_MAX_SECONDS, 0.5 * 2 ** min(redis_failures, 6))
                logger.error("redis unavailable (%s); retrying in %.1fs",
                             exc.__class__.__name__, wait)
                self._sleep(wait)
                worked = True
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                logger.warning("consumer group missing (Redis restarted empty?); recreating")
                self.ensure_groups()
                worked = True
            if once:
                break
            if not worked:
                self._sleep(self._relay["poll_interval_seconds"])
        logger.info("worker %s stopped", self.consumer)

    # -- one pass --------------------------------------------------------------------

    def relay_pending(self) -> bool:
        """Read what is due and send it; return whether there was anything to do."""
        if self._auth_blocked_until is not None and not self._credentials_pass():
            return False
        entries = self._read_entries()
        if not entries:
            return False
        events = self._load(entries)
        batches, too_large = build_batches(
            events,
            environment=self._settings.mparticle["environment"],
            max_batch_bytes=self._relay["max_batch_bytes"],
        )
        if too_large:
            self._dead_letter(too_large, DeadLetter("event larger than an mParticle batch"))
        requests = pack_requests(
            batches,
            max_batches=self._relay["max_batches_per_request"],
            max_request_bytes=self._relay["max_request_bytes"],
        )
        for request in requests:
            if self.stopping or self._auth_blocked_until is not None:
                break
            self._deliver(request)
        return True

    def _read_entries(self) -> list[tuple[int, str, dict[str, str]]]:
        """This worker's own unfinished entries, stale ones of dead workers, then new ones."""
        count = self._relay["read_count"]
        entries: list[tuple[int, str, dict[str, str]]] = []
        queues = self._keys.queues()
        pipe = self._redis.pipeline(transaction=False)
        for queue in queues:
            pipe.xreadgroup(CONSUMER_GROUP, self.consumer, {queue: "0"}, count=count)
        for shard, reply in enumerate(pipe.execute()):
            entries += _entries_of(shard, reply)
        if not entries and self._clock() >= self._next_claim_at:
            entries += self._claim_stale(queues, count)
        if not entries:
            pipe = self._redis.pipeline(transaction=False)
            for queue in queues:
                pipe.xreadgroup(CONSUMER_GROUP, self.consumer, {queue: ">"}, count=count)
            for shard, reply in enumerate(pipe.execute()):
                entries += _entries_of(shard, reply)
        gone = [(shard, entry_id) for shard, entry_id, fields in entries if not fields]
        if gone:  # pending, but deleted from the stream already: nothing left to send
            pipe = self._redis.pipeline(transaction=False)
            for shard, entry_id in gone:
                pipe.xack(self._keys.queue(shard), CONSUMER_GROUP, entry_id)
            pipe.execute()
        return [entry for entry in entries if entry[2]]

    def _claim_stale(self, queues: list[str], count: int) -> list[tuple[int, str, dict[str, str]]]:
        """Take over entries a dead worker left pending longer than claim_idle_seconds."""
        idle_ms = int(self._relay["claim_idle_seconds"] * 1000)
        self._next_claim_at = self._clock() + self._relay["claim_idle_seconds"] / 4
        claimed: list[tuple[int, str, dict[str, str]]] = []
        for shard, queue in enumerate(queues):
            reply = self._redis.xautoclaim(
                queue, CONSUMER_GROUP, self.consumer, min_idle_time=idle_ms, count=count
            )
            found = [(shard, entry_id, fields) for entry_id, fields in reply[1]]
            if found:
                logger.warning("took over %d entries left pending on %s", len(found), queue)
            claimed += found
        return claimed

    def _load(self, entries: list[tuple[int, str, dict[str, str]]]) -> list[QueuedEvent]:
        """Map queue entries to mParticle events; dead-letter the ones that cannot be."""
        events: list[QueuedEvent] = []
        unusable: list[tuple[QueuedEvent, DeadLetter]] = []
        for shard, entry_id, fields in entries:
            queue = self._keys.queue(shard)
            try:
                # The view's own check again: an entry written by anything else (a hand,
                # an older version) must become a dead letter, not stop the worker.
                webhook = load_webhook(json.loads(fields["b"]))
            except (KeyError, TypeError, ValueError, ValidationError):
                placeholder = QueuedEvent(
                    queue, shard, entry_id, "", "", {}, {}, raw=str(fields.get("b", fields))
                )
                unusable.append((placeholder, DeadLetter("queue entry is not a reporting webhook")))
                continue
            event_id = webhook["event_id"]
            name = f"{webhook['object_type']}_{webhook['metric']}"
            event_type = catalog.CATALOG.get(name)
            event_name = event_type.event_name(self._event_style) if event_type else name
            identities = mapping.person_identities(webhook)
            event = QueuedEvent(
                queue=queue, shard=shard, entry_id=entry_id, event_id=event_id,
                event_type=name, identities=identities,
                event=mapping.map_event(webhook, event_name),
                received_ms=_entry_ms(entry_id), raw=fields["b"],
            )
            if not identities:
                unusable.append(
                    (event, DeadLetter("no customer_id or email identifies the person"))
                )
                continue
            events.append(event)
        for event, letter in unusable:
            self._dead_letter([event], letter)
        return events

    # -- delivery --------------------------------------------------------------------

    def _deliver(self, request: BulkRequest) -> None:
        """Send one request until mParticle takes it (or refuses part of it for good)."""
        attempt = 0
        while not self.stopping:
            attempt += 1
            started = time.perf_counter()
            try:
                result = self._client.send_bulk(request.body)
            except RetryableError as exc:
                self._metrics.request_seconds.observe(time.perf_counter() - started)
                reason = "throttled" if exc.status == 429 else "unavailable"
                self._metrics.retried.labels(reason=reason).inc()
                wait = exc.retry_after if exc.retry_after is not None else self._backoff(attempt)
                logger.warning(
                    "mParticle %s (%s); retrying %d events in %.1fs",
                    reason, exc.status or exc.reason, len(request.events), wait,
                    extra={"status": exc.status, "attempt": attempt},
                )
                self._wait_keeping_claim(request, wait)
                continue
            except RejectedError as exc:
                self._metrics.request_seconds.observe(time.perf_counter() - started)
                self._handle_rejection(request, exc, attempt)
                return
            except AuthError as exc:
                self._metrics.request_seconds.observe(time.perf_counter() - started)
                self._block_on_auth(exc)
                return
            self._metrics.request_seconds.observe(time.perf_counter() - started)
            self._acknowledge(request, result)
            return

    def _handle_rejection(self, request: BulkRequest, exc: RejectedError, attempt: int) -> None:
        if len(request.batches) > 1:
            logger.warning(
                "mParticle refused a request of %d batches (%s); splitting it",
                len(request.batches), exc.status,
            )
            for half in split_request(request):
                if self._auth_blocked_until is not None:
                    return  # credentials refused while splitting: the rest stays pending
                self._deliver(half)
            return
        letter = DeadLetter(
            "mParticle refused the batch", status=exc.status, response=exc.body, attempts=attempt
        )
        self._dead_letter(request.events, letter)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter, capped."""
        ceiling = min(
            self._relay["retry_max_seconds"], self._relay["retry_base_seconds"] * 2 ** (attempt - 1)
        )
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not security

    def _wait_keeping_claim(self, request: BulkRequest, seconds: float) -> None:
        """Wait before a retry, holding on to the entries all the while.

        A wait (Retry-After, backoff up to retry_max_seconds) can outlast
        claim_idle_seconds; without a renewed claim another worker would take the
        entries over and send them while this one still means to.
        """
        renew_every = self._relay["claim_idle_seconds"] / 3
        remaining = seconds
        while True:
            self._keep_claimed(request)
            step = min(remaining, renew_every)
            self._sleep(step)
            remaining -= step
            if remaining <= 0 or self.stopping:
                return

    def _keep_claimed(self, request: BulkRequest) -> None:
        """Reset the entries' idle time so no other worker takes over what we still retry."""
        by_queue: dict[str, list[str]] = {}
        for event in request.events:
            by_queue.setdefault(event.queue, []).append(event.entry_id)
        for queue, ids in by_queue.items():
            self._redis.xclaim(queue, CONSUMER_GROUP, self.consumer, 0, ids, justid=True)

    def _block_on_auth(self, exc: AuthError) -> None:
        if self._auth_blocked_until is None:
            logger.error(
                "mParticle refused the credentials (HTTP %s): sending stopped, everything stays "
                "queued; fix MPARTICLE_API_KEY / MPARTICLE_API_SECRET. Checking again every %.0fs.",
                exc.status, self._relay["auth_recheck_seconds"],
            )
        self._auth_blocked_until = self._clock() + self._relay["auth_recheck_seconds"]
        self._redis.set(self._keys.mparticle_auth, f"refused:{exc.status}")

    def _credentials_pass(self) -> bool:
        """While blocked, re-check the credentials when due; True once they pass."""
        if self._clock() < (self._auth_blocked_until or 0):
            return False
        try:
            self._client.check_credentials()
        except AuthError as exc:
            self._block_on_auth(exc)
            return False
        except RetryableError:
            self._auth_blocked_until = self._clock() + self._relay["auth_recheck_seconds"]
            return False
        logger.info("mParticle accepts the credentials again: sending resumed")
        self._auth_blocked_until = None
        self._redis.delete(self._keys.mparticle_auth)
        return True

    # -- bookkeeping -----------------------------------------------------------------

    def _acknowledge(self, request: BulkRequest, result: BulkResult) -> None:
        """Ack and delete the sent entries and note in each story that it was relayed."""
        now_ms = int(self._clock() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        # mParticle took the credentials, so any "refused" flag is stale, e.g. one a worker
        # set before it was restarted with the corrected secret; /readyz reads it.
        pipe.delete(self._keys.mparticle_auth)
        for batch in request.batches:
            for event in batch.events:
                pipe.xack(event.queue, CONSUMER_GROUP, event.entry_id)
                pipe.xdel(event.queue, event.entry_id)
                self._update_story(
                    keys=[self._keys.event(event.shard, event.event_id)],
                    args=["s", "relayed", "at", now_ms, "rid", batch.source_request_id,
                          "st", result.status],
                    client=pipe,
                )
        pipe.execute()
        self._metrics.relayed.inc(len(request.events))
        for event in request.events:
            if event.received_ms:
                self._metrics.relay_latency_seconds.observe(
                    max(0.0, (now_ms - event.received_ms) / 1000)
                )
        logger.info(
            "relayed %d events in %d batches", len(request.events), len(request.batches),
            extra={"status": result.status, "rate_limit_percent": result.rate_limit_percent_used},
        )

    def _dead_letter(self, events: list[QueuedEvent], letter: DeadLetter) -> None:
        """Move events to the dead-letter store (first), then ack them (second)."""
        now_ms = int(self._clock() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        for event in events:
            pipe.xadd(
                self._keys.dead_letters,
                {
                    "kind": "event",
                    "reason": letter.reason,
                    "event_id": event.event_id,
                    "event": event.event_type,
                    "status": "" if letter.status is None else str(letter.status),
                    "response": letter.response[:2000],
                    "attempts": letter.attempts,
                    "queue": event.queue,
                    "entry_id": event.entry_id,
                    "body": event.raw,
                    "at_ms": now_ms,
                },
                maxlen=self._relay["dead_letter_max_entries"],
                approximate=True,
            )
        pipe.execute()
        pipe = self._redis.pipeline(transaction=False)
        for event in events:
            pipe.xack(event.queue, CONSUMER_GROUP, event.entry_id)
            pipe.xdel(event.queue, event.entry_id)
            if event.event_id:
                self._update_story(
                    keys=[self._keys.event(event.shard, event.event_id)],
                    args=["s", "dead_lettered", "at", now_ms, "why", letter.reason],
                    client=pipe,
                )
        pipe.execute()
        self._metrics.dead_lettered.labels(reason=letter.reason).inc(len(events))
        logger.warning("dead-lettered %d events: %s", len(events), letter.reason,
                       extra={"status": letter.status})


def _entries_of(shard: int, reply: Any) -> list[tuple[int, str, dict[str, str]]]:
    """Flatten an XREADGROUP reply for one stream; deleted entries come back empty."""
    return [
        (shard, entry_id, fields or {})
        for _stream, items in reply or []
        for entry_id, fields in items
    ]


def _entry_ms(entry_id: str) -> int | None:
    """Stream ids start with the milliseconds at which Redis stored the entry."""
    try:
        return int(entry_id.split("-", 1)[0])
    except (ValueError, AttributeError):
        return None
