"""Fixtures of the admin tests: the app with mParticle → Customer.io on too, and letters
written in that direction's dead letters the way the relay writes them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from app import create_app
from app.services import services
from app.to_customerio.ulid import story_id
from tests.helpers.customerio_standin import CustomerIOStandIn
from tests.to_customerio.conftest import custom_event, mparticle_batch

SITE_ID = "admin-test-site"
TRACK_KEY = "admin-test-track-key"
MPARTICLE_AUTHORIZATION = "Bearer mparticle-webhook-secret-for-the-admin-tests"
MPARTICLE_AUTH = {"Authorization": MPARTICLE_AUTHORIZATION}


@pytest.fixture
def customerio() -> Iterator[CustomerIOStandIn]:
    """A real HTTP server on loopback standing in for Customer.io's Track API."""
    with CustomerIOStandIn(site_id=SITE_ID, api_key=TRACK_KEY) as server:
        yield server


@pytest.fixture
def both_directions(
    make_settings: Callable[..., Any], redis: Any, customerio: CustomerIOStandIn
) -> Iterator[Flask]:
    """The app on the real Redis with both directions on, sending to the stand-in."""
    app = create_app(make_settings(
        MPARTICLE_WEBHOOK_AUTHORIZATION=MPARTICLE_AUTHORIZATION, CUSTOMERIO_SITE_ID=SITE_ID,
        CUSTOMERIO_API_KEY=TRACK_KEY, CUSTOMERIO_BASE_URL=customerio.base_url,
    ), redis_client=redis)
    yield app
    client = services(app).extras.get("customerio")
    if client is not None:
        client.session.close()


def post_mparticle(client: Any, payload: Any = None, *, body: bytes | None = None) -> Any:
    """POST a batch (or raw bytes) to mParticle's route, as mParticle's Webhook output does."""
    data = body if body is not None else json.dumps(payload).encode()
    response = client.post("/webhooks/mparticle", data=data, headers=MPARTICLE_AUTH,
                           content_type="application/json")
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def quarantine_in_to_customerio(client: Any, body: bytes = b"{not json") -> str:
    """An unusable body on mParticle's route: quarantined in that direction's dead letters."""
    answer = post_mparticle(client, body=body)
    assert answer["status"] == "quarantined"
    return answer["dead_letter_id"]


def refused_by_customerio(app: Flask, customerio: CustomerIOStandIn) -> tuple[str, str]:
    """A batch whose item Customer.io refuses (207): the worker dead-letters it.

    Returns the letter's id and the refused event's story id (from its idempotency key:
    what the letter names it by).
    """
    customerio.reject_items_where(lambda item: item.get("name") == "Refused")
    event = custom_event("Refused")
    post_mparticle(app.test_client(), mparticle_batch(event))
    services(app).build_customerio_worker().run(once=True)
    customerio.reject_items_where(None)
    relay = services(app)
    (letter_id, fields), = relay.redis.xrevrange(relay.customerio_keys.dead_letters, count=1)
    assert fields["reason"] == "Customer.io refused the item", fields
    return letter_id, story_id(event["data"]["source_message_id"])


def customerio_queue_length(app: Flask) -> int:
    relay = services(app)
    return relay.queue_stats(relay.customerio_keys)["length"]
