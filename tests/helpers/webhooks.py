"""Customer.io reporting webhooks for tests: realistic payloads, signed like Customer.io."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from app.to_mparticle.signature import sign

SIGNING_KEY = "test-signing-key"
_counter = itertools.count(1)

# What a channel's message events carry, after Customer.io's OpenAPI examples.
_CHANNEL_DATA: dict[str, dict[str, Any]] = {
    "email": {"recipient": "person@example.com", "subject": "Welcome aboard"},
    "sms": {"recipient": "+15555550123"},
    "push": {"recipients": [{"device_id": "device-token-1", "device_platform": "ios"}]},
    "in_app": {"recipient": "42"},
    "slack": {"recipient": "#general"},
    "webhook": {"recipient": "https://hooks.example.com/x"},
    "whatsapp": {"recipient": "+15555550123"},
    "customer": {},
}
_METRIC_DATA: dict[str, dict[str, Any]] = {
    "clicked": {"href": "https://example.com/offer", "link_id": 3},
    "bounced": {"failure_message": "mailbox full"},
    "failed": {"failure_message": "provider error"},
}


def new_event_id() -> str:
    """A fresh ULID-like event id, unique within a test run."""
    return f"01TEST{time.time_ns():020d}{next(_counter):06d}"


def webhook(
    object_type: str = "email",
    metric: str = "opened",
    *,
    event_id: str | None = None,
    customer_id: str | None = "42",
    email: str | None = "person@example.com",
    delivery_id: str | None = "RPILAgUBcRhIBqSfeiIwdIYJKxTY",
    timestamp: int | None = None,
    **data: Any,
) -> dict[str, Any]:
    """A reporting webhook as Customer.io sends it; keyword arguments go into ``data``."""
    body_data: dict[str, Any] = {
        "action_id": 42,
        "campaign_id": 7,
        "journey_id": "01GW20GXAAXBKZD8J96M8FNV3R",
        "identifiers": {"id": customer_id, "email": email, "cio_id": "d9c106000001"},
        "customer_id": customer_id,
        "email_address": email,
    }
    if delivery_id is not None:
        body_data["delivery_id"] = delivery_id
    body_data.update(_CHANNEL_DATA.get(object_type, {}))
    body_data.update(_METRIC_DATA.get(metric, {}))
    body_data.update(data)
    return {
        "event_id": event_id or new_event_id(),
        "object_type": object_type,
        "metric": metric,
        "timestamp": timestamp or int(time.time()),
        "data": body_data,
    }


def signed_headers(body: bytes, key: str = SIGNING_KEY, timestamp: int | None = None) -> dict:
    """The headers Customer.io would send with this body."""
    stamp = str(timestamp if timestamp is not None else int(time.time()))
    return {
        "Content-Type": "application/json",
        "X-CIO-Timestamp": stamp,
        "X-CIO-Signature": sign(key.encode(), stamp, body),
    }


def encode(payload: Any) -> bytes:
    return json.dumps(payload).encode()
