"""The reporting-webhook envelope: what is required, what is refused, what is ignored."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from app.to_mparticle.schema import _fast_envelope, _schema, load_webhook
from tests.helpers import strategies

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


# -- the hand-written fast check agrees with the schema -------------------------------

_json_values = strategies.json_values(strategies.json_scalars(max_text=20), max_items=3,
                                      max_leaves=8)
# The envelope's boundaries: lengths around each limit, timestamps around the range, lone
# surrogates, and numbers that are equal to an int without being one.
_edges = st.sampled_from([
    "", "a", "x" * 64, "x" * 65, "x" * 128, "x" * 129, "x" * 200, "x" * 201, "é" * 200,
    "😀" * 64, "😀" * 65, "\ud800", "ok\udfff", 999_999_999, 1_000_000_000, 9_999_999_999,
    10_000_000_000, 1_613_063_089, 1_613_063_089.0, 1e999, True, False, None, {}, [], "{}",
])


@st.composite
def _envelopes(draw: st.DrawFn) -> Any:
    """Envelopes with each field valid, an edge value, any JSON value, or missing."""
    if draw(st.integers(0, 20)) == 0:
        return draw(_json_values)
    payload = envelope()
    for field in REQUIRED:
        choice = draw(st.sampled_from(["keep", "keep", "edge", "any", "drop"]))
        if choice == "edge":
            payload[field] = draw(_edges)
        elif choice == "any":
            payload[field] = draw(_json_values)
        elif choice == "drop":
            del payload[field]
    if draw(st.booleans()):
        payload[draw(st.text(max_size=8))] = draw(_json_values)
    return payload


@settings(max_examples=1500, deadline=None)
@given(_envelopes())
def test_the_fast_check_accepts_exactly_what_the_schema_accepts(payload):
    try:
        expected = _schema.load(payload) if isinstance(payload, dict) else None
    except ValidationError:
        expected = None

    assert _fast_envelope(payload) == expected
    if expected is None:
        with pytest.raises(ValidationError) as caught:
            load_webhook(payload)
        if isinstance(payload, dict):  # the messages are the schema's own
            with pytest.raises(ValidationError) as direct:
                _schema.load(payload)
            assert caught.value.normalized_messages() == direct.value.normalized_messages()
    else:
        assert load_webhook(payload) == expected


def test_the_fast_check_shares_data_rather_than_copying_it():
    payload = envelope()

    assert load_webhook(payload)["data"] is payload["data"]
