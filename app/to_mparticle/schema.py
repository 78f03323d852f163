"""The shape a reporting webhook must have for the relay to use it.

Only the envelope is required: ``event_id``, ``object_type``, ``metric``,
``timestamp`` and a ``data`` object. Customer.io's own OpenAPI document is not
consistent about ``data`` fields, so every one of them is optional here and the
mapping copes with what is there. Unknown top-level fields are ignored.
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

# Unix seconds between 2001 and 2286: catches milliseconds or garbage sent as seconds.
_TIMESTAMP_RANGE = validate.Range(min=1_000_000_000, max=9_999_999_999)
# Longest envelope strings accepted (they become parts of Redis keys and log lines).
MAX_EVENT_ID, MAX_OBJECT_TYPE, MAX_METRIC = 200, 64, 128


def _encodable(value: str) -> None:
    """Refuse a lone surrogate: JSON can escape one, but Redis keys must be UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Contains a lone surrogate; not valid Unicode text.") from None


class ReportingWebhookSchema(Schema):
    """Envelope of one Customer.io reporting webhook."""

    class Meta:
        unknown = EXCLUDE

    event_id = fields.String(
        required=True, validate=[validate.Length(min=1, max=MAX_EVENT_ID), _encodable]
    )
    object_type = fields.String(
        required=True, validate=[validate.Length(min=1, max=MAX_OBJECT_TYPE), _encodable]
    )
    metric = fields.String(
        required=True, validate=[validate.Length(min=1, max=MAX_METRIC), _encodable]
    )
    timestamp = fields.Integer(required=True, strict=True, validate=_TIMESTAMP_RANGE)
    data = fields.Dict(required=True)


_schema = ReportingWebhookSchema()


def load_webhook(payload: Any) -> dict[str, Any]:
    """Return the validated envelope, or raise ValidationError with per-field messages.

    Nearly every payload is a good one, so it is checked by hand first (a few
    microseconds, against tens for marshmallow on the webhook's hot path); the schema
    stays the authority and writes the messages for anything the fast check turns down.
    A property test holds the two to the same answers.
    """
    envelope = _fast_envelope(payload)
    if envelope is not None:
        return envelope
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["the body must be a JSON object"]})
    return _schema.load(payload)


def _fast_envelope(payload: Any) -> dict[str, Any] | None:
    """The envelope marshmallow would load from this payload, or None to let it decide.

    Mirrors ReportingWebhookSchema field by field; ``data`` is shared, not copied.
    """
    if type(payload) is not dict:
        return None
    get = payload.get
    event_id, object_type, metric = get("event_id"), get("object_type"), get("metric")
    timestamp, data = get("timestamp"), get("data")
    if (
        _is_text(event_id, MAX_EVENT_ID)
        and _is_text(object_type, MAX_OBJECT_TYPE)
        and _is_text(metric, MAX_METRIC)
        and type(timestamp) is int and 1_000_000_000 <= timestamp <= 9_999_999_999
        and type(data) is dict
    ):
        return {"event_id": event_id, "object_type": object_type, "metric": metric,
                "timestamp": timestamp, "data": data}
    return None


def usable_event_id(payload: Any) -> str | None:
    """The event_id a payload names when it is one the schema would accept, else None.

    For payloads refused otherwise: their story can still be kept under that id.
    """
    event_id = payload.get("event_id") if type(payload) is dict else None
    return event_id if _is_text(event_id, MAX_EVENT_ID) else None


def _is_text(value: Any, max_length: int) -> bool:
    """A non-empty str of at most ``max_length`` that encodes to UTF-8 (the schema's rule)."""
    if type(value) is not str or not 0 < len(value) <= max_length:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
