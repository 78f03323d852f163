"""Fixtures for mParticle → Customer.io: the app with the direction on, the stand-in."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from app import create_app
from app.extension import services
from tests.helpers.customerio_standin import CustomerIOStandIn

SITE_ID = "test-site-id"
TRACK_KEY = "test-track-api-key"
AUTHORIZATION = "Bearer mparticle-webhook-secret-0123456789"
AUTH = {"Authorization": AUTHORIZATION}
FAST = {
    "relay": {"retry_schedule_seconds": [0.01, 0.02, 0.05], "claim_idle_seconds": 1,
              "auth_recheck_seconds": 0.05, "poll_interval_seconds": 0.01},
    "customerio": {"connect_timeout_seconds": 0.3, "read_timeout_seconds": 0.5,
                   "max_requests_per_second": 1000.0},
    "mparticle": {"connect_timeout_seconds": 0.3, "read_timeout_seconds": 0.5},
}
_ids = itertools.count(1)


@pytest.fixture
def customerio() -> Iterator[CustomerIOStandIn]:
    """A real HTTP server on loopback standing in for Customer.io's Track API."""
    with CustomerIOStandIn(site_id=SITE_ID, api_key=TRACK_KEY) as server:
        yield server


@pytest.fixture
def make_app(
    make_settings: Callable[..., Any], redis: Any, customerio: CustomerIOStandIn
) -> Iterator[Callable[..., Flask]]:
    """Apps on the real Redis with mParticle's route on, sending to the stand-in."""
    apps: list[Flask] = []

    def build(sections: dict[str, dict[str, Any]] | None = None, **env: str | None) -> Flask:
        merged: dict[str, dict[str, Any]] = {name: dict(values) for name, values in FAST.items()}
        for name, values in (sections or {}).items():
            merged.setdefault(name, {}).update(values)
        environ: dict[str, str | None] = {
            "MPARTICLE_WEBHOOK_AUTHORIZATION": f"Bearer an-older-secret, {AUTHORIZATION}",
            "CUSTOMERIO_SITE_ID": SITE_ID, "CUSTOMERIO_API_KEY": TRACK_KEY,
            "CUSTOMERIO_BASE_URL": customerio.base_url, **env,
        }
        app = create_app(make_settings(merged, **environ), redis_client=redis)
        apps.append(app)
        return app

    yield build
    for app in apps:
        client = services(app).extras.get("customerio")
        if client is not None:
            client.session.close()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


def mparticle_batch(
    *events: dict[str, Any], customer_id: str | None = "cust-1", email: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A batch as mParticle's Webhook output sends it (outgoing JSON, identities as a list)."""
    identities = []
    if customer_id is not None:
        identities.append({"identity_type": "customer_id", "identity": customer_id,
                           "timestamp_unixtime_ms": 1_700_000_000_000})
    if email is not None:
        identities.append({"identity_type": "email", "identity": email,
                           "timestamp_unixtime_ms": 1_700_000_000_000})
    return {"events": list(events), "user_identities": identities, "mpid": 8_675_309,
            "environment": "production", "timestamp_unixtime_ms": 1_700_000_100_000,
            "message_id": f"msg-{next(_ids)}", **fields}


def custom_event(name: str = "Played Song", **attributes: Any) -> dict[str, Any]:
    n = next(_ids)
    return {"event_type": "custom_event", "data": {
        "event_name": name, "custom_event_type": "other", "event_id": f"evt-{n}",
        "source_message_id": f"src-{n}", "timestamp_unixtime_ms": 1_700_000_000_000 + n,
        "custom_attributes": attributes}}


def screen_view(name: str = "Home") -> dict[str, Any]:
    n = next(_ids)
    return {"event_type": "screen_view", "data": {
        "screen_name": name, "source_message_id": f"src-{n}",
        "timestamp_unixtime_ms": 1_700_000_000_000 + n}}
