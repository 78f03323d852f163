"""The wait every worker respects before sending with one credential, kept in Redis.

The wait is a key's TTL (``scripts/extend_throttle.lua``), so workers on different
hosts need no common clock, and one worker's 429 pauses them all.
"""

from __future__ import annotations

import logging
from typing import Any

from app.store import scripts
from app.store.redis_health import FULL_ERRORS

logger = logging.getLogger(__name__)


class SharedThrottle:
    """One credential's shared wait: extended by any worker, waited out by all."""

    def __init__(self, redis: Any, key: str) -> None:
        self._redis = redis
        self.key = key
        self._extend = scripts.register(redis, "extend_throttle")

    def extend(self, seconds: float, reason: str) -> None:
        """Make every worker wait ``seconds`` from now, unless it already waits longer."""
        wanted_ms = int(seconds * 1000)
        if wanted_ms < 1:
            return
        try:
            self._extend(keys=[self.key], args=[wanted_ms, reason])
        except FULL_ERRORS:  # each worker still waits its own time
            logger.warning("redis is full: the shared wait (%s) was not written", reason)

    def seconds_left(self) -> float:
        """Seconds left before any worker may send with this credential."""
        return max(0, self._redis.pttl(self.key)) / 1000
