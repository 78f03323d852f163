"""Both directions at once, through the Procfile's web and worker on the real Redis.

mParticle batches go to /webhooks/mparticle while Customer.io webhooks go to
/webhooks/customerio; the one worker process relays each to its stand-in. What must
arrive arrives once, in order per person, and nothing that must not be sent is sent.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from app.to_mparticle.mapping import source_message_id
from tests.e2e.test_procfile_processes import _deployment, post
from tests.helpers.customerio_standin import CustomerIOStandIn
from tests.helpers.mparticle_standin import MParticleStandIn
from tests.helpers.webhooks import webhook
from tests.to_customerio.conftest import (
    AUTHORIZATION,
    SITE_ID,
    TRACK_KEY,
    custom_event,
    mparticle_batch,
    screen_view,
)

pytestmark = pytest.mark.e2e

SECTIONS = {
    "relay": {"poll_interval_seconds": 0.05},
    "customerio": {"max_requests_per_second": 200.0},
    "logging": {"format": "json", "level": "INFO"},
}


@pytest.fixture
def customerio() -> Any:
    with CustomerIOStandIn(site_id=SITE_ID, api_key=TRACK_KEY) as server:
        yield server


def post_batch(url: str, batch: Any, authorization: str = AUTHORIZATION) -> requests.Response:
    body = batch if isinstance(batch, bytes) else json.dumps(batch).encode()
    return requests.post(f"{url}/webhooks/mparticle", data=body, timeout=5, headers={
        "Authorization": authorization, "Content-Type": "application/json"})


def test_both_directions_at_once_deliver_everything_once_and_in_order(
    tmp_path: Path, redis_url: str, redis: Any, mparticle: MParticleStandIn,
    customerio: CustomerIOStandIn,
):
    relay = _deployment(
        tmp_path, redis_url, mparticle, sections=SECTIONS,
        MPARTICLE_WEBHOOK_AUTHORIZATION=AUTHORIZATION, CUSTOMERIO_SITE_ID=SITE_ID,
        CUSTOMERIO_API_KEY=TRACK_KEY, CUSTOMERIO_BASE_URL=customerio.base_url,
    )
    relay.start("web")
    worker = relay.start("worker")
    relay.wait_until_healthy()
    try:
        # Customer.io → mParticle, meanwhile, from another thread.
        to_mparticle = [webhook("email", "opened", customer_id=f"c{n % 4}",
                                delivery_id=f"both-{n}") for n in range(40)]
        answers: list[int] = []
        sender = threading.Thread(target=lambda: answers.extend(
            post(relay, payload).status_code for payload in to_mparticle))
        sender.start()

        expected: dict[str, list[str]] = {}  # person -> event names in order
        statuses: Counter[int] = Counter()
        for n in range(60):
            person = f"m{n % 5}"
            events = [custom_event(f"Step {n}"), screen_view(f"Screen {n}"),
                      {"event_type": "session_start", "data": {"timestamp_unixtime_ms": 1}}]
            batch = mparticle_batch(*events, customer_id=person)
            answer = post_batch(relay.url, batch)
            statuses[answer.status_code] += 1
            assert answer.json()["queued"] == 2 and answer.json()["ignored"] == 1
            expected.setdefault(person, []).extend([f"Step_{n}", f"Screen_{n}"])
            if n % 10 == 0:  # mParticle retries a POST: taken once
                assert post_batch(relay.url, batch).json() == {"status": "duplicate"}
        echo = mparticle_batch(custom_event("email_opened", source_message_id="x"),
                               customer_id="m0")
        assert post_batch(relay.url, echo).json()["status"] == "ignored"
        nobody = post_batch(relay.url, mparticle_batch(custom_event(), customer_id=None))
        assert nobody.json()["status"] == "ignored"
        assert post_batch(relay.url, b"{}", authorization="Bearer nope").status_code == 401
        sender.join(30)

        total = sum(len(names) for names in expected.values())
        assert customerio.wait_for_items(total + 60, timeout=60)  # + an identify per batch
        assert mparticle.wait_for_events(len(to_mparticle), timeout=60)
    finally:
        relay.stop_all()

    assert statuses == Counter({202: 60}) and set(answers) == {202}
    sent = Counter(item["id"] for item in customerio.events())
    assert all(count == 1 for count in sent.values())
    for (_kind, person), items in customerio.items_by_person().items():
        names = [item["name"] for item in items if item["action"] in ("event", "screen")]
        assert names == expected[person], person
        assert items[0]["action"] == "identify"
    assert "session_start" not in {item.get("name") for item in customerio.events()}
    assert "email_opened" not in {item.get("name") for item in customerio.events()}
    ids = Counter(mparticle.source_message_ids())
    assert ids == Counter(source_message_id(payload["event_id"]) for payload in to_mparticle)
    assert "Traceback" not in worker.output()
