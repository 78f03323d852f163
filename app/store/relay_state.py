"""What the workers last saw of their destination, kept in Redis for /readyz, the console
and /admin/queue: last answer, rate-limit use, events relayed per minute.

Small and bounded: one hash, plus one counter per minute that expires after an hour.
"""

from __future__ import annotations

import time
from typing import Any

from app.store.keys import KeySpace

# Per-minute counters are kept this long: enough for an hour of throughput history.
MINUTE_COUNTER_TTL_SECONDS = 3600


def record_delivery(
    pipe: Any,
    keys: KeySpace,
    health_key: str,
    *,
    status: int | None,
    events: int,
    rate_limit_percent: float | None,
    now: float | None = None,
) -> None:
    """Note one answer of a destination on a pipeline the caller executes."""
    now = time.time() if now is None else now
    fields: dict[str, Any] = {"last_status": "" if status is None else status,
                              "last_at": f"{now:.3f}"}
    if rate_limit_percent is not None:
        fields["rate_limit_percent"] = rate_limit_percent
    pipe.hset(health_key, mapping=fields)
    if events:
        minute_key = keys.relayed_minute(int(now // 60))
        pipe.incrby(minute_key, events)
        pipe.expire(minute_key, MINUTE_COUNTER_TTL_SECONDS)


def read_relay_state(redis: Any, keys: KeySpace, now: float | None = None) -> dict[str, Any]:
    """mParticle's last answer, rate-limit use, credentials state and recent throughput."""
    now = time.time() if now is None else now
    minute = int(now // 60)
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.mparticle_health)
    pipe.get(keys.mparticle_auth)
    for offset in range(60):
        pipe.get(keys.relayed_minute(minute - offset))
    health, auth, *minutes = pipe.execute()
    per_minute = [int(value or 0) for value in minutes]
    last_at = float(health["last_at"]) if health.get("last_at") else None
    return {
        "mparticle_last_status": int(health["last_status"]) if health.get("last_status") else None,
        "mparticle_last_at": last_at,
        "rate_limit_percent_used": (
            float(health["rate_limit_percent"]) if health.get("rate_limit_percent") else None
        ),
        "credentials": f"refused ({auth})" if auth else "ok",
        "relayed_this_minute": per_minute[0],
        "relayed_last_hour": sum(per_minute),
        "relayed_per_minute": list(reversed(per_minute)),  # oldest first
    }
