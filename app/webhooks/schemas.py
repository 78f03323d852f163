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
        required=True, validate=[validate.Length(min=1, max=200), _encodable]
    )
    object_type = fields.String(
        required=True, validate=[validate.Length(min=1, max=64), _encodable]
    )
    metric = fields.String(required=True, validate=[validate.Length(min=1, max=128), _encodable])
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
        type(event_id) is str and 0 < len(event_id) <= 200 and _is_utf8(event_id)
        and type(object_type) is str and 0 < len(object_type) <= 64 and _is_utf8(object_type)
        and type(metric) is str and 0 < len(metric) <= 128 and _is_utf8(metric)
        and type(timestamp) is int and 1_000_000_000 <= timestamp <= 9_999_999_999
        and type(data) is dict
    ):
        return {"event_id": event_id, "object_type": object_type, "metric": metric,
                "timestamp": timestamp, "data": data}
    return None


def _is_utf8(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
