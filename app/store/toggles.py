"""Which event types are forwarded: the file's defaults plus admins' runtime overrides.

Overrides live in one Redis hash (``cior:toggles``: name -> "1"/"0") so every web and
worker process sees them; each process re-reads it at most once per
``toggle_refresh_seconds``, which keeps the webhook at one round trip per request.
Who changed what, and when, is kept beside it (``cior:toggles:changes``).

The store is given a default for every type the catalog knows; an admin may also turn
on (or off) any other *well-formed* name (:func:`is_well_formed`), an event type
Customer.io sends but does not document. Such a type is off by default, is listed
once an admin changed it (``known`` false), and its override comes through the same
cached read as any other.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app.store.keys import KeySpace

logger = logging.getLogger(__name__)


# A well-formed event-type name: ``<object_type>_<metric>`` in lower-case ASCII letters,
# digits and single underscores, where both the object type and the metric start with a
# letter (``email_deferred``, ``in_app_opened``, ``email_cio_subscription_preferences_changed``),
# at most 64 characters in all. No upper case, spaces, hyphens, leading, trailing or
# doubled underscores: such a name never comes from Customer.io.
MAX_NAME_LENGTH = 64
_WELL_FORMED = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*_[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
# Said after "must be" in every refusal (CLI, API, console).
NAME_RULE = (
    "<object_type>_<metric> in lower-case ASCII letters, digits and single underscores, "
    "the object type and the metric each starting with a letter, at most "
    f"{MAX_NAME_LENGTH} characters (e.g. email_deferred)"
)


def is_well_formed(name: object) -> bool:
    """Whether ``name`` is an event-type name an admin may turn on (see NAME_RULE)."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_NAME_LENGTH
        and _WELL_FORMED.fullmatch(name) is not None
    )


class MalformedEventTypeError(ValueError):
    """The name is not a well-formed ``<object_type>_<metric>`` (see NAME_RULE)."""

    def __init__(self, name: object) -> None:
        super().__init__(f"{name!r} is not a well-formed event type: must be {NAME_RULE}")
        self.name = name


@dataclass(frozen=True)
class Toggle:
    """One event type's switch, as shown to admins."""

    name: str
    default: bool
    override: bool | None
    changed_by: str | None
    changed_at: float | None
    # False for a type the catalog does not list (one an admin may add at run time).
    known: bool = True

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
            "known": self.known,
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
        """Whether events of this type are forwarded right now (within the refresh time).

        Any name: one without a default (unknown to the catalog) is off unless an admin
        turned it on. No Redis command between refreshes.
        """
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
            self._overrides = self._parse_overrides(self._redis.hgetall(self._keys.toggles))
            self._loaded_at = now
        finally:
            self._lock.release()

    def is_known(self, name: str) -> bool:
        """Whether the store was given a default for this type (the catalog lists it)."""
        return name in self._defaults

    def list(self) -> list[Toggle]:
        """Every known event type, then, by name, every other one an admin changed: turned
        on or off, or reset (then shown off, from its default, with who reset it)."""
        overrides = self._parse_overrides(self._redis.hgetall(self._keys.toggles))
        changes = {_as_text(name): change for name, change
                   in self._redis.hgetall(self._keys.toggle_changes).items()}
        added = sorted(
            name for name in {*overrides, *changes}
            if name not in self._defaults and is_well_formed(name)
        )
        return [
            self._toggle(name, overrides.get(name), changes.get(name))
            for name in (*self._defaults, *added)
        ]

    def _toggle(self, name: str, override: bool | None, change_json: Any) -> Toggle:
        change = json.loads(change_json) if change_json else {}
        return Toggle(
            name=name,
            default=self._defaults.get(name, False),
            override=override,
            changed_by=change.get("by"),
            changed_at=change.get("at"),
            known=name in self._defaults,
        )

    def _require_valid(self, name: str) -> None:
        if name not in self._defaults and not is_well_formed(name):
            raise MalformedEventTypeError(name)

    def get(self, name: str) -> Toggle:
        """One event type's switch; a well-formed unknown name is off by default."""
        self._require_valid(name)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(self._keys.toggles, name)
        pipe.hget(self._keys.toggle_changes, name)
        raw, change = pipe.execute()
        override = None if raw is None else _as_text(raw) == "1"
        return self._toggle(name, override, change)

    def set(self, name: str, enabled: bool, *, actor: str) -> Toggle:
        """Turn an event type on or off for every process, known to the catalog or not."""
        self._require_valid(name)
        change = json.dumps({"by": actor, "at": time.time(), "enabled": enabled})
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(self._keys.toggles, name, "1" if enabled else "0")
        pipe.hset(self._keys.toggle_changes, name, change)
        pipe.execute()
        logger.info("event type %s %s by %s%s", name, "enabled" if enabled else "disabled",
                    actor, "" if name in self._defaults else " (not in the catalog)")
        self._loaded_at = None
        return self.get(name)

    def reset(self, name: str, *, actor: str) -> Toggle:
        """Drop the override so the file's default applies again (off for an unknown type)."""
        self._require_valid(name)
        change = json.dumps({"by": actor, "at": time.time(), "enabled": None})
        pipe = self._redis.pipeline(transaction=False)
        pipe.hdel(self._keys.toggles, name)
        pipe.hset(self._keys.toggle_changes, name, change)
        pipe.execute()
        logger.info("event type %s reset to its default by %s", name, actor)
        self._loaded_at = None
        return self.get(name)

    def _parse_overrides(self, raw: Mapping[Any, Any]) -> dict[str, bool]:
        # A name that is neither known nor well-formed (written by hand) is no override.
        parsed = {}
        for name, value in raw.items():
            key = _as_text(name)
            if key in self._defaults or is_well_formed(key):
                parsed[key] = _as_text(value) == "1"
        return parsed


def _as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value
