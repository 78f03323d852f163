"""The delivery policy: what the worker does after each answer from a destination.

Pure (no Redis, no HTTP), so every rule is unit-tested on its own:

* taken: done; when the destination says its rate limit is nearly used up, every
  worker pauses a little (``slow_down``);
* 429: wait Retry-After (capped at the schedule's largest step), else exponential
  backoff from the schedule's first step with full jitter;
* 5xx, timeouts, connection errors: the next step of ``retry_schedule_seconds``, with
  jitter, the last step repeating; nothing is ever dropped;
* content refused: split a request of several batches in halves; a single batch is
  dead-lettered with the destination's answer;
* credentials refused: stop sending, keep everything, re-check every
  ``auth_recheck_seconds``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from app.relay.outcomes import AuthError, DeliveryError, RejectedError, RetryableError


class Action(Enum):
    """What to do with a request after an answer."""

    DONE = "done"
    RETRY = "retry"
    SPLIT = "split"
    DEAD_LETTER = "dead_letter"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class Decision:
    """An action, with how long to wait first (RETRY, or DONE's pause) and why."""

    action: Action
    wait_seconds: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class DeliveryPolicy:
    """The ``[relay]`` settings that shape retries and pauses."""

    retry_schedule_seconds: tuple[float, ...]
    retry_jitter_ratio: float
    slow_down_at_rate_limit_percent: float
    slow_down_max_seconds: float
    # The least time between two requests of every worker with one credential (a
    # destination's requests per second), 0 for none.
    min_interval_seconds: float = 0.0

    def after_answer(self, rate_limit_percent: float | None) -> Decision:
        """The request was taken: done, after a pause when the rate limit is nearly used
        (or, at least, the shared interval between two requests)."""
        pause = self.slow_down_seconds(rate_limit_percent)
        if pause:
            return Decision(Action.DONE, pause, "rate limit nearly used")
        if self.min_interval_seconds:
            return Decision(Action.DONE, self.min_interval_seconds, "requests per second")
        return Decision(Action.DONE)

    def after_error(self, error: DeliveryError, attempt: int, batches: int) -> Decision:
        """What to do after attempt number ``attempt`` of a request of ``batches`` failed."""
        if isinstance(error, AuthError):
            return Decision(Action.STOP, reason="credentials_refused")
        if isinstance(error, RejectedError):
            return Decision(Action.SPLIT if batches > 1 else Action.DEAD_LETTER,
                            reason="refused")
        throttled = error.status == 429
        retry_after = error.retry_after if isinstance(error, RetryableError) else None
        return Decision(Action.RETRY, self.retry_wait(attempt, retry_after, throttled=throttled),
                        "throttled" if throttled else "unavailable")

    def retry_wait(
        self, attempt: int, retry_after: float | None = None, *, throttled: bool = False
    ) -> float:
        """Seconds to wait before retry number ``attempt``.

        Retry-After when the destination sent one, capped at the schedule's largest step
        so a wrong header cannot stall the feed for days. A 429 without it
        (``throttled``): exponential backoff from the schedule's first step with full
        jitter, so that workers throttled together spread out and come back as soon as
        the limit allows. Anything else (5xx, timeouts): the schedule, its last step
        repeating forever. Jitter never takes a wait past the largest step, so the
        schedule's largest step bounds every wait.
        """
        schedule = self.retry_schedule_seconds
        if retry_after is not None:
            return min(retry_after, max(schedule))
        if throttled:
            ceiling = min(max(schedule), schedule[0] * 2 ** min(attempt - 1, 32))
            return random.uniform(0, ceiling)  # noqa: S311 - jitter, not security
        step = schedule[min(attempt, len(schedule)) - 1]
        ratio = self.retry_jitter_ratio
        jittered = random.uniform(step * (1 - ratio), step * (1 + ratio))  # noqa: S311 - jitter
        return min(jittered, max(schedule))

    def slow_down_seconds(self, percent: float | None) -> float:
        """A pause that grows as the rate limit fills up, 0 below the threshold."""
        threshold = self.slow_down_at_rate_limit_percent
        if percent is None or percent < threshold:
            return 0.0
        longest = self.slow_down_max_seconds
        if threshold >= 100:
            return longest
        return longest * min(1.0, (percent - threshold) / (100 - threshold))
