"""Customer.io reporting webhook -> mParticle custom event (CONTRACT §5)."""

from __future__ import annotations

import copy
import json
import math
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from marshmallow import ValidationError

from app.to_mparticle import catalog, mapping
from app.to_mparticle.batching import encode
from app.to_mparticle.schema import load_webhook
from tests.fixtures.customerio_openapi import load_facts
from tests.helpers import strategies
from tests.helpers.webhooks import webhook

# CONTRACT §5: the attributes copied from ``data`` when the webhook carries them.
CONTRACT_ATTRIBUTES = (
    "action_id", "broadcast_id", "campaign_id", "content_id", "delivery_id", "journey_id",
    "newsletter_id", "parent_action_id", "trigger_event_id", "recipient", "subject", "href",
    "link_id", "failure_message", "machine", "proxied", "prefetched", "synthetic",
    "transactional_message_id",
)
STYLES = ("customerio", "mparticle_feed")
TIMESTAMP = 1_713_484_800
EVENT_ID = "01E4C4CT6YDC7Y5M7FE1GWWPQJ"
DELIVERY_ID = "RPILAgUBcRhIBqSfeiIwdIYJKxTY"

# What each of the 20 feed events carries beyond the factory's defaults, after
# Customer.io's OpenAPI schemas (the factory adds recipient(s), href/link_id on clicks and
# failure_message on bounces and failures).
FEED_EVENT_DATA: dict[str, dict[str, Any]] = {
    "email_sent": {
        "broadcast_id": 9, "content_id": 3, "transactional_message_id": 12,
        "content": "<html><body>Welcome</body></html>",
        "headers": {"Customheader1": ["customvalue1"]}, "trigger_id": 1,
    },
    "email_delivered": {"newsletter_id": 10, "parent_action_id": 1},
    "email_opened": {"proxied": True, "prefetched": False, "synthetic": False},
    "email_clicked": {"machine": False},
    "email_converted": {"trigger_event_id": "21E4C3CT6YDC7Y4N7FE1GWWABC"},
    "email_bounced": {"failure_message": "550 5.1.1 mailbox does not exist"},
    "email_spammed": {"broadcast_id": 2},
    "email_failed": {"failure_message": "Something went wrong!"},
    "push_sent": {"content": '{"aps":{"alert":"Hi"}}'},
    "push_opened": {},
    "push_clicked": {"href": "myapp://offer/3"},
    "push_converted": {"trigger_event_id": "21E4C3CT6YDC7Y4N7FE1GWWABC"},
    "push_bounced": {
        "recipients": [
            {"device_id": "fcm-token-bad", "device_platform": "android",
             "failure_message": "BadDeviceToken"},
            {"device_id": "fcm-token-2", "device_platform": "android",
             "failure_message": "Unregistered"},
        ],
    },
    "push_failed": {"failure_message": "provider error", "recipients": None},
    "sms_sent": {"content": "Your code is 1234", "newsletter_id": 4},
    "sms_delivered": {},
    "sms_clicked": {"href": "https://example.com/s/3"},
    "sms_converted": {"trigger_event_id": "21E4C3CT6YDC7Y4N7FE1GWWABC"},
    "sms_bounced": {"failure_message": "30006 Landline or unreachable carrier"},
    "sms_failed": {"failure_message": "30008 Unknown error"},
}


def feed_webhook(name: str, **data: Any) -> dict[str, Any]:
    event_type = catalog.CATALOG[name]
    payload = webhook(
        event_type.object_type, event_type.metric, event_id=EVENT_ID, timestamp=TIMESTAMP,
        **{**FEED_EVENT_DATA[name], **data},
    )
    payload["data"] = {key: value for key, value in payload["data"].items() if value is not None}
    return load_webhook(payload)


def expected_attributes(payload: dict[str, Any]) -> dict[str, Any]:
    """CONTRACT §5, spelled out: the ids, then each listed scalar the webhook carries."""
    data = payload["data"]
    expected: dict[str, Any] = {
        "source_message_id": payload["event_id"],
        "timestamp_unixtime_ms": payload["timestamp"] * 1000,
    }
    for name in CONTRACT_ATTRIBUTES:
        value = data.get(name)
        if name == "journey_id" and value is None:
            value = data.get("subject_id")
        if isinstance(value, str | int | float | bool) and value != "":
            expected[name] = value[:4096] if isinstance(value, str) else value
    recipients = data.get("recipients")
    if isinstance(recipients, list) and recipients:
        first = recipients[0]
        expected["recipient"] = first["device_id"]
        expected["device_platform"] = first["device_platform"]
        if "failure_message" in first:
            expected["failure_message"] = first["failure_message"]
    return expected


def attributes_of(payload: dict[str, Any]) -> dict[str, Any]:
    return mapping.map_event(payload, "any")["data"]["custom_attributes"]


# -- the 20 feed events ---------------------------------------------------------------


def test_the_table_covers_exactly_the_twenty_feed_events():
    assert set(FEED_EVENT_DATA) == set(catalog.FEED_DEFAULTS)


def test_the_copied_attributes_are_exactly_those_the_contract_lists():
    assert set(mapping.COPIED_ATTRIBUTES) == set(CONTRACT_ATTRIBUTES)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", catalog.FEED_DEFAULTS)
def test_each_feed_event_maps_to_a_custom_event_as_the_contract_says(name, style):
    payload = feed_webhook(name)
    event_name = catalog.CATALOG[name].event_name(style)
    event = mapping.map_event(payload, event_name)

    assert event["event_type"] == "custom_event"
    assert set(event) == {"event_type", "data"}
    data = event["data"]
    assert data["event_name"] == event_name
    assert data["custom_event_type"] == "other"
    assert data["timestamp_unixtime_ms"] == TIMESTAMP * 1000
    assert data["source_message_id"] == str(uuid.uuid5(mapping.EVENT_NAMESPACE, EVENT_ID))
    assert uuid.UUID(data["source_message_id"]).version == 5
    assert data["custom_attributes"] == expected_attributes(payload)
    json.dumps(event, allow_nan=False)


@pytest.mark.parametrize("name", catalog.FEED_DEFAULTS)
def test_each_feed_event_names_its_person(name):
    assert mapping.person_identities(feed_webhook(name)) == {
        "customer_id": "42", "email": "person@example.com"
    }


@pytest.mark.parametrize(
    ("name", "customerio", "feed"),
    [
        ("email_opened", "email_opened", "Email Opened"),
        ("email_clicked", "email_clicked", "Email Link Clicked"),
        ("email_spammed", "email_spammed", "Email Marked as Spam"),
        ("sms_delivered", "sms_delivered", "SMS Delivered"),
        ("push_clicked", "push_clicked", "Push Link Clicked"),
    ],
)
def test_event_names_follow_the_configured_style(name, customerio, feed):
    payload = feed_webhook(name)
    for style, expected in (("customerio", customerio), ("mparticle_feed", feed)):
        event_name = catalog.CATALOG[name].event_name(style)
        assert mapping.map_event(payload, event_name)["data"]["event_name"] == expected


def test_an_email_open_carries_its_subject_and_open_details():
    attributes = attributes_of(feed_webhook("email_opened"))
    assert attributes == {
        "source_message_id": EVENT_ID,
        "timestamp_unixtime_ms": TIMESTAMP * 1000,
        "action_id": 42,
        "campaign_id": 7,
        "journey_id": "01GW20GXAAXBKZD8J96M8FNV3R",
        "delivery_id": DELIVERY_ID,
        "recipient": "person@example.com",
        "subject": "Welcome aboard",
        "proxied": True,
        "prefetched": False,
        "synthetic": False,
    }


def test_a_sent_email_leaves_out_its_body_headers_and_unlisted_fields():
    attributes = attributes_of(feed_webhook("email_sent"))
    for name in ("content", "headers", "trigger_id", "identifiers", "customer_id",
                 "email_address"):
        assert name not in attributes
    assert attributes["transactional_message_id"] == 12


# -- Customer.io's own examples -------------------------------------------------------


@pytest.fixture(scope="module")
def openapi_examples() -> dict[str, dict[str, Any]]:
    """Request examples of Customer.io's OpenAPI document (tests/fixtures)."""
    return copy.deepcopy(load_facts()["examples"])


def test_the_openapi_email_sent_example_maps_to_its_person_and_attributes(openapi_examples):
    payload = load_webhook(openapi_examples["email_sent"])
    event = mapping.map_event(payload, catalog.CATALOG["email_sent"].event_name("mparticle_feed"))
    assert event["data"]["event_name"] == "Email Sent"
    assert event["data"]["timestamp_unixtime_ms"] == 1613063089000
    assert event["data"]["custom_attributes"] == {
        "source_message_id": "01E4C4CT6YDC7Y5M7FE1GWWPQJ",
        "timestamp_unixtime_ms": 1613063089000,
        "action_id": 42,
        "broadcast_id": 9,
        "delivery_id": "RPILAgUBcRhIBqSfeiIwdIYJKxTY",
        "recipient": "test@example.com",
    }
    # identifiers.id ("42") wins over the deprecated customer_id ("0200000001").
    assert mapping.person_identities(payload) == {
        "customer_id": "42", "email": "test@example.com"
    }


def test_the_openapi_sms_sent_example_keeps_the_phone_number_out_of_the_email(openapi_examples):
    payload = load_webhook(openapi_examples["sms_sent"])
    attributes = attributes_of(payload)
    assert attributes["recipient"] == "+15551234567"
    assert mapping.person_identities(payload) == {
        "customer_id": "42", "email": "test@example.com"
    }
    del payload["data"]["identifiers"]["email"]
    assert mapping.person_identities(payload) == {"customer_id": "42"}


def test_the_openapi_customer_subscribed_example_maps(openapi_examples):
    payload = load_webhook(openapi_examples["customer_subscribed"])
    attributes = attributes_of(payload)
    assert attributes == {
        "source_message_id": "01E4C4CT6YDC7Y5M7FE1GWWPQJ",
        "timestamp_unixtime_ms": 1613063089000,
    }
    assert mapping.person_identities(payload) == {
        "customer_id": "42", "email": "test@example.com"
    }


# -- source_message_id -----------------------------------------------------------------


def test_the_event_namespace_never_changes():
    # Changing it would make mParticle see every re-sent event as a new one.
    assert str(mapping.EVENT_NAMESPACE) == "635b1ed3-e17e-555a-8a4e-41f72d942b28"


def test_source_message_id_is_stable_and_differs_per_event():
    first = mapping.map_event(webhook(event_id="a"), "email_opened")
    again = mapping.map_event(webhook(event_id="a"), "email_opened")
    other = mapping.map_event(webhook(event_id="b"), "email_opened")
    assert first["data"]["source_message_id"] == again["data"]["source_message_id"]
    assert first["data"]["source_message_id"] != other["data"]["source_message_id"]
    assert first["data"]["source_message_id"] == mapping.source_message_id("a")


# -- identities -----------------------------------------------------------------------


def test_identifiers_id_is_preferred_over_the_deprecated_customer_id():
    payload = webhook(customer_id="legacy-7")
    payload["data"]["identifiers"]["id"] = "current-7"
    assert mapping.person_identities(payload)["customer_id"] == "current-7"


def test_the_deprecated_customer_id_is_used_when_identifiers_has_no_id():
    payload = webhook(customer_id="legacy-7")
    del payload["data"]["identifiers"]["id"]
    assert mapping.person_identities(payload)["customer_id"] == "legacy-7"
    del payload["data"]["identifiers"]
    assert mapping.person_identities(payload)["customer_id"] == "legacy-7"


def test_integer_ids_become_strings():
    payload = webhook(customer_id=None)
    payload["data"]["identifiers"]["id"] = 42
    assert mapping.person_identities(payload)["customer_id"] == "42"
    payload["data"]["identifiers"]["id"] = None
    payload["data"]["customer_id"] = 7
    assert mapping.person_identities(payload)["customer_id"] == "7"


@pytest.mark.parametrize("value", [True, False, "", "   ", 4.2, {"id": 1}, [1]])
def test_an_id_that_is_not_text_or_an_integer_is_not_an_id(value):
    payload = webhook(email=None, customer_id=None)
    payload["data"]["identifiers"]["id"] = value
    payload["data"]["customer_id"] = value
    assert "customer_id" not in mapping.person_identities(payload)


def test_the_email_comes_from_identifiers_then_email_address_then_an_email_recipient():
    payload = webhook("email", "opened", email=None, recipient="recipient@example.com")
    payload["data"]["identifiers"]["email"] = "identifiers@example.com"
    payload["data"]["email_address"] = "address@example.com"
    assert mapping.person_identities(payload)["email"] == "identifiers@example.com"
    del payload["data"]["identifiers"]["email"]
    assert mapping.person_identities(payload)["email"] == "address@example.com"
    del payload["data"]["email_address"]
    assert mapping.person_identities(payload)["email"] == "recipient@example.com"


def test_a_recipient_of_a_message_on_another_channel_never_becomes_the_email():
    # Even an address-shaped recipient: only an email message's recipient is an address.
    for object_type in ("sms", "push", "whatsapp", "slack", "webhook", "in_app"):
        payload = webhook(object_type, "sent", email=None, recipient="someone@example.com")
        assert "email" not in mapping.person_identities(payload), object_type


@pytest.mark.parametrize(
    ("object_type", "recipient"),
    [
        ("sms", "+15555550123"),
        ("whatsapp", "+15555550123"),
        ("slack", "#general"),
        ("webhook", "https://hooks.example.com/x"),
        ("in_app", "42"),
    ],
)
def test_phone_numbers_channels_and_urls_never_become_the_email(object_type, recipient):
    payload = webhook(object_type, "sent", email=None, recipient=recipient)
    assert mapping.person_identities(payload) == {"customer_id": "42"}


def test_a_push_device_token_never_becomes_the_email():
    payload = webhook("push", "opened", email=None, customer_id=None,
                      recipients=[{"device_id": "person@example.com", "device_platform": "ios"}])
    assert mapping.person_identities(payload) == {}
    assert attributes_of(payload)["recipient"] == "person@example.com"


@pytest.mark.parametrize(
    "value",
    ["+15555550123", "#general", "https://user@hooks.example.com/x", "not an email",
     "@example.com", "person@localhost", "person @example.com"],
)
def test_values_that_are_not_addresses_are_never_the_email_even_on_email_messages(value):
    payload = webhook("email", "opened", email=None, recipient=value)
    payload["data"]["identifiers"]["email"] = value
    payload["data"]["email_address"] = value
    assert "email" not in mapping.person_identities(payload)


def test_no_id_and_no_email_gives_no_identities():
    payload = webhook("sms", "delivered", customer_id=None, email=None)
    assert mapping.person_identities(payload) == {}
    bare = {"event_id": EVENT_ID, "object_type": "email", "metric": "opened",
            "timestamp": TIMESTAMP, "data": {}}
    assert mapping.person_identities(bare) == {}


def test_a_person_with_only_an_email_has_only_the_email_identity():
    payload = webhook(customer_id=None, email="only@example.com")
    assert mapping.person_identities(payload) == {"email": "only@example.com"}


def test_odd_identifiers_do_not_break_identities():
    payload = webhook(customer_id=None)
    payload["data"]["identifiers"] = ["not", "an", "object"]
    payload["data"]["customer_id"] = "legacy"
    assert mapping.person_identities(payload) == {
        "customer_id": "legacy", "email": "person@example.com"
    }


# -- attributes -----------------------------------------------------------------------


def test_push_attributes_come_from_the_first_device():
    payload = feed_webhook("push_bounced")
    attributes = attributes_of(payload)
    assert attributes["recipient"] == "fcm-token-bad"
    assert attributes["device_platform"] == "android"
    assert attributes["failure_message"] == "BadDeviceToken"
    assert "recipients" not in attributes


def test_push_failure_without_devices_keeps_the_failure_message_of_the_data():
    attributes = attributes_of(feed_webhook("push_failed"))
    assert attributes["failure_message"] == "provider error"
    assert "recipient" not in attributes
    assert "device_platform" not in attributes


def test_only_the_recipient_platform_and_failure_come_from_a_push_device():
    payload = webhook("push", "clicked", href=None, link_id=None,
                      recipients=[{"device_id": "t", "href": "https://x", "link_id": 9}])
    attributes = attributes_of(payload)
    assert attributes["recipient"] == "t"
    assert "href" not in attributes
    assert "link_id" not in attributes


def test_journey_id_falls_back_to_subject_id():
    payload = webhook(journey_id=None, subject_id="01GW20GXAAXBKZD8J96M8FNV3R")
    assert attributes_of(payload)["journey_id"] == "01GW20GXAAXBKZD8J96M8FNV3R"
    payload = webhook(journey_id="journey", subject_id="subject")
    assert attributes_of(payload)["journey_id"] == "journey"


def test_none_dicts_and_lists_are_skipped():
    payload = webhook(subject=None, href={"url": "x"}, link_id=[1, 2], broadcast_id=None,
                      machine={"a": 1})
    attributes = attributes_of(payload)
    for name in ("subject", "href", "link_id", "broadcast_id", "machine"):
        assert name not in attributes


def test_empty_strings_are_skipped():
    assert "subject" not in attributes_of(webhook(subject=""))


def test_long_strings_are_capped_at_4096_characters():
    attributes = attributes_of(webhook(subject="é" * 5000, failure_message="x" * 4096))
    assert attributes["subject"] == "é" * 4096
    assert attributes["failure_message"] == "x" * 4096


def test_non_finite_floats_are_left_out():
    payload = webhook(action_id=math.nan, link_id=math.inf, content_id=-math.inf,
                      broadcast_id=1.5)
    attributes = attributes_of(payload)
    assert "action_id" not in attributes
    assert "link_id" not in attributes
    assert "content_id" not in attributes
    assert attributes["broadcast_id"] == 1.5


def test_lone_surrogates_are_replaced_so_the_event_can_be_encoded():
    payload = webhook(subject="bad \ud800 text", customer_id="id-\udcff")
    event = mapping.map_event(payload, "email_opened")
    assert event["data"]["custom_attributes"]["subject"] == "bad ? text"
    encode(event)  # UTF-8 would refuse a lone surrogate
    identities = mapping.person_identities(payload)
    assert identities["customer_id"] == "id-?"
    mapping.routing_key(payload).encode("utf-8")


def test_attribute_names_fit_mparticle():
    for name in attributes_of(feed_webhook("push_bounced")):
        assert len(name) <= mapping.MAX_ATTRIBUTE_NAME


# -- routing ----------------------------------------------------------------------------


def test_routing_key_is_the_person_then_the_delivery_then_the_event():
    assert mapping.routing_key(webhook(customer_id="p1")) == "p1"
    assert mapping.routing_key(webhook(customer_id=None, email="a@example.com")) == (
        "a@example.com"
    )
    assert mapping.routing_key(
        webhook("sms", "sent", customer_id=None, email=None, delivery_id="d1")
    ) == "d1"
    assert mapping.routing_key(
        webhook("sms", "sent", customer_id=None, email=None, delivery_id=None, event_id="e1")
    ) == "e1"


def test_delivery_id_of_reads_the_delivery():
    assert mapping.delivery_id_of(webhook(delivery_id="d1")) == "d1"
    assert mapping.delivery_id_of(webhook(delivery_id=None)) is None


# -- properties -------------------------------------------------------------------------

# Any code point, lone surrogates included: JSON can escape them and json.loads keeps them.
any_text = st.text(st.characters(exclude_categories=()), max_size=5000)
# What json.loads can produce: 1e999 decodes to inf, so non-finite floats are drawn often.
json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats() | st.sampled_from([math.nan, math.inf, -math.inf]) | any_text
)
json_values = strategies.json_values(json_scalars)
known_keys = st.sampled_from(
    [*CONTRACT_ATTRIBUTES, "identifiers", "recipients", "customer_id", "email_address",
     "subject_id", "device_platform"]
)
data_dicts = st.tuples(
    st.dictionaries(known_keys, json_values, max_size=12),
    st.dictionaries(st.text(max_size=20), json_values, max_size=3),
).map(lambda parts: {**parts[1], **parts[0]})
identifiers = st.fixed_dictionaries(
    {}, optional={"id": json_scalars, "email": json_scalars, "cio_id": json_scalars}
)
recipients = st.lists(
    st.fixed_dictionaries(
        {}, optional={"device_id": json_values, "device_platform": json_values,
                      "failure_message": json_values},
    ) | json_values,
    max_size=3,
)
envelopes = st.fixed_dictionaries(
    {
        "event_id": st.text(st.characters(exclude_categories=()), min_size=1, max_size=200),
        "object_type": st.sampled_from([*catalog.CHANNEL_TITLES, "fax"]),
        "metric": st.sampled_from(["sent", "opened", "clicked", "bounced", "failed"]),
        "timestamp": st.integers(min_value=1_000_000_000, max_value=9_999_999_999),
        "data": data_dicts,
    }
)


def _valid(payload: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return load_webhook(payload)
    except ValidationError:  # the property is about envelopes the schema accepts
        return None


@given(payload=envelopes, ids=identifiers, devices=recipients, with_extras=st.booleans())
def test_any_valid_envelope_maps_to_scalar_attributes_and_strict_json(
    payload, ids, devices, with_extras
):
    if with_extras:
        payload["data"]["identifiers"] = ids
        payload["data"]["recipients"] = devices
    loaded = _valid(payload)
    if loaded is None:
        return
    event = mapping.map_event(loaded, "any_name")
    for name, value in event["data"]["custom_attributes"].items():
        assert len(name) <= mapping.MAX_ATTRIBUTE_NAME
        assert isinstance(value, str | int | float | bool), (name, value)
        if isinstance(value, str):
            assert 0 < len(value) <= mapping.MAX_ATTRIBUTE_VALUE
        if isinstance(value, float):
            assert math.isfinite(value)
    json.dumps(event, allow_nan=False)
    encode(event)
    identities = mapping.person_identities(loaded)
    assert set(identities) <= {"customer_id", "email"}
    assert all(isinstance(value, str) and value for value in identities.values())
    encode(identities)
    mapping.routing_key(loaded).encode("utf-8")


@given(name=st.sampled_from(CONTRACT_ATTRIBUTES), value=json_scalars | json_values)
def test_any_value_of_a_listed_attribute_is_sent_as_a_scalar_or_left_out(name, value):
    payload = {"event_id": EVENT_ID, "object_type": "email", "metric": "opened",
               "timestamp": TIMESTAMP, "data": {name: value}}
    attributes = mapping.map_event(payload, "email_opened")["data"]["custom_attributes"]
    if name in attributes:
        sent = attributes[name]
        assert isinstance(sent, str | int | float | bool)
        assert not isinstance(value, dict | list)
        if isinstance(sent, str):
            assert 0 < len(sent) <= mapping.MAX_ATTRIBUTE_VALUE
    else:
        assert value is None or value == "" or isinstance(value, dict | list) or (
            isinstance(value, float) and not math.isfinite(value)
        )
    json.dumps(attributes, allow_nan=False)
    encode(attributes)
