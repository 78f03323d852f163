"""Whether Redis can keep what the relay gives it: reachable, not evicting, not full.

The relay's promise (a 2xx means the event is in Redis) holds only on a Redis that
never evicts: marks and flags live in keys with a TTL, which ``volatile-*`` policies
evict first, and ``allkeys-*`` may evict a whole queue stream. So the processes refuse
to start on such a Redis, and ``/readyz`` says so if the policy changes later. A full
Redis under ``noeviction`` refuses writes: the webhook answers 503 (Customer.io
retries), ``/readyz`` is not ready, and the worker goes on draining, which frees memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.cluster import RedisCluster
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

# Redis cannot be written to for now; a retry later may well succeed (503, back off).
# ClusterDownError covers MasterDownError; ReadOnlyError is a write sent to a replica
# that was a master a moment ago (a failover).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, BusyLoadingError, ClusterDownError,
    TryAgainError, ReadOnlyError, RedisClusterException,
)
# Redis is full (maxmemory under noeviction): it refuses writes until memory is freed.
FULL_ERRORS: tuple[type[BaseException], ...] = (OutOfMemoryError,)

# The one policy under which Redis never drops a key the relay wrote.
SAFE_EVICTION_POLICY = "noeviction"

FIX_EVICTION_POLICY = (
    "set it to noeviction: CONFIG SET maxmemory-policy noeviction (and in redis.conf), "
    "or the managed service's maxmemory-policy parameter"
)


@dataclass(frozen=True)
class MemoryState:
    """Redis's memory as INFO tells it (the fullest node's, on a cluster)."""

    used_bytes: int
    max_bytes: int  # 0: no limit
    policy: str

    @property
    def used_ratio(self) -> float | None:
        """Used memory as a share of maxmemory; None without a limit."""
        return self.used_bytes / self.max_bytes if self.max_bytes else None

    @property
    def evicts(self) -> bool:
        return self.policy != SAFE_EVICTION_POLICY

    @property
    def full(self) -> bool:
        """Whether Redis refuses writes right now (at maxmemory, nothing to evict)."""
        return bool(self.max_bytes) and self.used_bytes >= self.max_bytes


def memory_state(redis: Any) -> MemoryState | None:
    """Redis's memory and eviction policy; None where INFO is not served (embedded)."""
    try:
        if isinstance(redis, RedisCluster):
            infos = list(redis.info("memory", target_nodes=RedisCluster.PRIMARIES).values())
        else:
            infos = [redis.info("memory")]
    except ResponseError:  # the embedded in-process store knows no INFO: it never evicts
        return None
    states = [MemoryState(int(info.get("used_memory", 0)), int(info.get("maxmemory", 0)),
                          str(info.get("maxmemory_policy", SAFE_EVICTION_POLICY)))
              for info in infos]
    # The node that evicts, else the fullest: what a person has to act on.
    return max(states, key=lambda state: (state.evicts, state.used_ratio or 0.0))


def eviction_problem(state: MemoryState | None) -> str | None:
    """Why this Redis may lose the relay's data, or None when it may not."""
    if state is None or not state.evicts:
        return None
    return (f"Redis's maxmemory-policy is {state.policy}: it may evict the relay's queue and "
            f"dedup marks (accepted events lost, duplicates sent); {FIX_EVICTION_POLICY}")


def cluster_problem(redis: Any) -> str | None:
    """Why a Redis Cluster cannot take writes now (its state is not ok), or None."""
    if not isinstance(redis, RedisCluster):
        return None
    state = redis.cluster_info().get("cluster_state")
    return None if state == "ok" else f"the Redis Cluster's state is {state}"


class MemoryWatch:
    """Logs, once per ``every_seconds``, when Redis nears its limit or may evict."""

    def __init__(
        self, redis: Any, *, warn_at_percent: float, every_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._warn_at = warn_at_percent / 100
        self._every = every_seconds
        self._clock = clock
        self._next_at = 0.0

    def check_if_due(self) -> MemoryState | None:
        """Look at Redis's memory when due; warn near the limit, error on eviction."""
        if self._clock() < self._next_at:
            return None
        self._next_at = self._clock() + self._every
        state = memory_state(self._redis)
        problem = eviction_problem(state)
        if problem:
            logger.error("%s", problem)
        elif state is not None and (state.used_ratio or 0.0) >= self._warn_at:
            logger.warning(
                "redis memory at %.0f%% of maxmemory (%d of %d bytes): at 100%% webhooks are "
                "refused (503) until the queue drains; raise maxmemory or find what holds "
                "the queue back", state.used_ratio * 100, state.used_bytes, state.max_bytes,
                extra={"redis_memory_used_bytes": state.used_bytes,
                       "redis_memory_max_bytes": state.max_bytes},
            )
        return state
