"""The event-type catalog against Customer.io's OpenAPI document and settings.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from app.to_mparticle import catalog
from tests.fixtures.customerio_openapi import load_facts

REPO_ROOT = Path(__file__).resolve().parents[2]
SETTINGS_FILE = REPO_ROOT / "settings.toml"

FEED_DEFAULTS = {
    "email_sent", "email_delivered", "email_opened", "email_clicked", "email_converted",
    "email_bounced", "email_spammed", "email_failed",
    "push_sent", "push_opened", "push_clicked", "push_converted", "push_bounced", "push_failed",
    "sms_sent", "sms_delivered", "sms_clicked", "sms_converted", "sms_bounced", "sms_failed",
}


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    """What Customer.io's OpenAPI document says (tests/fixtures/customerio_openapi.py)."""
    return load_facts()


def spec_event_types(facts: dict[str, Any]) -> dict[str, set[tuple[str, str]]]:
    """Schema name -> the (object_type, metric) pairs it describes."""
    return {name: {tuple(pair) for pair in pairs} for name, pairs in facts["event_types"].items()}


def test_exactly_the_twenty_feed_events_are_on_by_default():
    enabled = {name for name, on in catalog.default_toggles().items() if on}
    assert enabled == FEED_DEFAULTS
    assert set(catalog.FEED_DEFAULTS) == FEED_DEFAULTS
    assert len(catalog.FEED_DEFAULTS) == 20


def test_every_event_type_in_the_openapi_document_is_in_the_catalog(openapi):
    described = spec_event_types(openapi)
    missing = sorted(
        f"{name}: {object_type}_{metric}"
        for name, pairs in described.items()
        for object_type, metric in pairs
        if catalog.lookup(object_type, metric) is None
    )
    assert missing == []
    # The walk found what the document is known to hold, so an empty list means something.
    assert len(described) >= 69
    assert ("customer", "cio_subscription_preferences_changed") in described[
        "person_cio_subscription_preferences_changed"
    ]
    assert ("email", "cio_subscription_preferences_changed") in described[
        "person_cio_subscription_preferences_changed"
    ]


def test_the_push_drafted_erratum_is_still_in_the_document(openapi):
    # If Customer.io fixes it, SPEC_ERRATA in tests/fixtures/customerio_openapi.py can go.
    assert openapi["push_drafted_metric_enum"] == ["attempted"]
    assert catalog.lookup("push", "drafted") is not None


def test_every_feed_default_is_described_by_the_openapi_document(openapi):
    described = {pair for pairs in spec_event_types(openapi).values() for pair in pairs}
    for name in FEED_DEFAULTS:
        event_type = catalog.CATALOG[name]
        assert (event_type.object_type, event_type.metric) in described, name


@pytest.mark.parametrize(
    ("name", "feed_name"),
    [
        ("email_opened", "Email Opened"),
        ("email_clicked", "Email Link Clicked"),
        ("email_spammed", "Email Marked as Spam"),
        ("sms_delivered", "SMS Delivered"),
        ("push_clicked", "Push Link Clicked"),
        ("in_app_opened", "In-App Opened"),
        ("customer_cio_subscription_preferences_changed",
         "Customer Subscription Preferences Changed"),
    ],
)
def test_feed_names_are_the_title_case_names_of_the_mparticle_feed(name, feed_name):
    event_type = catalog.CATALOG[name]
    assert event_type.feed_name == feed_name
    assert event_type.event_name("mparticle_feed") == feed_name
    assert event_type.event_name("customerio") == name


def test_lookup_finds_a_known_pair():
    event_type = catalog.lookup("email", "opened")
    assert event_type is not None
    assert (event_type.object_type, event_type.metric, event_type.name) == (
        "email", "opened", "email_opened"
    )
    assert event_type.default_enabled is True


@pytest.mark.parametrize(
    ("object_type", "metric"),
    [("email", "teleported"), ("fax", "sent"), ("", ""), ("email_", "opened"), ("EMAIL", "sent")],
)
def test_an_unknown_pair_is_none(object_type, metric):
    assert catalog.lookup(object_type, metric) is None


def test_catalog_names_are_object_type_and_metric():
    for name, event_type in catalog.CATALOG.items():
        assert name == f"{event_type.object_type}_{event_type.metric}"
        assert event_type.object_type in catalog.CHANNEL_TITLES


def test_settings_toml_lists_every_catalog_type_with_its_default():
    events = tomllib.loads(SETTINGS_FILE.read_text())["events"]
    assert set(events) == set(catalog.CATALOG)
    wrong = {
        name: enabled
        for name, enabled in events.items()
        if enabled is not catalog.CATALOG[name].default_enabled
    }
    assert wrong == {}


def test_email_deferred_is_not_in_the_openapi_document_nor_the_catalog(openapi):
    # The example the docs give of a type an admin can add: published payloads carry it,
    # the document does not list it. If Customer.io adds it, pick another example.
    described = {pair for pairs in spec_event_types(openapi).values() for pair in pairs}
    assert ("email", "deferred") not in described
    assert catalog.lookup("email", "deferred") is None
    assert "email_deferred" not in catalog.default_toggles()


def test_event_type_of_a_known_pair_is_the_catalogs():
    assert catalog.event_type_of("email", "opened") is catalog.CATALOG["email_opened"]


@pytest.mark.parametrize(
    ("object_type", "metric", "feed_name"),
    [
        ("email", "deferred", "Email Deferred"),
        ("whatsapp", "read", "WhatsApp Read"),
        ("in_app", "dismissed", "In-App Dismissed"),
        ("fax", "sent", "Fax Sent"),
        ("fax", "clicked", "Fax Link Clicked"),
        ("email", "link_opened_twice", "Email Link Opened Twice"),
        ("email", "2fa_sent", "Email 2fa Sent"),
    ],
)
def test_a_type_the_catalog_does_not_list_is_named_after_itself_in_either_style(
    object_type, metric, feed_name
):
    event_type = catalog.event_type_of(object_type, metric)

    assert event_type.name == f"{object_type}_{metric}"
    assert event_type.name not in catalog.CATALOG
    assert event_type.default_enabled is False
    assert event_type.event_name("customerio") == event_type.name
    assert event_type.event_name("mparticle_feed") == feed_name
