"""mParticle → Customer.io under trouble: Customer.io down, the worker killed mid-way.

The Procfile's processes on the real Redis; batches keep arriving while Customer.io
answers 503 and the worker is SIGKILLed and started again. Every event accepted (2xx)
reaches Customer.io, in order per person; a request sent again after the kill is
byte-identical (so Customer.io's dedup by event id keeps one).
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_procfile_processes import _deployment
from tests.e2e.test_two_directions import post_batch
from tests.helpers.customerio_standin import CustomerIOStandIn, Reply
from tests.helpers.mparticle_standin import MParticleStandIn
from tests.helpers.processes import REPO_ROOT, wait_for
from tests.to_customerio.conftest import AUTHORIZATION, SITE_ID, TRACK_KEY, custom_event

pytestmark = pytest.mark.e2e

ARTIFACT = REPO_ROOT / "artifacts" / "to_customerio_faults.json"
# Short timeouts, so a killed worker's entries are taken over within seconds.
SECTIONS = {
    "relay": {"poll_interval_seconds": 0.05, "claim_idle_seconds": 4,
              "retry_schedule_seconds": [0.2, 0.5]},
    "mparticle": {"connect_timeout_seconds": 0.5, "read_timeout_seconds": 1.0},
    "customerio": {"connect_timeout_seconds": 0.5, "read_timeout_seconds": 1.0,
                   "max_requests_per_second": 200.0},
    "logging": {"format": "json", "level": "INFO"},
}


def items_sent(customerio: CustomerIOStandIn) -> dict[str, set[bytes]]:
    """Every event id sent, with each distinct encoding it was sent in."""
    sent: dict[str, set[bytes]] = {}
    for request in customerio.requests:
        if not request.path.endswith("/batch") or not request.body:
            continue
        for item in json.loads(request.body)["batch"]:
            if "id" in item:
                sent.setdefault(item["id"], set()).add(json.dumps(item, sort_keys=True).encode())
    return sent


def test_an_outage_and_a_killed_worker_lose_nothing_and_resend_byte_identical(
    tmp_path: Path, redis_url: str, redis: Any, mparticle: MParticleStandIn,
):
    with CustomerIOStandIn(site_id=SITE_ID, api_key=TRACK_KEY) as customerio:
        relay = _deployment(
            tmp_path, redis_url, mparticle, sections=SECTIONS,
            MPARTICLE_WEBHOOK_AUTHORIZATION=AUTHORIZATION, CUSTOMERIO_SITE_ID=SITE_ID,
            CUSTOMERIO_API_KEY=TRACK_KEY, CUSTOMERIO_BASE_URL=customerio.base_url,
        )
        relay.start("web")
        worker = relay.start("worker")
        relay.wait_until_healthy()
        accepted: dict[str, list[str]] = {}  # person -> event names, in order
        answers: Counter[int] = Counter()
        try:
            customerio.fail_for(3.0, Reply(503))
            for n in range(120):
                person = f"f{n % 6}"
                batch = {"events": [custom_event(f"Ev {n}")], "mpid": n,
                         "user_identities": [{"identity_type": "customer_id",
                                              "identity": person}],
                         "timestamp_unixtime_ms": 1_700_000_000_000 + n}
                answer = post_batch(relay.url, batch)
                answers[answer.status_code] += 1
                if 200 <= answer.status_code < 300:
                    accepted.setdefault(person, []).append(f"Ev_{n}")
                if n == 60:  # mid-stream, with requests likely in flight or waiting
                    worker.stop(signal.SIGKILL)
                    worker = relay.start("worker")
                time.sleep(0.01)
            total = sum(len(names) for names in accepted.values())
            delivered = wait_for(lambda: len(customerio.events()) >= total, 60)
        finally:
            relay.stop_all()

    encodings = items_sent(customerio)
    by_person = {person: [item["name"] for item in items if item["action"] == "event"]
                 for (_kind, person), items in customerio.items_by_person().items()}
    figures = {
        "batches_posted": sum(answers.values()),
        "answers": {str(status): count for status, count in answers.items()},
        "events_accepted": sum(len(names) for names in accepted.values()),
        "events_delivered": len(customerio.events()),
        "lost": sum(len(set(names) - set(by_person.get(person, [])))
                    for person, names in accepted.items()),
        "duplicate_events_dropped_by_customerio": customerio.duplicate_event_ids_dropped,
        "requests_answered_503": sum(1 for request in customerio.requests
                                     if request.status == 503),
        "scenario": "Customer.io 503 for 3 s; the worker SIGKILLed after 60 of 120 batches",
    }
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(figures, indent=2) + "\n")

    assert set(answers) == {202}, answers
    assert delivered and figures["lost"] == 0, figures
    assert by_person == accepted  # each person's events once, in the order accepted
    assert all(len(forms) == 1 for forms in encodings.values())  # a resend is identical
    assert figures["duplicate_events_dropped_by_customerio"] <= 20  # rare: one pass at most
    assert figures["requests_answered_503"] > 0  # the outage was felt, and retried through
