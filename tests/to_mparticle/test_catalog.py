"""The event-type catalog against Customer.io's OpenAPI document and settings.toml."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from app import catalog

REPO_ROOT = Path(__file__).resolve().parent.parent
SETTINGS_FILE = REPO_ROOT / "settings.toml"
OPENAPI_FILE = (
    REPO_ROOT.parent / "shared" / "reference" / "customerio-reporting-webhooks.openapi.json"
)

# The per-channel unions of the document's request body; each lists one schema per metric.
EVENT_UNIONS = (
    "customer_event", "email_event", "push_event", "sms_event", "whatsapp_event",
    "slack_event", "webhook_event", "in_app_event",
)
# Known mistakes in the document: schema name -> the metric it really describes.
# ``push_drafted`` says its metric enum is ["attempted"] (a copy of push_attempted).
SPEC_ERRATA = {"push_drafted": "drafted"}

FEED_DEFAULTS = {
    "email_sent", "email_delivered", "email_opened", "email_clicked", "email_converted",
    "email_bounced", "email_spammed", "email_failed",
    "push_sent", "push_opened", "push_clicked", "push_converted", "push_bounced", "push_failed",
    "sms_sent", "sms_delivered", "sms_clicked", "sms_converted", "sms_bounced", "sms_failed",
}


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    if not OPENAPI_FILE.is_file():
        pytest.skip(f"Customer.io's OpenAPI document is not at {OPENAPI_FILE}")
    return json.loads(OPENAPI_FILE.read_text())


def _resolve(schemas: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schemas[node["$ref"].rsplit("/", 1)[-1]]
    return node


def _enum_of(schemas: dict[str, Any], node: dict[str, Any], key: str) -> set[str]:
    """The enum of a top-level property, through $ref and allOf (never into ``data``)."""
    node = _resolve(schemas, node)
    found: set[str] = set()
    prop = node.get("properties", {}).get(key)
    if prop is not None:
        found |= set(_resolve(schemas, prop).get("enum", []))
    for part in node.get("allOf", []):
        found |= _enum_of(schemas, part, key)
    return found


def spec_event_types(openapi: dict[str, Any]) -> dict[str, set[tuple[str, str]]]:
    """Schema name -> the (object_type, metric) pairs it describes."""
    schemas = openapi["components"]["schemas"]
    described: dict[str, set[tuple[str, str]]] = {}
    for union in EVENT_UNIONS:
        for ref in schemas[union]["oneOf"]:
            name = ref["$ref"].rsplit("/", 1)[-1]
            schema = schemas[name]
            metrics = _enum_of(schemas, schema, "metric")
            if name in SPEC_ERRATA:
                metrics = {SPEC_ERRATA[name]}
            # The subscription-preferences schema names its channels "object_type_type".
            object_types = _enum_of(schemas, schema, "object_type") or _enum_of(
                schemas, schema, "object_type_type"
            )
            assert metrics, f"{name}: no metric enum found"
            assert object_types, f"{name}: no object_type enum found"
            described[name] = {(o, m) for o in object_types for m in metrics}
    return described


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
    schemas = openapi["components"]["schemas"]
    # If Customer.io fixes it, SPEC_ERRATA above can go.
    assert _enum_of(schemas, schemas["push_drafted"], "metric") == {"attempted"}
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
