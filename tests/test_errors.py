"""Error answers that come from below the view: one JSON shape, the right status."""

from __future__ import annotations

import time

from app.services import services
from tests.helpers.webhooks import encode, signed_headers, webhook


def test_a_web_process_whose_clock_is_days_off_answers_503_and_writes_nothing(app, client, redis):
    # Its marks would land in buckets the other processes do not look in: Customer.io
    # retries a 503 later, when the clocks agree again.
    store = services(app).event_store
    store._clock = lambda: time.time() - 10 * 24 * 3600
    body = encode(webhook("email", "opened"))

    response = client.post("/webhooks/customerio", data=body, headers=signed_headers(body))

    assert response.status_code == 503
    assert response.get_json()["error"] == "service unavailable"
    assert redis.keys("*") == []
