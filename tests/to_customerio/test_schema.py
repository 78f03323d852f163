"""mParticle's outgoing batch: what is loaded, what is refused, which events are unusable."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from app.to_customerio.schema import event_problem, load_batch

BATCH_MS = 1_713_484_800_000
IDENTITIES_MESSAGE = "Neither a list of identities (identity_type, identity) nor an object."


def outgoing_batch(**changes: Any) -> dict[str, Any]:
    """A batch as mParticle's Webhook output sends it (outgoing JSON), with changes."""
    batch: dict[str, Any] = {
        "events": [
            {
                "event_type": "custom_event",
                "data": {
                    "event_name": "Added to Cart",
                    "custom_event_type": "transaction",
                    "event_id": 6004677780660780000,
                    "timestamp_unixtime_ms": BATCH_MS - 5_000,
                    "source_message_id": "e8335d31-2031-4bff-afec-17ffc1784697",
                    "custom_attributes": {"sku": "A-1"},
                },
            },
        ],
        "user_identities": [
            {"identity_type": "customer_id", "identity": "42",
             "timestamp_unixtime_ms": 1_600_000_000_000, "created_this_batch": False},
            {"identity_type": "email", "identity": "ann@example.com",
             "timestamp_unixtime_ms": 1_500_000_000_000, "created_this_batch": False},
        ],
        "user_attributes": {"$FirstName": "Ann", "plan": "gold"},
        "deleted_user_attributes": ["trial"],
        "mpid": -8_792_314_256_487_318_231,
        "environment": "production",
        "batch_id": 3_445_566_778_899_001,
        "message_id": "8ad1bc1d-4a4a-4c43-a8b3-35b5b7a0f4f1",
        "timestamp_unixtime_ms": BATCH_MS,
        "device_info": {"platform": "iOS", "ios_idfv": "1F1D0E36-A0A6-4F3C-A5E0-1A4B1D2B7E1A"},
        "application_info": {"application_name": "Shop"},
        "source_request_id": "f2d4f4a5-3b6c-4d8e-9f0a-1b2c3d4e5f60",
        "ip": "203.0.113.9",
        "schema_version": 2,
    }
    batch.update(changes)
    return batch


def messages_for(payload: Any) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        load_batch(payload)
    messages = caught.value.normalized_messages()
    assert isinstance(messages, dict)
    return messages


# --- load_batch -------------------------------------------------------------------


def test_a_batch_in_the_outgoing_shape_is_loaded_with_its_fields() -> None:
    loaded = load_batch(outgoing_batch())

    assert loaded["mpid"] == -8_792_314_256_487_318_231
    assert loaded["timestamp_unixtime_ms"] == BATCH_MS
    assert loaded["user_attributes"] == {"$FirstName": "Ann", "plan": "gold"}
    assert loaded["deleted_user_attributes"] == ["trial"]
    assert loaded["device_info"]["platform"] == "iOS"
    assert loaded["environment"] == "production"
    assert loaded["batch_id"] == 3_445_566_778_899_001
    assert loaded["user_identities"] == [
        {"identity_type": "customer_id", "identity": "42",
         "timestamp_unixtime_ms": 1_600_000_000_000},
        {"identity_type": "email", "identity": "ann@example.com",
         "timestamp_unixtime_ms": 1_500_000_000_000},
    ]


def test_unknown_fields_are_ignored() -> None:
    loaded = load_batch(outgoing_batch(ip="203.0.113.9", consent_state={"gdpr": {}}))

    assert "ip" not in loaded
    assert "consent_state" not in loaded


@pytest.mark.parametrize("payload", [[], "batch", 42, None, True, [{"events": []}]])
def test_a_body_that_is_not_a_json_object_is_refused(payload: Any) -> None:
    assert messages_for(payload) == {"_schema": ["the body must be a JSON object"]}


@pytest.mark.parametrize("events", [{}, "events", 3, True])
def test_events_present_but_not_a_list_are_refused(events: Any) -> None:
    assert "events" in messages_for(outgoing_batch(events=events))


def test_a_batch_without_events_is_usable_and_has_no_events() -> None:
    payload = outgoing_batch()
    del payload["events"]

    assert load_batch(payload)["events"] == []


def test_null_collections_read_as_absent_ones() -> None:
    loaded = load_batch(outgoing_batch(
        events=None, user_identities=None, user_attributes=None,
        deleted_user_attributes=None, mpid=None,
    ))

    assert loaded["events"] == []
    assert loaded["user_identities"] == []
    assert loaded["user_attributes"] == {}
    assert loaded["deleted_user_attributes"] == []
    assert "mpid" not in loaded


def test_the_events_are_returned_untouched_bad_ones_included() -> None:
    events = [{"event_type": "custom_event", "data": {"event_name": "x"}}, "odd", None, 7]
    loaded = load_batch(outgoing_batch(events=events))

    assert loaded["events"] is events
    assert all(a is b for a, b in zip(loaded["events"], events, strict=True))


@pytest.mark.parametrize("identities", ["42", 42, True])
def test_user_identities_neither_a_list_nor_an_object_are_refused(identities: Any) -> None:
    messages = messages_for(outgoing_batch(user_identities=identities))

    assert messages == {"user_identities": [IDENTITIES_MESSAGE]}


def test_the_events_api_identity_map_becomes_the_array_form() -> None:
    loaded = load_batch(outgoing_batch(
        user_identities={"customer_id": 42, "email": "ann@example.com", "other": None},
    ))

    assert loaded["user_identities"] == [
        {"identity_type": "customer_id", "identity": "42"},
        {"identity_type": "email", "identity": "ann@example.com"},
    ]


def test_identity_entries_that_cannot_be_used_are_left_out() -> None:
    loaded = load_batch(outgoing_batch(user_identities=[
        "customer_id",
        {"identity_type": "customer_id"},
        {"identity_type": 7, "identity": "42"},
        {"identity_type": "email", "identity": ["ann@example.com"]},
        {"identity_type": "customer_id", "identity": True},
        {"identity_type": "email", "identity": "ann@example.com",
         "timestamp_unixtime_ms": "soon"},
    ]))

    assert loaded["user_identities"] == [
        {"identity_type": "email", "identity": "ann@example.com"},
    ]


@pytest.mark.parametrize("attributes", [[], "plan=gold", 1])
def test_user_attributes_that_are_not_an_object_are_refused(attributes: Any) -> None:
    assert "user_attributes" in messages_for(outgoing_batch(user_attributes=attributes))


@pytest.mark.parametrize("deleted", [{}, "trial", 1])
def test_deleted_user_attributes_that_are_not_a_list_are_refused(deleted: Any) -> None:
    messages = messages_for(outgoing_batch(deleted_user_attributes=deleted))

    assert messages == {"deleted_user_attributes": ["Not a list."]}


def test_deleted_attribute_names_that_are_not_text_are_left_out() -> None:
    loaded = load_batch(outgoing_batch(deleted_user_attributes=["trial", 3, None, "", "plan"]))

    assert loaded["deleted_user_attributes"] == ["trial", "plan"]


@pytest.mark.parametrize(
    ("mpid", "loaded"),
    [
        (0, 0),
        (-8_792_314_256_487_318_231, -8_792_314_256_487_318_231),
        (2**63 - 1, 2**63 - 1),
        (-(2**63), -(2**63)),
        ("9223372036854775807", 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
        ("-42", -42),
    ],
)
def test_an_mpid_is_a_signed_64_bit_integer_or_its_digits(mpid: Any, loaded: int) -> None:
    assert load_batch(outgoing_batch(mpid=mpid))["mpid"] == loaded


@pytest.mark.parametrize(
    "mpid",
    [2**63, -(2**63) - 1, "9223372036854775808", "12a", "", "+1", " 1", "1.0", 1.0, True,
     [1], {"id": 1}, "٣"],
)
def test_an_mpid_that_is_not_a_signed_64_bit_integer_is_refused(mpid: Any) -> None:
    assert messages_for(outgoing_batch(mpid=mpid)) == {
        "mpid": ["Not a signed 64-bit integer."],
    }


def test_every_bad_field_is_named_in_the_messages() -> None:
    messages = messages_for(outgoing_batch(events={}, mpid="x", user_attributes=[]))

    assert set(messages) == {"events", "mpid", "user_attributes"}


@pytest.mark.parametrize("timestamp", ["soon", -1, 2**48, True, 1.5e12, None])
def test_a_batch_timestamp_that_is_not_milliseconds_is_left_out(timestamp: Any) -> None:
    loaded = load_batch(outgoing_batch(timestamp_unixtime_ms=timestamp))

    assert "timestamp_unixtime_ms" not in loaded


def test_a_batch_timestamp_of_digits_is_read_as_milliseconds() -> None:
    loaded = load_batch(outgoing_batch(timestamp_unixtime_ms=str(BATCH_MS)))

    assert loaded["timestamp_unixtime_ms"] == BATCH_MS


def test_device_info_that_is_not_an_object_is_left_out() -> None:
    assert "device_info" not in load_batch(outgoing_batch(device_info="iOS"))


# --- event_problem ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        ("custom_event", "not an object"),
        (None, "not an object"),
        ([{"event_type": "custom_event"}], "not an object"),
        ({"data": {"event_name": "x"}}, "event without event_type"),
        ({"event_type": "", "data": {}}, "event without event_type"),
        ({"event_type": 7, "data": {}}, "event_type not a string"),
        ({"event_type": "custom_event", "data": "x"}, "data not an object"),
        ({"event_type": "custom_event", "data": {}}, "custom_event without event_name"),
        ({"event_type": "custom_event"}, "custom_event without event_name"),
        ({"event_type": "custom_event", "data": {"event_name": "  "}},
         "custom_event without event_name"),
        ({"event_type": "custom_event", "data": {"event_name": 3}},
         "custom_event without event_name"),
        ({"event_type": "screen_view", "data": {}}, "screen_view without screen_name"),
        ({"event_type": "screen_view", "data": {"screen_name": ""}},
         "screen_view without screen_name"),
        ({"event_type": "push_registration", "data": {"register": True}},
         "push_registration without registration_token"),
    ],
)
def test_an_unusable_event_is_told_apart_with_its_reason(event: Any, problem: str) -> None:
    assert event_problem(event) == problem


@pytest.mark.parametrize(
    "event",
    [
        {"event_type": "custom_event", "data": {"event_name": "Added to Cart"}},
        {"event_type": "screen_view", "data": {"screen_name": "Home"}},
        {"event_type": "session_start", "data": {}},
        {"event_type": "session_end"},
        {"event_type": "opt_out", "data": {"is_opted_out": True}},
        {"event_type": "push_registration",
         "data": {"register": False, "registration_token": "t"}},
        {"event_type": "commerce_event", "data": {}},
        {"event_type": "something_new", "data": {"x": 1}},
    ],
)
def test_a_usable_event_has_no_problem(event: dict[str, Any]) -> None:
    assert event_problem(event) is None


# --- properties -------------------------------------------------------------------

# Hypothesis's text never holds a lone surrogate, but JSON can escape one: mix them in.
TEXT = st.lists(st.characters() | st.sampled_from(["\ud800", "\udfff"]), max_size=8).map(
    "".join
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=8,
)
BATCH_FIELDS = (
    "events", "user_identities", "user_attributes", "deleted_user_attributes", "mpid",
    "timestamp_unixtime_ms", "device_info", "application_info", "environment", "batch_id",
)
BATCH_LIKE = st.fixed_dictionaries({}, optional=dict.fromkeys(BATCH_FIELDS, JSON))


@settings(max_examples=150)
@given(payload=JSON | BATCH_LIKE)
def test_load_batch_raises_nothing_but_validation_error_on_any_json(payload: Any) -> None:
    try:
        loaded = load_batch(payload)
    except ValidationError as error:
        assert error.normalized_messages()
        return
    assert isinstance(loaded["events"], list)
    assert isinstance(loaded["user_identities"], list)
    assert isinstance(loaded["user_attributes"], dict)
    assert isinstance(loaded["deleted_user_attributes"], list)
    mpid = loaded.get("mpid")
    assert mpid is None or (type(mpid) is int and -(2**63) <= mpid < 2**63)


@settings(max_examples=100)
@given(event=JSON | st.fixed_dictionaries(
    {}, optional={"event_type": JSON | st.sampled_from(["custom_event", "screen_view"]),
                  "data": JSON},
))
def test_event_problem_answers_any_json_with_a_reason_or_none(event: Any) -> None:
    problem = event_problem(event)

    assert problem is None or (isinstance(problem, str) and problem)
