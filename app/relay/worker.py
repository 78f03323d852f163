"""The relay loop: read the queue, decode, pack, send, and act on the policy's decision.

The worker knows no destination: its direction (``app.relay.direction``) decodes and
sends, the policy (``app.relay.policy``) says what an answer means, and the store
reads and finishes entries (``StreamConsumer``), keeps the shared wait
(``SharedThrottle``) and writes what became of each event (``Ledger``).

A live worker renews its claim on everything it holds while it sends or waits, so no
other worker takes its entries over meanwhile; a killed one loses nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from app.metrics import RelayMetrics
from app.relay.direction import Direction
from app.relay.outcomes import AuthError, DeliveryError, RetryableError
from app.relay.policy import Action, Decision, DeliveryPolicy
from app.store.consumer import StreamConsumer
from app.store.ledger import DeadLetter, Ledger
from app.store.redis_health import FULL_ERRORS, UNAVAILABLE_ERRORS, MemoryWatch
from app.store.throttle import SharedThrottle

logger = logging.getLogger(__name__)

# Backoff while Redis itself is unreachable, or after an unexpected error: the worker
# waits and carries on by itself.
_LOOP_RETRY_MAX_SECONDS = 30.0


class RelayWorker:
    """Moves one direction's queued events to its destination; run() until stop()."""

    def __init__(
        self,
        direction: Direction,
        consumer: StreamConsumer,
        throttle: SharedThrottle,
        ledger: Ledger,
        policy: DeliveryPolicy,
        metrics: RelayMetrics,
        *,
        memory_watch: MemoryWatch | None = None,
        poll_interval_seconds: float,
        auth_recheck_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.direction = direction
        self.consumer = consumer
        self.throttle = throttle
        self.ledger = ledger
        self.policy = policy
        self._metrics = metrics.direction(direction.name)
        self._memory_watch = memory_watch
        self._poll_interval = poll_interval_seconds
        self._auth_recheck = auth_recheck_seconds
        self._clock = clock
        self._stopping = threading.Event()
        self._auth_blocked_until: float | None = None
        # Requests read in this pass and not yet done: their claims are renewed while
        # the worker sends or waits, so no other worker takes them over meanwhile.
        self._held: list[Any] = []
        self._claims_renewed_at = 0.0
        # This worker's own next try, kept too in case the shared wait cannot be
        # written (a full Redis): a retry never comes sooner than the policy says.
        self._own_wait_until = 0.0

    # -- lifecycle -------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the request in flight, then return from run()."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(max(0.0, seconds))

    def run(self, *, once: bool = False) -> None:
        """Relay until stopped (or one pass with ``once=True``, for tests)."""
        logger.info("worker %s started (%s)", self.consumer.name, self.direction.name)
        failures = 0
        groups_ready = False
        while not self.stopping:
            try:
                if not groups_ready:
                    groups_ready = self.consumer.ensure_groups()
                self.consumer.forget_gone_consumers_if_due()
                if self._memory_watch is not None:
                    self._memory_watch.check_if_due()
                worked = self.relay_pending()
                failures = 0
            except UNAVAILABLE_ERRORS as exc:
                failures += 1
                groups_ready = False
                wait = _loop_backoff(failures)
                logger.error("redis unavailable (%s); retrying in %.1fs",
                             exc.__class__.__name__, wait)
                self._sleep(wait)
                worked = True
            except FULL_ERRORS:
                # What could not be written stays pending and is done again next pass.
                failures += 1
                wait = _loop_backoff(failures)
                logger.error("redis is full (maxmemory): a write was refused; retrying in "
                             "%.1fs", wait)
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
                self._sleep(self._poll_interval)
        if not once:
            self.consumer.hand_over()
        logger.info("worker %s stopped", self.consumer.name)

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
        entries = self.consumer.read()
        if not entries:
            return False
        items, unusable = self.direction.decode(entries)
        for bad in unusable:
            self._dead_letter([bad.item], DeadLetter(bad.reason))
        requests, too_large = self.direction.pack(items)
        if too_large:
            self._dead_letter(too_large, DeadLetter(self.direction.too_large_reason))
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

    def _deliver(self, request: Any) -> None:
        """Send one request until its destination takes it (or refuses part of it for good)."""
        attempt = 0
        while not self.stopping:
            self._wait_for_throttle()
            if self.stopping:
                return
            self._renew_claims_if_due()
            attempt += 1
            started = time.perf_counter()
            try:
                answer = self.direction.send(request)
            except DeliveryError as exc:
                elapsed = self._observe(started)
                decision = self.policy.after_error(exc, attempt, request.batch_count)
                if not self._act_on_error(request, exc, decision, attempt, elapsed):
                    return
                continue
            elapsed = self._observe(started)
            decision = self.policy.after_answer(answer.rate_limit_percent_used)
            self._acknowledge(request, answer, attempt)
            self._log_request(logging.INFO, request, attempt, elapsed, answer.status, "relayed",
                              answer.rate_limit_percent_used, slow_down=decision.wait_seconds)
            self.throttle.extend(decision.wait_seconds, decision.reason)
            return

    def _act_on_error(
        self, request: Any, exc: DeliveryError, decision: Decision, attempt: int, elapsed: float
    ) -> bool:
        """Carry out the policy's decision after a failed attempt; True to try again."""
        percent = exc.rate_limit_percent_used if isinstance(exc, RetryableError) else None
        self.ledger.answered(exc.status, percent)
        if decision.action is Action.RETRY:
            self._metrics.retried(decision.reason).inc()
            self._log_request(logging.WARNING, request, attempt, elapsed, exc.status,
                              decision.reason, percent, retry_in=decision.wait_seconds,
                              error=exc.reason)
            self._own_wait_until = time.monotonic() + decision.wait_seconds
            self.throttle.extend(decision.wait_seconds, decision.reason)
            return True
        if decision.action is Action.STOP:
            self._log_request(logging.ERROR, request, attempt, elapsed, exc.status,
                              decision.reason, None)
            self._block_on_auth(exc)
            return False
        self._log_request(logging.WARNING, request, attempt, elapsed, exc.status, "refused", None)
        if decision.action is Action.SPLIT:
            logger.warning("%s refused a request of %d batches (%s); splitting it",
                           self.direction.destination, request.batch_count, exc.status)
            for half in self.direction.split(request):
                if self._auth_blocked_until is not None:
                    return False  # credentials refused while splitting: the rest stays pending
                self._deliver(half)
            return False
        self._dead_letter(request.events, DeadLetter(
            self.direction.refused_reason, status=exc.status, response=exc.body, attempts=attempt,
        ))
        return False

    # -- waiting -----------------------------------------------------------------------

    def _wait_for_throttle(self) -> None:
        """Wait out the shared wait (it may grow meanwhile), keeping what this worker holds."""
        while not self.stopping:
            left = max(self.throttle.seconds_left(), self._own_wait_until - time.monotonic())
            if left <= 0:
                return
            self._wait_keeping_claim(left)

    def _wait_keeping_claim(self, seconds: float) -> None:
        """Wait, holding on to the entries of this pass all the while.

        A wait (Retry-After, a schedule step) can outlast claim_idle_seconds; without a
        renewed claim another worker would take the entries over and send them while
        this one still means to.
        """
        renew_every = self.consumer.claim_idle_seconds / 3
        remaining = seconds
        while True:
            self._renew_claims_if_due()
            step = min(remaining, renew_every)
            self._sleep(step)
            remaining -= step
            if remaining <= 0 or self.stopping:
                return

    def _renew_claims_if_due(self) -> None:
        """Renew the claim on every entry this pass still holds, a third of the way in."""
        if time.monotonic() - self._claims_renewed_at < self.consumer.claim_idle_seconds / 3:
            return
        self.consumer.renew(event for request in self._held for event in request.events)
        self._claims_renewed_at = time.monotonic()

    # -- credentials -------------------------------------------------------------------

    def _block_on_auth(self, exc: DeliveryError) -> None:
        if self._auth_blocked_until is None:
            logger.error(
                "%s refused the credentials (HTTP %s): sending stopped, everything stays "
                "queued; fix %s. Checking again every %.0fs.", self.direction.destination,
                exc.status, self.direction.credentials_hint, self._auth_recheck,
            )
        self._auth_blocked_until = self._clock() + self._auth_recheck
        self.ledger.credentials_refused(exc.status)

    def _credentials_pass(self) -> bool:
        """While blocked, re-check the credentials when due; True once they pass."""
        if self._clock() < (self._auth_blocked_until or 0):
            return False
        try:
            self.direction.check_credentials()
        except AuthError as exc:
            self._block_on_auth(exc)
            return False
        except RetryableError:
            self._auth_blocked_until = self._clock() + self._auth_recheck
            return False
        logger.info("%s accepts the credentials again: sending resumed",
                    self.direction.destination)
        self._auth_blocked_until = None
        self.ledger.credentials_pass()
        return True

    # -- bookkeeping -------------------------------------------------------------------

    def _acknowledge(self, request: Any, answer: Any, attempt: int) -> None:
        """Finish the sent entries; each story says relayed, and how.

        Items the destination took but refused (a 207) become dead letters first.
        """
        now_ms = int(self._clock() * 1000)
        refused = {id(item) for item, _ in answer.refused}
        for item, reason in answer.refused:
            self._dead_letter([item], DeadLetter(self.direction.refused_reason,
                                                 status=answer.status, response=reason,
                                                 attempts=attempt))
        done = [item for item in request.events if id(item) not in refused]
        self.ledger.relayed(
            done, self.direction.relayed_endings(request, answer, attempt),
            status=answer.status, rate_limit_percent=answer.rate_limit_percent_used,
            now_ms=now_ms,
        )
        self._metrics.relayed.inc(len(done))
        for event in done:
            if event.received_ms:
                self._metrics.relay_latency_seconds.observe(
                    max(0.0, (now_ms - event.received_ms) / 1000)
                )

    def _dead_letter(self, events: list[Any], letter: DeadLetter) -> None:
        self.ledger.dead_lettered(events, letter, now_ms=int(self._clock() * 1000))
        self._metrics.dead_lettered(letter.reason).inc(len(events))
        logger.warning("dead-lettered %d events: %s", len(events), letter.reason,
                       extra={"status": letter.status})

    def _observe(self, started: float) -> float:
        elapsed = time.perf_counter() - started
        self._metrics.request_seconds.observe(elapsed)
        return elapsed

    def _log_request(
        self, level: int, request: Any, attempt: int, elapsed: float, status: int | None,
        outcome: str, rate_limit_percent: float | None, *, retry_in: float | None = None,
        slow_down: float | None = None, error: str | None = None,
    ) -> None:
        """One line per request to the destination, for operators: never a credential."""
        extra: dict[str, Any] = {
            "direction": self.direction.name,
            "outcome": outcome,
            "status": status,
            "events": len(request.events),
            "batches": request.batch_count,
            "attempt": attempt,
            "latency_ms": round(elapsed * 1000, 1),
            "rate_limit_percent": rate_limit_percent,
            **self.direction.log_fields(request),
        }
        if retry_in is not None:
            extra["retry_in_seconds"] = round(retry_in, 3)
        if slow_down:
            extra["slow_down_seconds"] = round(slow_down, 3)
        if error:
            extra["error"] = error[:300]
        logger.log(
            level, "%s request: %s (%s), %d events in %d batches, attempt %d",
            self.direction.destination, outcome, status if status is not None else "no answer",
            extra["events"], extra["batches"], attempt, extra=extra,
        )


def _loop_backoff(failures: int) -> float:
    """Seconds to wait after the loop's n-th failure in a row: doubling, capped."""
    return min(_LOOP_RETRY_MAX_SECONDS, 0.5 * 2 ** min(failures, 6))
