"""The shape of a batch mParticle's Webhook output POSTs, and of the events in it.

mParticle sends its *outgoing* JSON: ``events[]``, ``user_identities`` as an array of
``{identity_type, identity, timestamp_unixtime_ms}`` (the Events API's map
``{"customer_id": …, "email": …}`` is accepted too and turned into the array),
``user_attributes``, ``deleted_user_attributes``, ``mpid``, ``timestamp_unixtime_ms``,
``device_info`` and more; unknown fields are ignored.

Strict where a wrong type means the batch cannot be read (the batch is quarantined):
``events`` not a list, ``user_identities`` neither a list nor an object,
``user_attributes`` not an object, ``deleted_user_attributes`` not a list, ``mpid`` not
a signed 64-bit integer. ``null`` counts as absent for each of them (mParticle's JSON
schema allows it). Lenient elsewhere: a batch timestamp that is not a millisecond
integer, a ``device_info`` that is not an object, an identity entry or a deleted
attribute name that cannot be used are left out, and the rest of the batch is taken.

The events are returned untouched: each one is judged on its own (``event_problem``),
so one odd event is quarantined alone and the rest of the batch still goes through.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_SIGNED_DIGITS = re.compile(r"-?[0-9]{1,19}")
# Millisecond times a ULID can carry (48 bits): anything else is not a usable time.
MAX_TIMESTAMP_MS = 2**48 - 1


class _List(fields.Field):
    """A JSON array, returned as it came: its items are judged one by one elsewhere."""

    default_error_messages: ClassVar[dict[str, str]] = {"invalid": "Not a list."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, list):
            raise self.make_error("invalid")
        return value


class _Object(fields.Field):
    """A JSON object, returned as it came."""

    default_error_messages: ClassVar[dict[str, str]] = {"invalid": "Not an object."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise self.make_error("invalid")
        return value


class _Int64(fields.Field):
    """A signed 64-bit integer: an int, or a string of digits with an optional "-"."""

    default_error_messages: ClassVar[dict[str, str]] = {
        "invalid": "Not a signed 64-bit integer.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, str) and _SIGNED_DIGITS.fullmatch(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        if not INT64_MIN <= value <= INT64_MAX:
            raise self.make_error("invalid")
        return value


class _Identities(fields.Field):
    """``user_identities`` in either shape, as the outgoing array form.

    Each entry becomes ``{"identity_type": str, "identity": str}`` plus
    ``timestamp_unixtime_ms`` when it is a usable millisecond time. Entries that are not
    objects, or whose type or value is not text (a number counts as text), are left out.
    """

    default_error_messages: ClassVar[dict[str, str]] = {
        "invalid": "Neither a list of identities (identity_type, identity) nor an object.",
    }

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> list[dict[str, Any]]:
        if isinstance(value, dict):
            entries = [{"identity_type": key, "identity": item} for key, item in value.items()]
        elif isinstance(value, list):
            entries = value
        else:
            raise self.make_error("invalid")
        identities = []
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            identity_type, identity = entry.get("identity_type"), entry.get("identity")
            if not isinstance(identity_type, str) or not identity_type:
                continue
            if isinstance(identity, int) and not isinstance(identity, bool):
                identity = str(identity)
            if not isinstance(identity, str):
                continue
            identity_entry: dict[str, Any] = {"identity_type": identity_type, "identity": identity}
            timestamp = millis(entry.get("timestamp_unixtime_ms"))
            if timestamp is not None:
                identity_entry["timestamp_unixtime_ms"] = timestamp
            identities.append(identity_entry)
        return identities


class _Millis(fields.Field):
    """A millisecond time, or None (left out) when the value is not one: never an error."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        return millis(value)


class _OptionalObject(fields.Field):
    """An object, or None (left out) when the value is something else: never an error."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        return value if isinstance(value, dict) else None


class _Names(fields.Field):
    """A list of attribute names; items that are not non-empty strings are left out."""

    default_error_messages: ClassVar[dict[str, str]] = {"invalid": "Not a list."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, list):
            raise self.make_error("invalid")
        return [name for name in value if isinstance(name, str) and name]


class OutgoingBatchSchema(Schema):
    """One batch of mParticle's outgoing JSON, as its Webhook output POSTs it."""

    class Meta:
        unknown = EXCLUDE

    events = _List(allow_none=True)
    user_identities = _Identities(allow_none=True)
    user_attributes = _Object(allow_none=True)
    deleted_user_attributes = _Names(allow_none=True)
    mpid = _Int64(allow_none=True)
    timestamp_unixtime_ms = _Millis(allow_none=True)
    device_info = _OptionalObject(allow_none=True)
    application_info = _OptionalObject(allow_none=True)
    environment = fields.Raw(allow_none=True)
    batch_id = fields.Raw(allow_none=True)
    message_id = fields.Raw(allow_none=True)
    source_request_id = fields.Raw(allow_none=True)

    @post_load
    def _fill_defaults(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Absent and null read the same: empty collections, and no key for the rest."""
        loaded = {key: value for key, value in batch.items() if value is not None}
        loaded.setdefault("events", [])
        loaded.setdefault("user_identities", [])
        loaded.setdefault("user_attributes", {})
        loaded.setdefault("deleted_user_attributes", [])
        return loaded


_schema = OutgoingBatchSchema()


def load_batch(payload: Any) -> dict[str, Any]:
    """Return the usable fields of an mParticle batch, or raise ValidationError.

    ``events`` is the list as it came (each item untouched), ``[]`` when absent;
    ``user_identities`` is always the array form. The error's ``normalized_messages()``
    are the quarantine's details.
    """
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["the body must be a JSON object"]})
    return _schema.load(payload)


def event_problem(event: Any) -> str | None:
    """Why one event of a batch is unusable, or None when it is usable.

    An unusable event is quarantined on its own; the rest of its batch is taken.
    """
    if not isinstance(event, dict):
        return "not an object"
    event_type = event.get("event_type")
    if event_type is None or event_type == "":
        return "event without event_type"
    if not isinstance(event_type, str):
        return "event_type not a string"
    data = event.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        return "data not an object"
    if event_type == "custom_event" and not _has_text(data.get("event_name")):
        return "custom_event without event_name"
    if event_type == "screen_view" and not _has_text(data.get("screen_name")):
        return "screen_view without screen_name"
    if event_type == "push_registration" and not _has_text(data.get("registration_token")):
        return "push_registration without registration_token"
    return None


def millis(value: Any) -> int | None:
    """A millisecond time from an int (or a string of digits), else None.

    Usable times are those a ULID can carry: 0 to 2**48 - 1.
    """
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 15:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_TIMESTAMP_MS else None


def _has_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())
