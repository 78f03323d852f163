"""End to end: the Procfile's web and worker processes, the real Redis, mParticle on loopback.

Nothing is faked here: gunicorn and the worker are started with bash exactly as the
Procfile writes them, webhooks are signed and posted over HTTP, and the stand-in
checks Basic auth and the batch schema of what reaches "mParticle".
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from app.to_mparticle import catalog, mapping
from tests.conftest import ADMIN_TOKEN, STANDIN_KEY, STANDIN_SECRET, toml_text
from tests.helpers.mparticle_standin import MParticleStandIn, Reply
from tests.helpers.processes import REPO_ROOT, Deployment, process_env, wait_for
from tests.helpers.webhooks import SIGNING_KEY, encode, signed_headers, webhook

pytestmark = pytest.mark.e2e

FAST_RELAY = {
    "relay": {
        "poll_interval_seconds": 0.05,
        "retry_schedule_seconds": [0.05, 0.1, 0.2],
        "claim_idle_seconds": 2,
    },
    # claim_idle_seconds must outlast one request (connect + read timeout).
    "mparticle": {"connect_timeout_seconds": 0.5, "read_timeout_seconds": 1.0},
    "logging": {"format": "json", "level": "INFO"},
}


def _deployment(
    tmp_path: Path, redis_url: str, mparticle: MParticleStandIn, **overrides: Any
) -> Deployment:
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(toml_text(overrides.pop("sections", FAST_RELAY)))
    env = {
        "REDIS_URL": redis_url,
        "CIO_WEBHOOK_SIGNING_KEYS": SIGNING_KEY,
        "MPARTICLE_API_KEY": STANDIN_KEY,
        "MPARTICLE_API_SECRET": STANDIN_SECRET,
        "MPARTICLE_BASE_URL": mparticle.base_url,
        "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "RELAY_SETTINGS": str(settings_file),
        "WEB_CONCURRENCY": "2",
    }
    env.update(overrides)
    return Deployment(env=process_env({k: v for k, v in env.items() if v is not None}),
                      workdir=tmp_path)


@pytest.fixture
def deployment(tmp_path: Path, redis_url: str, redis: Any, mparticle: MParticleStandIn):
    """web + worker from the Procfile, on the real Redis test DB."""
    relay = _deployment(tmp_path, redis_url, mparticle)
    relay.start("web")
    relay.start("worker")
    relay.wait_until_healthy()
    yield relay
    relay.stop_all()


def post(relay: Deployment, payload: Any, *, signed: bool = True) -> requests.Response:
    body = payload if isinstance(payload, bytes) else encode(payload)
    headers = signed_headers(body) if signed else {"Content-Type": "application/json"}
    return requests.post(f"{relay.url}/webhooks/customerio", data=body, headers=headers,
                         timeout=5)


def admin_get(relay: Deployment, path: str) -> requests.Response:
    return requests.get(f"{relay.url}{path}", timeout=5,
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})



def test_procfile_web_and_worker_relay_a_mixed_stream_exactly_once(deployment, mparticle, redis):
    expected: dict[str, dict[str, Any]] = {}  # event_id -> payload that must reach mParticle
    answers: Counter[str] = Counter()

    for person in ("101", "102", "103"):
        for name in catalog.FEED_DEFAULTS:
            object_type, metric = catalog.CATALOG[name].object_type, catalog.CATALOG[name].metric
            payload = webhook(object_type, metric, customer_id=person,
                              email=f"p{person}@example.com", delivery_id=f"d-{person}-{name}")
            response = post(deployment, payload)
            assert response.status_code == 202, response.text
            assert response.json() == {"status": "queued", "event_id": payload["event_id"],
                                       "event": name}
            expected[payload["event_id"]] = payload
            answers["queued"] += 1

    first_open = webhook("email", "opened", customer_id="104", delivery_id="d-104")
    assert post(deployment, first_open).status_code == 202
    expected[first_open["event_id"]] = first_open
    # Customer.io retries the same event: a duplicate, answered 200, never sent twice.
    duplicate = post(deployment, first_open)
    assert (duplicate.status_code, duplicate.json()["status"]) == (200, "duplicate")
    # A second open of the same delivery: "send only the first time" suppresses it.
    second_open = webhook("email", "opened", customer_id="104", delivery_id="d-104")
    suppressed = post(deployment, second_open)
    assert (suppressed.status_code, suppressed.json()["status"]) == (200, "suppressed")
    # Off by default, and unknown: ignored with a reason, never an error.
    drafted = post(deployment, webhook("email", "drafted", customer_id="104"))
    assert (drafted.status_code, drafted.json()["reason"]) == (200, "event type turned off")
    unknown = post(deployment, webhook("email", "teleported", customer_id="104"))
    assert (unknown.status_code, unknown.json()["reason"]) == (200, "unknown event type")
    # Unsigned: refused. Signed garbage: quarantined, not refused.
    assert post(deployment, webhook(), signed=False).status_code == 401
    quarantined = post(deployment, b'{"event_id": 5, "metric": "opened"}')
    assert (quarantined.status_code, quarantined.json()["status"]) == (202, "quarantined")
    # Nobody to attribute it to: accepted, then dead-lettered by the worker, not sent.
    anonymous = webhook("sms", "delivered", customer_id=None, email=None, delivery_id="d-anon")
    assert post(deployment, anonymous).status_code == 202

    assert mparticle.wait_for_events(len(expected), timeout=30), mparticle.source_message_ids()
    assert wait_for(lambda: redis.xlen("cior:dead-letters") == 2)
    time.sleep(0.5)  # anything sent twice would arrive now

    sent = mparticle.source_message_ids()
    assert len(sent) == len(set(sent)), "an event reached mParticle twice"
    assert set(sent) == {mapping.source_message_id(event_id) for event_id in expected}
    for batch in mparticle.accepted_batches:
        people = {event["data"]["custom_attributes"].get("recipient") for event in batch["events"]
                  if event["data"]["event_name"].startswith("email")}
        assert len(people) <= 1, "a batch mixed people"
        assert "batch_id" not in batch
    opened = next(event for _batch, event in mparticle.accepted_events()
                  if event["data"]["custom_attributes"]["source_message_id"]
                  == first_open["event_id"])
    assert opened["data"]["event_name"] == "email_opened"
    assert opened["data"]["timestamp_unixtime_ms"] == first_open["timestamp"] * 1000

    story = admin_get(deployment, f"/admin/dedup/{first_open['event_id']}").json()
    assert story["status"] == "relayed" and story["source_request_id"]
    letters = admin_get(deployment, "/admin/dead-letters").json()["dead_letters"]
    assert {letter["reason"] for letter in letters} == {
        "no customer_id or email identifies the person", "not a usable reporting webhook"
    }
    assert admin_get(deployment, "/admin/queue").json()["length"] == 0
    metrics = requests.get(f"{deployment.url}/metrics", timeout=5).text
    assert 'cio_relay_webhooks_total{direction="to_mparticle",outcome="queued"}' in metrics
    assert 'cio_relay_queue_depth{direction="to_mparticle"} 0.0' in metrics


def test_worker_retries_429_and_503_with_the_same_bytes_and_sends_each_event_once(
    deployment, mparticle
):
    mparticle.script(Reply(429, headers={"Retry-After": "1"}), Reply(503))
    payloads = [webhook("email", "delivered", customer_id=str(n), delivery_id=f"r-{n}")
                for n in range(10)]
    for payload in payloads:
        assert post(deployment, payload).status_code == 202

    assert mparticle.wait_for_events(10, timeout=30)
    time.sleep(0.5)
    sent = mparticle.source_message_ids()
    assert sorted(sent) == sorted(mapping.source_message_id(p["event_id"]) for p in payloads)
    statuses = [request.status for request in mparticle.requests]
    assert statuses[:2] == [429, 503]
    # Each retry of a request is byte-identical to the first try.
    bodies = Counter(request.body for request in mparticle.requests)
    first_body = mparticle.requests[0].body
    assert bodies[first_body] == 3


def test_worker_stops_cleanly_on_sigterm(tmp_path, redis_url, redis, mparticle):
    relay = _deployment(tmp_path, redis_url, mparticle)
    worker = relay.start("worker")
    assert wait_for(lambda: "started" in worker.output(), timeout=15), worker.output()

    assert worker.stop(signal.SIGTERM) == 0
    assert "stopped" in worker.output()
    assert "Traceback" not in worker.output()


def test_a_worker_that_refused_credentials_keeps_events_and_web_reports_not_ready(
    tmp_path, redis_url, redis, mparticle
):
    relay = _deployment(tmp_path, redis_url, mparticle, MPARTICLE_API_SECRET="wrong-secret")
    relay.start("web")
    relay.start("worker")
    relay.wait_until_healthy()
    payload = webhook("push", "opened", customer_id="9")
    assert post(relay, payload).status_code == 202

    assert wait_for(lambda: requests.get(f"{relay.url}/readyz", timeout=2).status_code == 503)
    assert mparticle.accepted_batches == []
    assert admin_get(relay, "/admin/queue").json()["length"] == 1
    relay.stop_all()
    assert sum("refused the credentials" in p.output() for p in relay.processes) == 1


def test_configuration_errors_stop_the_web_process_with_one_line(
    tmp_path, redis_url, mparticle
):
    relay = _deployment(tmp_path, redis_url, mparticle, CIO_WEBHOOK_SIGNING_KEYS=None)
    web = relay.start("web")
    web.popen.wait(20)

    assert web.popen.returncode != 0
    assert "configuration error: CIO_WEBHOOK_SIGNING_KEYS is not set" in web.output()
    assert "Traceback" not in web.output()


def test_a_worker_whose_claim_idle_time_is_shorter_than_a_request_refuses_to_start(
    tmp_path, redis_url, mparticle
):
    relay = _deployment(tmp_path, redis_url, mparticle, sections={
        "relay": {"claim_idle_seconds": 2},
        "mparticle": {"connect_timeout_seconds": 1, "read_timeout_seconds": 1.5},
    })
    worker = relay.start("worker")
    worker.popen.wait(20)

    assert worker.popen.returncode != 0
    lines = worker.output().strip().splitlines()
    assert len(lines) == 1, lines
    assert "claim_idle_seconds: must be more than" in lines[0]


def test_embedded_default_serves_webhooks_without_redis_and_logs_a_dry_run(tmp_path):
    relay = Deployment(
        env=process_env({
            "RELAY_SETTINGS": str(REPO_ROOT / "examples" / "try-it.toml"),
            "CIO_WEBHOOK_SIGNING_KEYS": SIGNING_KEY,
            "WEB_CONCURRENCY": "1",
        }),
        workdir=tmp_path,
    )
    web = relay.start("web")
    try:
        relay.wait_until_healthy()
        payload = webhook("email", "clicked")
        response = post(relay, payload)
        assert response.status_code == 202, response.text
        expected_id = mapping.source_message_id(payload["event_id"])
        assert wait_for(lambda: expected_id in web.output(), timeout=15), web.output()
        assert "dry run: would POST /bulkevents" in web.output()
        assert "not for production" in web.output()
        lines = [line for line in web.output().splitlines() if expected_id in line]
        sent = json.loads(lines[0].split("would POST /bulkevents ", 1)[1])
        assert sent[0]["events"][0]["data"]["event_name"] == "email_clicked"
        # A second person's event lands on another queue shard: both relayed, no error.
        other = webhook("push", "clicked", customer_id="someone-else")
        assert post(relay, other).status_code == 202
        other_id = mapping.source_message_id(other["event_id"])
        assert wait_for(lambda: other_id in web.output(), timeout=15), web.output()
        assert "Traceback" not in web.output()
    finally:
        relay.stop_all()


def test_embedded_default_refuses_more_than_one_gunicorn_worker(tmp_path):
    relay = Deployment(
        env=process_env({
            "RELAY_SETTINGS": str(REPO_ROOT / "examples" / "try-it.toml"),
            "CIO_WEBHOOK_SIGNING_KEYS": SIGNING_KEY,
            "WEB_CONCURRENCY": "3",
        }),
        workdir=tmp_path,
    )
    web = relay.start("web")
    web.popen.wait(20)

    assert web.popen.returncode != 0
    assert "embedded in-process store serves one gunicorn worker only" in web.output()
