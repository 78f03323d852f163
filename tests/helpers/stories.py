"""The store's story reads with the Customer.io → mParticle direction's facts filled in."""

from __future__ import annotations

from typing import Any

from app.store import stories
from app.store.keys import KeySpace
from app.to_mparticle import delivery
from app.to_mparticle.catalog import CATALOG


def find_event(redis: Any, keys: KeySpace, event_id: str) -> dict[str, Any] | None:
    """An event's story, as support sees it."""
    return stories.find_event(redis, keys, event_id, delivery.delivery_of)


def first_flags(redis: Any, keys: KeySpace, delivery_id: str) -> dict[str, Any]:
    """A Customer.io delivery's first-occurrence flags."""
    return stories.first_flags(redis, keys, delivery_id, list(CATALOG))
