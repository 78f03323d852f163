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
    """Return the validated envelope, or raise ValidationError with per-field messages."""
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["the body must be a JSON object"]})
    return _schema.load(payload)
