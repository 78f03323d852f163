"""Which event types are forwarded: the file's defaults plus admins' runtime overrides.

Overrides live in one Redis hash (``cior:toggles``: name -> "1"/"0") so every web and
worker process sees them; each process re-reads it at most once per
``toggle_refresh_seconds``, which keeps the webhook at one round trip per request.
Who changed what, and when, is kept beside it (``cior:toggles:changes``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app.store.keys import KeySpace

logger = logging.getLogger(__name__)


class UnknownEventTypeError(KeyError):
    """The name is not an event type this store was given a default for."""


@dataclass(frozen=True)
class Toggle:
    """One event type's switch, as shown to admins."""

    name: str
    default: bool
    override: bool | None
    changed_by: str | None
    changed_at: float | None

    @property
    def enabled(self) -> bool:
        return self.default if self.override is None else self.override

    @property
    def source(self) -> str:
        return "default" if self.override is None else "override"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "enabled": self.enabled,
            "default": self.default,
            "override": self.override,
            "source": self.source,
            "changed_by": self.changed_by,
            "changed_at": self.changed_at,
        }


class ToggleStore:
    """Reads and changes event-type overrides; caches them per process for a moment."""

    def __init__(
        self,
        redis: Any,
        keys: KeySpace,
        defaults: Mapping[str, bool],
        *,
        refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._defaults = dict(defaults)
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._overrides: dict[str, bool] = {}
        self._loaded_at: float | None = None
        self._lock = threading.Lock()

    def is_enabled(self, name: str) -> bool:
        """Whether events of this type are forwarded right now (within the refresh time)."""
        now = self._clock()
        if self._loaded_at is None or now - self._loaded_at >= self._refresh_seconds:
            self._refresh(now)
        override = self._overrides.get(name)
        return self._defaults.get(name, False) if override is None else override

    def _refresh(self, now: float) -> None:
        # One thread re-reads; the others go on with the overrides they have rather than
        # queue behind it: while Redis hangs, waiting here would add one socket timeout
        # per thread in line to the webhook's answer. Only the first load is waited for,
        # as there is nothing to go on with yet.
        if not self._lock.acquire(blocking=self._loaded_at is None):
            return
        try:
            self._overrides = _parse_overrides(self._redis.hgetall(self._keys.toggles))
            self._loaded_at = now
        finally:
            self._lock.release()

    def list(self) -> list[Toggle]:
        """Every known event type with its default, override and last change."""
        overrides = _parse_overrides(self._redis.hgetall(self._keys.toggles))
        changes = self._redis.hgetall(self._keys.toggle_changes)
        rows = []
        for name in self._defaults:
            change = json.loads(changes[name]) if name in changes else {}
            rows.append(
                Toggle(
                    name=name,
                    default=self._defaults.get(name, False),
                    override=overrides.get(name),
                    changed_by=change.get("by"),
                    changed_at=change.get("at"),
                )
            )
        return rows

    def _require_known(self, name: str) -> None:
        if name not in self._defaults:
            raise UnknownEventTypeError(name)

    def get(self, name: str) -> Toggle:
        self._require_known(name)
        return next(toggle for toggle in self.list() if toggle.name == name)

    def set(self, name: str, enabled: bool, *, actor: str) -> Toggle:
        """Turn an event type on or off for every process."""
        self._require_known(name)
        change = json.dumps({"by": actor, "at": time.time(), "enabled": enabled})
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(self._keys.toggles, name, "1" if enabled else "0")
        pipe.hset(self._keys.toggle_changes, name, change)
        pipe.execute()
        logger.info("event type %s %s by %s", name, "enabled" if enabled else "disabled", actor)
        self._loaded_at = None
        return self.get(name)

    def reset(self, name: str, *, actor: str) -> Toggle:
        """Drop the override so the file's default applies again."""
        self._require_known(name)
        change = json.dumps({"by": actor, "at": time.time(), "enabled": None})
        pipe = self._redis.pipeline(transaction=False)
        pipe.hdel(self._keys.toggles, name)
        pipe.hset(self._keys.toggle_changes, name, change)
        pipe.execute()
        logger.info("event type %s reset to its default by %s", name, actor)
        self._loaded_at = None
        return self.get(name)


def _parse_overrides(raw: Mapping[Any, Any]) -> dict[str, bool]:
    parsed = {}
    for name, value in raw.items():
        key = name.decode() if isinstance(name, bytes) else name
        text = value.decode() if isinstance(value, bytes) else value
        parsed[key] = text == "1"
    return parsed
