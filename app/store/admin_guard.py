"""What guards admin access and lives in Redis: wrong-token counts and console sign-ins.

Both are kept in Redis, not in a web process, so that every process (and every host)
sees the same lockout and the same sign-out.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

from app.store import scripts
from app.store.keys import KeySpace

# Ten wrong tokens from one address within a minute lock it out until the minute is over:
# at most ten guesses a minute, and a person who mistypes a few times is not bothered.
FAILURE_LIMIT = 10
FAILURE_WINDOW_SECONDS = 60


@dataclass(frozen=True)
class Failures:
    """How many wrong tokens one client sent in its window, and how long the window has left."""

    count: int
    seconds_left: int
    limit: int

    @property
    def locked_out(self) -> bool:
        # A counter without a TTL (written by hand) locks nobody out for ever: the next
        # wrong token gives it its window again.
        return self.count >= self.limit and self.seconds_left > 0


class SignInFailures:
    """Wrong admin tokens per client address, counted over a fixed window by every process."""

    def __init__(self, redis: Any, keys: KeySpace, *, limit: int = FAILURE_LIMIT,
                 window_seconds: int = FAILURE_WINDOW_SECONDS) -> None:
        self._redis = redis
        self._keys = keys
        self.limit = limit
        self.window_seconds = window_seconds
        self._note = scripts.register(redis, "note_admin_failure")

    def of(self, client_address: str) -> Failures:
        """The client's failures so far in its window (none once the window has passed)."""
        pipe = self._redis.pipeline(transaction=False)
        key = self._keys.admin_failures(client_address)
        pipe.get(key)
        pipe.pttl(key)
        count, ms_left = pipe.execute()
        return self._failures(int(count or 0), ms_left)

    def note(self, client_address: str) -> Failures:
        """Count one more wrong token from this client; the first one starts its window."""
        count, ms_left = self._note(keys=[self._keys.admin_failures(client_address)],
                                    args=[self.window_seconds * 1000])
        return self._failures(int(count), ms_left)

    def _failures(self, count: int, ms_left: int) -> Failures:
        # Rounded up: a Retry-After of 0 would invite a retry that is still refused.
        seconds_left = math.ceil(ms_left / 1000) if count and ms_left > 0 else 0
        return Failures(count=count, seconds_left=seconds_left, limit=self.limit)


class ConsoleSessions:
    """Console sign-ins that the server can end: sign-out deletes one, its TTL ends it.

    A signed cookie alone cannot be taken back: a copy of it would work until it expires.
    So the cookie carries a random id, and a sign-in is live only while its key exists.
    The key is named after a hash of the id, so whoever reads Redis (or a backup of it)
    learns no id a cookie could carry.
    """

    def __init__(self, redis: Any, keys: KeySpace) -> None:
        self._redis = redis
        self._keys = keys

    def open(self, *, lifetime_seconds: int) -> str:
        """Start a sign-in that lasts ``lifetime_seconds``; return the id for the cookie."""
        session_id = secrets.token_urlsafe(32)
        self._redis.set(self._key(session_id), int(time.time()), ex=lifetime_seconds)
        return session_id

    def is_live(self, session_id: str) -> bool:
        """Whether this sign-in has neither been signed out nor run out."""
        return bool(self._redis.exists(self._key(session_id)))

    def close(self, session_id: str) -> None:
        """End this sign-in for every copy of its cookie."""
        self._redis.delete(self._key(session_id))

    def _key(self, session_id: str) -> str:
        digest = hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()
        return self._keys.console_session(digest)
