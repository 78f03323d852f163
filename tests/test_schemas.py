"""The reporting-webhook envelope: what is required, what is refused, what is ignored."""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import ValidationError

from app.webhooks.schemas import load_webhook

REQUIRED = ("event_id", "object_type", "metric", "timestamp", "data")


def envelope(**changes: Any) -> dict[str, Any]:
    """Customer.io's own email_sent example, with changes."""
    payload: dict[str, Any] = {
        "metric": "sent",
        "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQJ",
        "object_type": "email",
        "timestamp": 1613063089,
        "data": {
            "action_id": 42,
            "broadcast_id": 9,
            "customer_id": "0200000001",
            "delivery_id": "RPILAgUBcRhIBqSfeiIwdIYJKxTY",
            "identifiers": {"id": "42", "email": "test@example.com", "cio_id": "d9c106000001"},
            "recipient": "test@example.com",
        },
    }
    payload.update(changes)
    return payload


def messages_for(payload: Any) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        load_webhook(payload)
    return caught.value.normalized_messages()


def test_a_valid_envelope_loads_unchanged():
    payload = envelope()
    loaded = load_webhook(payload)
    assert loaded == payload


@pytest.mark.parametrize("field", REQUIRED)
def test_each_missing_required_field_is_named_in_the_messages(field):
    payload = envelope()
    del payload[field]
    messages = messages_for(payload)
    assert set(messages) == {field}
    assert messages[field]


def test_every_missing_field_is_named_at_once():
    assert set(messages_for({})) == set(REQUIRED)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timestamp", "1613063089"),
        ("timestamp", True),
        ("timestamp", 1613063089.0),
        ("timestamp", 1613063089.5),
        ("timestamp", 1613063089000),  # milliseconds
        ("timestamp", 0),
        ("timestamp", None),
        ("event_id", 12345),
        ("event_id", ""),
        ("event_id", None),
        ("event_id", "x" * 201),
        ("event_id", "\ud800"),  # JSON may escape a lone surrogate; Redis keys are UTF-8
        ("object_type", 3),
        ("object_type", ""),
        ("metric", ["sent"]),
        ("metric", "\udcff"),
        ("data", []),
        ("data", "{}"),
        ("data", None),
    ],
)
def test_a_field_of_the_wrong_type_or_range_is_refused_with_a_message(field, value):
    messages = messages_for(envelope(**{field: value}))
    assert list(messages) == [field]
    assert all(isinstance(message, str) and message for message in messages[field])


def test_a_timestamp_in_milliseconds_is_refused_as_out_of_range():
    messages = messages_for(envelope(timestamp=1613063089000))
    assert "9999999999" in messages["timestamp"][0]


def test_extra_top_level_keys_are_ignored():
    loaded = load_webhook(envelope(delivery_type="email", x_extra={"nested": [1, 2]}))
    assert set(loaded) == set(REQUIRED)


def test_data_fields_are_kept_whatever_they_are():
    data = {"anything": [1, {"x": None}], "identifiers": "odd", "recipient": 5}
    assert load_webhook(envelope(data=data))["data"] == data


def test_an_empty_data_object_is_accepted():
    assert load_webhook(envelope(data={}))["data"] == {}


@pytest.mark.parametrize("payload", [[], [envelope()], "email_sent", 42, 4.2, True, None])
def test_a_payload_that_is_not_an_object_is_refused_with_a_message(payload):
    messages = messages_for(payload)
    assert messages == {"_schema": ["the body must be a JSON object"]}
