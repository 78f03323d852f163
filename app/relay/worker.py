"""The relay loop: read the queue, map, batch, send to mParticle, ack, retry, dead-letter.

Error policy, in order (CONTRACT §5):

* 202: acknowledged and deleted from the stream; each event's story says "relayed".
  When mParticle says its rate limit is nearly used up, every worker pauses a little.
* 429: wait Retry-After (capped), else exponential backoff from the schedule's first
  step with full jitter; retry byte-identical.
* 5xx, timeouts, connection errors: the next step of ``retry_schedule_seconds``, with
  jitter, the last step repeating; nothing is ever dropped.
* 400/413/422: split the request in halves until the refused batch is alone, and
  dead-letter only that batch, with mParticle's answer.
* 401/403: stop sending, keep everything queued, report not ready, one log line;
  re-check the credentials every ``auth_recheck_seconds`` and resume by itself.

A wait is shared: it is kept in Redis per mParticle credential, and every worker waits
it out before sending, so one worker's 429 pauses them all.

Entries stay pending in the consumer group until mParticle has them, so a killed
worker loses nothing: another takes its entries over after ``claim_idle_seconds``.
A live worker renews its claim on everything it holds while it sends or waits.
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
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import catalog, mapping, marks, queue_entry, relay_state
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
from app.mparticle import (
    AuthError,
    BulkResult,
    RejectedError,
    RetryableError,
    credential_id,
)
from app.webhooks.schemas import load_webhook

logger = logging.getLogger(__name__)

# Tells the story of events the worker is done with (relayed, or dead-lettered), all of
# one queue shard (one Cluster slot). Only marks that exist are rewritten, where they
# are, so a relayed event whose mark has expired (or was forgotten) leaves nothing
# behind, and the idempotency window is not restarted. The copies counted, the type and
# the queue entry (hence the time received) stay as the mark had them.
# KEYS  per event, the buckets that may hold its mark, newest first
# ARGV  now (ms), the new status letter ("r" or "d"), then per event: event_id, how many
#       of KEYS are its buckets, its type and queue entry id (for a mark that has neither,
#       e.g. a quarantined copy's), the end of its story.
_TELL_STORIES = marks.LUA_FUNCTIONS + """
local now_ms, status = tonumber(ARGV[1]), ARGV[2]
local key = 1
for a = 3, #ARGV, 5 do
  local event_id, count = ARGV[a], tonumber(ARGV[a + 1])
  for i = key, key + count - 1 do
    local story = redis.call('HGET', KEYS[i], event_id)
    if story then
      local code, copies = string.match(story, '^(%a)(%d*)')
      local event_type, entry = ARGV[a + 2], ARGV[a + 3]
      local told = code == 'r' or code == 'd'  -- its entry id is packed already
      if told or code == 'q' then
        event_type, entry = string.match(story, '^%a%d*|([^|]*)|([^|]*)')
      end
      if not told then
        entry = packed_entry(entry)
      end
      local received = tonumber(string.match(entry, '^[^-]+'), 36)
      redis.call('HSET', KEYS[i], event_id, status .. copies .. '|' .. event_type .. '|'
                 .. entry .. '|' .. base36(now_ms - received) .. '|' .. ARGV[a + 4])
      break
    end
  end
  key = key + count
end
return 0
"""

# Makes every worker wait at least ARGV[1] ms before sending with one credential. The
# wait is the key's TTL, so workers on different hosts need no common clock; a shorter
# wait never cuts a longer one short (one worker's Retry-After: 60 stands).
_EXTEND_THROTTLE = """
local left = redis.call('PTTL', KEYS[1])
local wanted = tonumber(ARGV[1])
if left < wanted then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', wanted)
  return wanted
end
return left
"""

# Forgets consumers of a queue's group that hold no pending entry: the one named in
# ARGV[3] whatever its idle time (a worker leaving with nothing in hand), or, when ARGV[3]
# is empty, every one idle for ARGV[2] ms or more (workers that died, whose entries
# others have taken over). One whose pending count is not 0 is never touched: deleting
# a consumer drops its pending entries from the group, and they would never be read
# again. Atomic, so none can read an entry between the check and the delete; a live
# worker that is forgotten while idle is recreated by its next XREADGROUP.
_FORGET_CONSUMERS = """
local forgotten = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do
    info[consumer[i]] = consumer[i + 1]
  end
  local chosen
  if ARGV[3] ~= '' then
    chosen = info['name'] == ARGV[3]
  else
    chosen = info['idle'] >= tonumber(ARGV[2])
  end
  if chosen and info['pending'] == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    forgotten = forgotten + 1
  end
end
return forgotten
"""

# A consumer idle this long, with nothing pending, is a worker that is gone: live ones
# read their queues every pass.
FORGET_IDLE_CONSUMERS_SECONDS = 3600.0

# Backoff while Redis itself is unreachable, or after an unexpected error: the worker
# waits and carries on by itself.
_LOOP_RETRY_MAX_SECONDS = 30.0


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
        self._tell_stories = redis.register_script(_TELL_STORIES)
        self._auth_blocked_until: float | None = None
        self._next_claim_at = 0.0
        self._event_style = settings.mparticle["event_names"]
        # The wait every worker respects before sending with this credential (a hash of
        # the API key, never the key itself).
        self._extend_throttle = redis.register_script(_EXTEND_THROTTLE)
        self._throttle_key = keys.mparticle_throttle(
            credential_id(settings.secrets.mparticle_api_key or "dry-run")
        )
        # Requests read in this pass and not yet done: their claims are renewed while
        # the worker sends or waits, so no other worker takes them over meanwhile.
        self._held: list[BulkRequest] = []
        self._claims_renewed_at = 0.0
        self._forget_consumers = redis.register_script(_FORGET_CONSUMERS)
        self.forget_idle_consumers_seconds = FORGET_IDLE_CONSUMERS_SECONDS
        self._next_forgetting_at = 0.0

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

    def forget_gone_consumers(self, only_this_one: bool = False) -> int:
        """Remove consumers that hold nothing from the groups, so XINFO lists live workers.

        Those idle for ``forget_idle_consumers_seconds`` (workers that died or left), or
        with ``only_this_one``, this worker as it leaves. Returns how many went.
        """
        idle_ms = int(self.forget_idle_consumers_seconds * 1000)
        name = self.consumer if only_this_one else ""
        forgotten = 0
        for queue in self._keys.queues():
            forgotten += int(self._forget_consumers(keys=[queue],
                                                    args=[CONSUMER_GROUP, idle_ms, name]))
        if forgotten and not only_this_one:
            logger.info("forgot %d consumers idle for %.0fs with nothing pending",
                        forgotten, self.forget_idle_consumers_seconds)
        self._next_forgetting_at = self._clock() + self.forget_idle_consumers_seconds
        return forgotten

    def run(self, *, once: bool = False) -> None:
        """Relay until stopped (or one pass with ``once=True``, for tests)."""
        logger.info("worker %s started", self.consumer)
        failures = 0
        groups_ready = False
        while not self.stopping:
            try:
                if not groups_ready:
                    self.ensure_groups()
                    groups_ready = True
                if self._clock() >= self._next_forgetting_at:
                    self.forget_gone_consumers()
                worked = self.relay_pending()
                failures = 0
            except (RedisConnectionError, RedisTimeoutError) as exc:
                failures += 1
                groups_ready = False
                wait = _loop_backoff(failures)
                logger.error("redis unavailable (%s); retrying in %.1fs",
                             exc.__class__.__name__, wait)
                self._sleep(wait)
                worked = True
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    failures += 1
                    self._survive(failures)
                else:
                    logger.warning("consumer group missing (Redis restarted empty?); recreating")
                groups_ready = False  # recreated at the top of the next pass
                worked = True
            except Exception:
                # One bad moment (a bug, an odd entry, a library surprise) must not end the
                # worker: whatever it held stays pending and is read again next pass.
                failures += 1
                self._survive(failures)
                worked = True
            if once:
                break
            if not worked:
                self._sleep(self._relay["poll_interval_seconds"])
        if not once:
            self._hand_over_pending()
        logger.info("worker %s stopped", self.consumer)

    def _hand_over_pending(self) -> None:
        """On the way out, mark what this worker read but did not send as abandoned.

        The entries stay pending (nothing is lost, nothing is sent twice), but with an
        idle time of claim_idle_seconds, so the next worker (the one a deploy starts)
        takes them over at once instead of after claim_idle_seconds: their shards would
        otherwise wait that long, since a shard is read only while nobody else holds any
        of it.
        """
        idle_ms = int(self._relay["claim_idle_seconds"] * 1000)
        try:
            for queue in self._keys.queues():
                ids = [row["message_id"] for row in self._redis.xpending_range(
                    queue, CONSUMER_GROUP, "-", "+", 100_000, consumername=self.consumer)]
                if ids:
                    self._redis.xclaim(queue, CONSUMER_GROUP, self.consumer, 0, ids,
                                       idle=idle_ms, justid=True)
                    logger.info("handed over %d unsent entries of %s", len(ids), queue)
            self.forget_gone_consumers(only_this_one=True)  # where it holds nothing
        except RedisError as exc:  # Redis is away: they are taken over after the idle time
            logger.warning("could not hand over unsent entries (%s)", exc.__class__.__name__)

    def _survive(self, failures: int) -> None:
        """Log an unexpected error with its traceback, then back off before going on."""
        wait = _loop_backoff(failures)
        logger.exception("unexpected error in the relay loop; carrying on in %.1fs", wait)
        self._held = []
        self._sleep(wait)

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
        self._held = list(requests)
        self._claims_renewed_at = time.monotonic()  # just read or claimed: idle time is 0
        try:
            for request in requests:
                if self.stopping or self._auth_blocked_until is not None:
                    break
                self._deliver(request)
                self._held.pop(0)
        finally:
            self._held = []
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
            # Shard by shard from a random one, until the pass is full: under load each
            # worker then holds about one shard, and the others stay free for the rest.
            start = random.randrange(len(queues))  # noqa: S311 - spreading, not security
            for shard in [*range(start, len(queues)), *range(start)]:
                reply = _read_new_in_order(self._redis, queues[shard], self.consumer,
                                           count - len(entries))
                entries += _entries_of(shard, _stream_reply(reply))
                if len(entries) >= count:
                    break
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
                body = queue_entry.unpack(fields)
                webhook = load_webhook(json.loads(body))
            except (KeyError, TypeError, ValueError, ValidationError):
                placeholder = QueuedEvent(
                    queue, shard, entry_id, "", "", {}, {}, raw=queue_entry.readable_body(fields)
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
                received_ms=_entry_ms(entry_id), raw=body,
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
            self._wait_for_throttle()
            if self.stopping:
                return
            self._renew_claims_if_due()
            attempt += 1
            started = time.perf_counter()
            try:
                result = self._client.send_bulk(request.body)
            except RetryableError as exc:
                elapsed = self._observe(started)
                reason = "throttled" if exc.status == 429 else "unavailable"
                self._metrics.retried.labels(reason=reason).inc()
                wait = self.retry_wait(attempt, exc.retry_after, throttled=exc.status == 429)
                self._log_request(
                    logging.WARNING, request, attempt, elapsed, exc.status, reason,
                    exc.rate_limit_percent_used, retry_in=wait, error=exc.reason,
                )
                self._record_answer(exc.status, exc.rate_limit_percent_used)
                self.throttle_all(wait, reason)
                continue
            except RejectedError as exc:
                elapsed = self._observe(started)
                self._log_request(logging.WARNING, request, attempt, elapsed, exc.status,
                                  "refused", None)
                self._record_answer(exc.status, None)
                self._handle_rejection(request, exc, attempt)
                return
            except AuthError as exc:
                elapsed = self._observe(started)
                self._log_request(logging.ERROR, request, attempt, elapsed, exc.status,
                                  "credentials_refused", None)
                self._record_answer(exc.status, None)
                self._block_on_auth(exc)
                return
            elapsed = self._observe(started)
            pause = self._slow_down_seconds(result.rate_limit_percent_used)
            self._acknowledge(request, result, attempt)
            self._log_request(logging.INFO, request, attempt, elapsed, result.status, "relayed",
                              result.rate_limit_percent_used, slow_down=pause)
            if pause > 0:
                self.throttle_all(pause, "rate limit nearly used")
            return

    def _observe(self, started: float) -> float:
        elapsed = time.perf_counter() - started
        self._metrics.request_seconds.observe(elapsed)
        return elapsed

    def _log_request(
        self,
        level: int,
        request: BulkRequest,
        attempt: int,
        elapsed: float,
        status: int | None,
        outcome: str,
        rate_limit_percent: float | None,
        *,
        retry_in: float | None = None,
        slow_down: float | None = None,
        error: str | None = None,
    ) -> None:
        """One line per mParticle request, for operators to follow: never a credential."""
        extra: dict[str, Any] = {
            "outcome": outcome,
            "status": status,
            "events": len(request.events),
            "batches": len(request.batches),
            "source_request_ids": len({batch.source_request_id for batch in request.batches}),
            "attempt": attempt,
            "latency_ms": round(elapsed * 1000, 1),
            "rate_limit_percent": rate_limit_percent,
        }
        if retry_in is not None:
            extra["retry_in_seconds"] = round(retry_in, 3)
        if slow_down:
            extra["slow_down_seconds"] = round(slow_down, 3)
        if error:
            extra["error"] = error[:300]
        logger.log(
            level, "mParticle request: %s (%s), %d events in %d batches, attempt %d",
            outcome, status if status is not None else "no answer", extra["events"],
            extra["batches"], attempt, extra=extra,
        )

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

    # -- waiting -----------------------------------------------------------------------

    def retry_wait(
        self, attempt: int, retry_after: float | None = None, *, throttled: bool = False
    ) -> float:
        """Seconds to wait before retry number ``attempt``.

        Retry-After when mParticle sent one, capped at the schedule's largest step so a
        wrong header cannot stall the feed for days. A 429 without it (``throttled``):
        exponential backoff from the schedule's first step with full jitter, so that
        workers throttled together spread out and come back as soon as the limit allows.
        Anything else (5xx, timeouts): the schedule, its last step repeating forever.
        """
        schedule = self._relay["retry_schedule_seconds"]
        if retry_after is not None:
            return min(retry_after, max(schedule))
        if throttled:
            ceiling = min(max(schedule), schedule[0] * 2 ** min(attempt - 1, 32))
            return random.uniform(0, ceiling)  # noqa: S311 - jitter, not security
        step = schedule[min(attempt, len(schedule)) - 1]
        ratio = self._relay["retry_jitter_ratio"]
        return random.uniform(step * (1 - ratio), step * (1 + ratio))  # noqa: S311 - jitter

    def _slow_down_seconds(self, percent: float | None) -> float:
        """A pause that grows as mParticle's rate limit fills up, 0 below the threshold."""
        threshold = self._relay["slow_down_at_rate_limit_percent"]
        if percent is None or percent < threshold:
            return 0.0
        longest = self._relay["slow_down_max_seconds"]
        if threshold >= 100:
            return longest
        return longest * min(1.0, (percent - threshold) / (100 - threshold))

    def throttle_all(self, seconds: float, reason: str) -> None:
        """Make every worker sending with this credential wait ``seconds`` (or longer)."""
        wanted_ms = int(seconds * 1000)
        if wanted_ms >= 1:
            self._extend_throttle(keys=[self._throttle_key], args=[wanted_ms, reason])

    def throttled_for(self) -> float:
        """Seconds left before any worker may send with this credential."""
        left_ms = self._redis.pttl(self._throttle_key)
        return max(0, left_ms) / 1000

    def _wait_for_throttle(self) -> None:
        """Wait out the shared wait (it may grow meanwhile), keeping what this worker holds."""
        while not self.stopping:
            left = self.throttled_for()
            if left <= 0:
                return
            self._wait_keeping_claim(left)

    def _wait_keeping_claim(self, seconds: float) -> None:
        """Wait, holding on to the entries of this pass all the while.

        A wait (Retry-After, a schedule step of hours) can outlast claim_idle_seconds;
        without a renewed claim another worker would take the entries over and send them
        while this one still means to.
        """
        renew_every = self._relay["claim_idle_seconds"] / 3
        remaining = seconds
        while True:
            self._renew_claims_if_due()
            step = min(remaining, renew_every)
            self._sleep(step)
            remaining -= step
            if remaining <= 0 or self.stopping:
                return

    def _renew_claims_if_due(self) -> None:
        """Reset the idle time of every entry this pass still holds, a third of the way in.

        A pass holds up to read_count entries in several requests; while the first is
        sent (or waits), the others must not look abandoned to another worker.
        """
        if time.monotonic() - self._claims_renewed_at < self._relay["claim_idle_seconds"] / 3:
            return
        held = [event for request in self._held for event in request.events]
        for queue, ids in _entries_by_queue(held).items():
            self._redis.xclaim(queue, CONSUMER_GROUP, self.consumer, 0, ids, justid=True)
        self._claims_renewed_at = time.monotonic()

    def _record_answer(self, status: int | None, rate_limit_percent: float | None) -> None:
        """Note a failed answer for /readyz and the console (successes: in _acknowledge)."""
        pipe = self._redis.pipeline(transaction=False)
        relay_state.record_delivery(pipe, self._keys, status=status, events=0,
                                    rate_limit_percent=rate_limit_percent)
        pipe.execute()

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

    def _acknowledge(self, request: BulkRequest, result: BulkResult, attempt: int = 1) -> None:
        """Ack and delete the sent entries and note in each story that it was relayed.

        The story counts the attempts only past the first: most events need one, and
        every byte of a story is kept for 8 days.
        """
        now_ms = int(self._clock() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        # mParticle took the credentials, so any "refused" flag is stale, e.g. one a worker
        # set before it was restarted with the corrected secret; /readyz reads it.
        pipe.delete(self._keys.mparticle_auth)
        for queue, entry_ids in _entries_by_queue(request.events).items():
            pipe.xack(queue, CONSUMER_GROUP, *entry_ids)
            pipe.xdel(queue, *entry_ids)
        stories = _StoriesByShard(self._keys, now_ms, "r")
        for batch in request.batches:
            ending = marks.relayed_ending(result.status, batch.source_request_id, attempt)
            for event in batch.events:
                stories.add(event, ending)
        stories.queue_on(pipe, self._tell_stories)
        relay_state.record_delivery(
            pipe, self._keys, status=result.status, events=len(request.events),
            rate_limit_percent=result.rate_limit_percent_used, now=now_ms / 1000,
        )
        pipe.execute()
        self._metrics.relayed.inc(len(request.events))
        for event in request.events:
            if event.received_ms:
                self._metrics.relay_latency_seconds.observe(
                    max(0.0, (now_ms - event.received_ms) / 1000)
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
        stories = _StoriesByShard(self._keys, now_ms, "d")
        reason = marks.packed_reason(letter.reason)
        for event in events:
            pipe.xack(event.queue, CONSUMER_GROUP, event.entry_id)
            pipe.xdel(event.queue, event.entry_id)
            if event.event_id:
                stories.add(event, reason)
        stories.queue_on(pipe, self._tell_stories)
        pipe.execute()
        self._metrics.dead_lettered.labels(reason=letter.reason).inc(len(events))
        logger.warning("dead-lettered %d events: %s", len(events), letter.reason,
                       extra={"status": letter.status})


class _StoriesByShard:
    """The story updates of one pass, gathered per queue shard: one script call each."""

    def __init__(self, keys: KeySpace, now_ms: int, status: str) -> None:
        self._keys = keys
        self._now_ms = now_ms
        self._status = status
        self._by_shard: dict[int, tuple[list[str], list[Any]]] = {}

    def add(self, event: QueuedEvent, ending: str) -> None:
        """Rewrite this event's story, if it has one, to end with ``ending``."""
        # Its mark was written when its entry was (a replayed dead letter's: earlier), so
        # the buckets alive then hold it; the newest first, where it nearly always is.
        received = (event.received_ms or self._now_ms) / 1000
        buckets = self._keys.mark_buckets(event.shard, event.event_id, received).keys[::-1]
        keys, args = self._by_shard.setdefault(event.shard, ([], [self._now_ms, self._status]))
        keys += buckets
        args += [event.event_id, len(buckets), marks.escape(event.event_type),
                 event.entry_id, ending]

    def queue_on(self, pipe: Any, script: Any) -> None:
        for keys, args in self._by_shard.values():
            _queue_script(pipe, script, keys, args)


def _entries_of(shard: int, reply: Any) -> list[tuple[int, str, dict[str, str]]]:
    """Flatten an XREADGROUP reply for one stream; deleted entries come back empty."""
    return [
        (shard, entry_id, fields or {})
        for _stream, items in reply or []
        for entry_id, fields in items
    ]


def _loop_backoff(failures: int) -> float:
    """Seconds to wait after the loop's n-th failure in a row: doubling, capped."""
    return min(_LOOP_RETRY_MAX_SECONDS, 0.5 * 2 ** min(failures, 6))


def _entry_ms(entry_id: str) -> int | None:
    """Stream ids start with the milliseconds at which Redis stored the entry."""
    try:
        return int(entry_id.split("-", 1)[0])
    except (ValueError, AttributeError):
        return None


def _queue_script(pipe: Any, script: Any, keys: list[str], args: list[Any]) -> None:
    """Queue a script call on a pipeline, on one Redis or a Redis Cluster.

    A plain pipeline loads the script itself before EVALSHA (also after a Redis restart
    flushed the script cache). redis-py's cluster pipeline refuses EVALSHA and cannot load
    scripts, so there the script's text goes with the call (EVAL; Redis caches it too).
    """
    from redis.client import Pipeline

    if isinstance(pipe, Pipeline):
        script(keys=keys, args=args, client=pipe)
    else:
        pipe.execute_command("EVAL", script.script, len(keys), *keys, *args)


# A person's events all sit in one queue shard. New entries of a shard are read only
# while no other worker has entries of it in flight (pending), checked and read in one
# script so two workers cannot both pass the check: each person's events then reach
# mParticle in the order they were accepted, however many workers share the group. A
# dead worker's pending entries hold its shards until another takes them over
# (claim_idle_seconds); that one sends them before anything newer.
_READ_NEW_IN_ORDER = """
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
if summary[1] > 0 then
  for _, row in ipairs(summary[4]) do
    if row[1] ~= ARGV[2] then
      return false
    end
  end
end
return redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
                  'STREAMS', KEYS[1], '>')
"""


def _read_new_in_order(redis: Any, queue: str, consumer: str, count: int) -> Any:
    """A shard's new entries, unless another worker has some of its entries in flight."""
    return redis.execute_command("EVAL", _READ_NEW_IN_ORDER, 1, queue, CONSUMER_GROUP,
                                 consumer, count)


def _entries_by_queue(events: list[QueuedEvent]) -> dict[str, list[str]]:
    """Entry ids per stream, so one XACK and one XDEL per stream cover a whole request."""
    by_queue: dict[str, list[str]] = {}
    for event in events:
        by_queue.setdefault(event.queue, []).append(event.entry_id)
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
