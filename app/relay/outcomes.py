"""The delivery policy's words: what a destination's client raises instead of an answer.

A direction's client translates its HTTP library's errors and its destination's status
codes into these, so the worker decides what to do (wait, split, stop) without knowing
either.

- :class:`RetryableError`: nothing was refused for its content; keep the events and try
  again later (429, 408, 5xx, timeouts, connection errors, and any status not expected,
  because an unexpected answer is a configuration problem and must never cost data).
- :class:`RejectedError`: the destination refused the request's content; split it to
  find the bad part.
- :class:`AuthError`: the destination refused the credentials; stop sending, keep
  everything.
"""

from __future__ import annotations

import email.utils
import re
import time
from datetime import UTC

# Enough of an error body for support to read the destination's explanation, small
# enough for a log line.
MAX_ERROR_BODY_CHARS = 2000

_DELTA_SECONDS = re.compile(r"[0-9]+")  # ASCII digits only, as RFC 9110 says


class DeliveryError(Exception):
    """Base of every error a destination's client raises."""

    def __init__(self, reason: str, *, status: int | None = None, body: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.body = body[:MAX_ERROR_BODY_CHARS]


class RetryableError(DeliveryError):
    """Nothing was refused for its content: keep the events and send them again later."""

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        body: str = "",
        rate_limit_percent_used: float | None = None,
    ) -> None:
        super().__init__(reason, status=status, body=body)
        self.retry_after = retry_after
        self.rate_limit_percent_used = rate_limit_percent_used


class RejectedError(DeliveryError):
    """The destination refused the request's content: split it to isolate the bad part."""

    def __init__(
        self, status: int, body: str = "", *, destination: str = "the destination"
    ) -> None:
        super().__init__(
            f"{destination} refused the request's content ({status})", status=status, body=body
        )


class AuthError(DeliveryError):
    """The destination refused the credentials: stop sending and keep everything queued."""

    def __init__(
        self, status: int, body: str = "", *, destination: str = "the destination"
    ) -> None:
        super().__init__(
            f"{destination} refused the credentials ({status})", status=status, body=body
        )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Return the seconds a `Retry-After` header asks us to wait, or None if it says nothing usable.

    The header is either delta-seconds (a non-negative integer) or an HTTP-date; a date in the
    past means "now" (0.0). Anything else is ignored rather than trusted. Every destination's
    client reads its header with this one rule.
    """
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no claim about local time (RFC 5322).
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
