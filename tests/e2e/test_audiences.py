"""Audiences end to end: Firehose-style deliveries through the Procfile's processes.

A private redis-server (so it can be stopped) serves the web and worker; deliveries are
posted as AWS Data Firehose posts them, retried as it retries (the same request id,
after any answer but 200), and what Customer.io took is read off the stand-in. Figures go
to ``artifacts/audiences.json``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.test_procfile_processes import _deployment
from tests.helpers import firehose
from tests.helpers.customerio_standin import CustomerIOStandIn
from tests.helpers.firehose import audience_message
from tests.helpers.mparticle_standin import MParticleStandIn
from tests.helpers.processes import REPO_ROOT, wait_for
from tests.helpers.redis_cluster import RedisServer, redis_binaries_missing
from tests.to_customerio.conftest import SITE_ID, TRACK_KEY

missing = redis_binaries_missing()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(missing), reason=str(missing))]

ARTIFACT = REPO_ROOT / "artifacts" / "audiences.json"
SECTIONS = {
    "relay": {"poll_interval_seconds": 0.05},
    "customerio": {"max_requests_per_second": 500.0},
    "logging": {"format": "json", "level": "INFO"},
}
URL_PATH = "/webhooks/mparticle/audiences"


def post(url: str, body: dict[str, Any], request_id: str) -> int:
    try:
        return requests.post(f"{url}{URL_PATH}", data=firehose.encode(body), timeout=10,
                             headers=firehose.headers(request_id)).status_code
    except requests.RequestException:
        return 0


def test_deliveries_out_of_order_retried_and_through_a_redis_outage_end_as_the_newest(
    tmp_path: Path, mparticle: MParticleStandIn,
):
    rng = random.Random(7)
    people = [f"person-{n}" for n in range(8)]
    audience_ids = [11030 + n for n in range(10)]
    # Every person joins and leaves audiences over time; the newest change per (person,
    # audience) decides where they end.
    changes = []
    for step in range(200):
        person, audience = rng.choice(people), rng.choice(audience_ids)
        changes.append(audience_message(audience, member=rng.random() < 0.6,
                                        customer_id=person,
                                        changed_at_ms=1_700_000_000_000 + step * 1000))
    final: dict[str, set[int]] = {person: set() for person in people}
    newest: dict[tuple[str, int], dict[str, Any]] = {}
    for change in changes:
        newest[(change["UserIdentities"]["CustomerId"], change["AudienceId"])] = change
    for (person, audience), change in newest.items():
        if change["IsMember"]:
            final[person].add(audience)
    shuffled = changes[:]
    rng.shuffle(shuffled)  # records arrive out of order
    deliveries = [firehose.delivery(*shuffled[start:start + 10])
                  for start in range(0, len(shuffled), 10)]

    server = RedisServer(tmp_path / "redis", options=("--appendonly", "yes"))
    server.start()
    with CustomerIOStandIn(site_id=SITE_ID, api_key=TRACK_KEY) as customerio:
        relay = _deployment(
            tmp_path, server.url, mparticle, sections=SECTIONS,
            MPARTICLE_AUDIENCE_ACCESS_KEY=firehose.ACCESS_KEY, CUSTOMERIO_SITE_ID=SITE_ID,
            CUSTOMERIO_API_KEY=TRACK_KEY, CUSTOMERIO_BASE_URL=customerio.base_url,
        )
        answers: list[int] = []
        try:
            relay.start("web")
            worker = relay.start("worker")
            relay.wait_until_healthy()
            unanswered = []
            for index, (body, request_id) in enumerate(deliveries):
                if index == 8:
                    server.stop()  # Redis away: Firehose is answered 503 and retries
                if index == 12:
                    server.start()
                status = post(relay.url, body, request_id)
                answers.append(status)
                if status != 200:
                    unanswered.append((body, request_id))
                if index % 5 == 0 and status == 200:  # Firehose resends a delivery it took
                    answers.append(post(relay.url, body, request_id))
            retries = [post(relay.url, body, request_id) for body, request_id in unanswered]
            wait_for(lambda: len(customerio.accepted_items()) > 0, 20)
            time.sleep(1.0)

            expected = {person: _quoted(audiences) for person, audiences in final.items()}
            converged = wait_for(lambda: _last_memberships(customerio) == expected, 30)
            worker_log = worker.output()
        finally:
            relay.stop_all()
            server.stop()

    last = _last_memberships(customerio)
    figures = {
        "changes": len(changes), "deliveries": len(deliveries),
        "answers": {str(s): answers.count(s) for s in sorted(set(answers))},
        "retried_after_503": len(unanswered),
        "retry_answers": {str(s): retries.count(s) for s in sorted(set(retries))},
        "identifies_sent": len(customerio.accepted_items()),
        "people_right_at_the_end": sum(last.get(p) == _quoted(a) for p, a in final.items()),
        "people": len(people),
        "redis": "private redis-server, stopped for 4 of 20 deliveries",
    }
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(figures, indent=2) + "\n")

    assert set(answers) <= {200, 503} and 503 in answers, figures
    assert set(retries) == {200}, figures
    assert converged, (last, final)
    assert "Traceback" not in worker_log


def _quoted(audiences: set[int]) -> str:
    return ",".join(f"'{audience}'" for audience in sorted(audiences))


def _last_memberships(customerio: CustomerIOStandIn) -> dict[str, str]:
    last = {}
    for item in customerio.accepted_items():
        last[item["identifiers"]["id"]] = item["attributes"]["SegmentMembership"]
    return last
