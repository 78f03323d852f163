"""Customer.io reporting webhook -> mParticle custom event.

Pure functions: no Flask, no Redis, no I/O, so every rule here is unit-tested.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

# Namespace of the UUIDv5 ``source_message_id`` mParticle receives for each event:
# uuid5(EVENT_NAMESPACE, <Customer.io event_id>). Fixed forever: changing it would make
# mParticle see every re-sent event as new.
EVENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://customer.io/reporting-webhooks/event_id")

# Attributes copied from ``data`` when present (what the relay promises to send).
COPIED_ATTRIBUTES = (
    "action_id", "broadcast_id", "campaign_id", "content_id", "delivery_id", "journey_id",
    "newsletter_id", "parent_action_id", "trigger_event_id", "recipient", "subject", "href",
    "link_id", "failure_message", "machine", "proxied", "prefetched", "synthetic",
    "transactional_message_id",
)
# Where an attribute may also be found under an older or alternative name.
ATTRIBUTE_FALLBACKS = {"journey_id": "subject_id"}
# Push events name their devices in ``recipients`` instead of ``recipient``: these
# attributes come from the first entry, and from ``data`` only when it has none (push
# "failed" events carry ``failure_message`` in ``data`` and no ``recipients``).
PUSH_RECIPIENT_FIELDS = {
    "recipient": "device_id", "failure_message": "failure_message",
    "device_platform": "device_platform",
}

MAX_ATTRIBUTE_NAME = 256
MAX_ATTRIBUTE_VALUE = 4096


class UnmappableEventError(ValueError):
    """The event cannot be sent to mParticle (e.g. it names no person); says why."""


def source_message_id(event_id: str) -> str:
    """The stable mParticle message id of a Customer.io event: a UUIDv5 of its event_id."""
    return str(uuid.uuid5(EVENT_NAMESPACE, _utf8(event_id)))


def _utf8(text: str) -> str:
    """The text with any lone surrogate replaced by "?".

    JSON may escape a lone surrogate (``"\\ud800"``) and Python decodes it, but UTF-8
    cannot encode it: left in, it would make encoding the batch (or hashing a routing
    key) raise on every pass, and the event would block its queue for good.
    """
    return text.encode("utf-8", "replace").decode("utf-8")


def _text(value: Any) -> str | None:
    """A non-empty string from a str or int identifier, else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return _utf8(value.strip())
    return None


def _looks_like_email(value: str | None) -> bool:
    if not value or "@" not in value or value.startswith(("http://", "https://")):
        return False
    local, _, domain = value.rpartition("@")
    return bool(local) and "." in domain and " " not in value


def person_identities(webhook: dict[str, Any]) -> dict[str, str]:
    """mParticle user identities of the person an event is about (may be empty).

    ``customer_id`` is ``identifiers.id``, else the deprecated ``customer_id``;
    ``email`` is ``identifiers.email``, else ``email_address``, else the recipient of an
    email message. Phone numbers, device tokens, channels and URLs never become the email.
    """
    data = webhook.get("data") or {}
    identifiers = data.get("identifiers")
    if not isinstance(identifiers, dict):
        identifiers = {}
    identities = {}
    customer_id = _text(identifiers.get("id")) or _text(data.get("customer_id"))
    if customer_id:
        identities["customer_id"] = customer_id
    candidates = [identifiers.get("email"), data.get("email_address")]
    if webhook.get("object_type") == "email":
        candidates.append(data.get("recipient"))
    for candidate in candidates:
        email = _text(candidate) if isinstance(candidate, str) else None
        if _looks_like_email(email):
            identities["email"] = email
            break
    return identities


def routing_key(webhook: dict[str, Any]) -> str:
    """What decides an event's queue shard: its person, so their events stay in order."""
    identities = person_identities(webhook)
    data = webhook.get("data") or {}
    return (
        identities.get("customer_id")
        or identities.get("email")
        or _text(data.get("delivery_id"))
        or str(webhook.get("event_id"))
    )


def delivery_id_of(webhook: dict[str, Any]) -> str | None:
    """The delivery an event belongs to, for "send only the first time"."""
    return _text((webhook.get("data") or {}).get("delivery_id"))


def _scalar(value: Any) -> str | int | float | bool | None:
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        # JSON has no NaN or infinity (a body's 1e999 decodes to inf): mParticle would
        # refuse the whole request, so the attribute is left out instead.
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _utf8(value[:MAX_ATTRIBUTE_VALUE]) if value else None
    return None


def custom_attributes(webhook: dict[str, Any]) -> dict[str, Any]:
    """The event's custom attributes: ids, recipient and details, all scalars."""
    data = webhook.get("data") or {}
    attributes: dict[str, Any] = {
        "source_message_id": _utf8(str(webhook["event_id"])[:MAX_ATTRIBUTE_VALUE]),
        "timestamp_unixtime_ms": int(webhook["timestamp"]) * 1000,
    }
    push_recipient = _first_push_recipient(data)
    names = COPIED_ATTRIBUTES if push_recipient is None else (*COPIED_ATTRIBUTES, "device_platform")
    for name in names:
        value = None
        if push_recipient is not None and name in PUSH_RECIPIENT_FIELDS:
            value = _scalar(push_recipient.get(PUSH_RECIPIENT_FIELDS[name]))
        if value is None and name in data:  # most names are absent: skip the checks
            value = _scalar(data[name])
        if value is None and name in ATTRIBUTE_FALLBACKS:
            value = _scalar(data.get(ATTRIBUTE_FALLBACKS[name]))
        if value is not None:
            attributes[name] = value
    return attributes


def _first_push_recipient(data: dict[str, Any]) -> dict[str, Any] | None:
    """Push events list devices in ``recipients``; the first one stands for the event."""
    recipients = data.get("recipients")
    if isinstance(recipients, list) and recipients and isinstance(recipients[0], dict):
        return recipients[0]
    return None


def map_event(webhook: dict[str, Any], event_name: str) -> dict[str, Any]:
    """One mParticle custom event for one validated Customer.io webhook."""
    return {
        "event_type": "custom_event",
        "data": {
            "event_name": event_name,
            "custom_event_type": "other",
            "timestamp_unixtime_ms": int(webhook["timestamp"]) * 1000,
            "source_message_id": source_message_id(str(webhook["event_id"])),
            "custom_attributes": custom_attributes(webhook),
        },
    }
