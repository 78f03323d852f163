"""A Redis that may evict, or that is full: the relay refuses, answers 503, and loses nothing.

Each test starts a private redis-server with the settings that cause the trouble
(``--maxmemory``, ``--maxmemory-policy``) and the Procfile's processes against it. The
figures of the full-Redis scenario go to ``artifacts/redis_memory.json``.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import requests

from app.to_mparticle import mapping
from tests.e2e.test_procfile_processes import _deployment
from tests.helpers.mparticle_standin import MParticleStandIn, Reply
from tests.helpers.processes import REPO_ROOT, Deployment, wait_for
from tests.helpers.redis_cluster import redis_binaries_missing, running_server
from tests.helpers.webhooks import encode, signed_headers, webhook

missing = redis_binaries_missing()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(missing), reason=str(missing))]

ARTIFACT = REPO_ROOT / "artifacts" / "redis_memory.json"
SECTIONS = {
    "relay": {"poll_interval_seconds": 0.05, "retry_schedule_seconds": [0.2, 0.5]},
    "logging": {"format": "json", "level": "INFO"},
}


def post(relay: Deployment, payload: dict[str, Any]) -> requests.Response:
    body = encode(payload)
    return requests.post(f"{relay.url}/webhooks/customerio", data=body,
                         headers=signed_headers(body), timeout=10)


def readyz(relay: Deployment) -> requests.Response:
    return requests.get(f"{relay.url}/readyz", timeout=10)


def fill(client: redis_lib.Redis) -> int:
    """Write filler keys until Redis refuses even a small one (maxmemory, noeviction).

    Then maxmemory is set 1 MB below what is used: connections coming and going move
    used memory by more than a small write takes, and the test needs Redis to stay full
    until it frees memory itself. Returns the count.
    """
    count = 0
    for size in (100_000, 1_000):
        while True:
            try:
                client.set(f"filler:{count}", "x" * size)
            except redis_lib.OutOfMemoryError:
                break
            count += 1
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used - 1_000_000)
    return count


def exited(process: Any, timeout: float = 20.0) -> int | None:
    try:
        return process.popen.wait(timeout)
    except subprocess.TimeoutExpired:  # still running: the caller asserts on None
        return None


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
def test_a_redis_that_may_evict_is_refused_at_start_with_the_fix(
    tmp_path: Path, mparticle: MParticleStandIn, policy: str
):
    with running_server(tmp_path / "redis", "--maxmemory", "64mb",
                        "--maxmemory-policy", policy) as server:
        relay = _deployment(tmp_path, server.url, mparticle, sections=SECTIONS)
        try:
            web, worker = relay.start("web"), relay.start("worker")
            web_status, worker_status = exited(web), exited(worker)
        finally:
            relay.stop_all()

    assert web_status not in (None, 0) and worker_status not in (None, 0)
    for process in (web, worker):
        output = process.output()
        assert f"maxmemory-policy is {policy}" in output
        assert "CONFIG SET maxmemory-policy noeviction" in output
        assert "Traceback" not in output


def test_readyz_reports_a_policy_changed_to_evict_at_run_time(
    tmp_path: Path, mparticle: MParticleStandIn
):
    with running_server(tmp_path / "redis", "--maxmemory", "64mb") as server:
        relay = _deployment(tmp_path, server.url, mparticle, sections=SECTIONS)
        try:
            relay.start("web")
            relay.wait_until_healthy()
            before = readyz(relay)
            redis_lib.Redis(port=server.port).config_set("maxmemory-policy", "allkeys-lru")
            after = readyz(relay)
        finally:
            relay.stop_all()

    assert before.status_code == 200
    assert after.status_code == 503
    assert "maxmemory-policy is allkeys-lru" in after.json()["redis"]


def test_a_full_redis_answers_503_keeps_copies_at_200_and_the_worker_drains_it(
    tmp_path: Path, mparticle: MParticleStandIn
):
    with running_server(tmp_path / "redis", "--maxmemory", "24mb",
                        "--maxmemory-policy", "noeviction") as server:
        client = redis_lib.Redis(port=server.port, decode_responses=True)
        relay = _deployment(tmp_path, server.url, mparticle, sections=SECTIONS)
        try:
            relay.start("web")
            worker = relay.start("worker")
            relay.wait_until_healthy()
            # Accepted while mParticle is down: they wait in the queue.
            mparticle.fail_for(600, Reply(503))
            accepted = [webhook("email", "opened", customer_id=f"p{n}", delivery_id=f"dp{n}")
                        for n in range(20)]
            assert {post(relay, payload).status_code for payload in accepted} == {202}
            worker.stop()
            fillers = fill(client)

            new = [post(relay, webhook("email", "opened", customer_id=f"n{n}",
                                         delivery_id=f"dn{n}"))
                   for n in range(10)]
            copies = [post(relay, payload) for payload in accepted[:5]]
            ignored = post(relay, webhook("email", "drafted"))  # a type that is off
            ready_while_full = readyz(relay)
            metrics = requests.get(f"{relay.url}/metrics", timeout=10).text

            # A worker started while Redis is full drains the queue once mParticle is back.
            mparticle.fail_for(0, Reply(503))
            restarted = relay.start("worker")
            delivered = mparticle.wait_for_events(len(accepted), timeout=30)
            time.sleep(0.5)  # anything sent twice would arrive now
            client.delete(*[f"filler:{n}" for n in range(fillers)])
            client.config_set("maxmemory", "24mb")
            assert wait_for(lambda: readyz(relay).status_code == 200, 10)
            after = post(relay, webhook("email", "opened", customer_id="late", delivery_id="da"))
            restarted_output = restarted.output()
        finally:
            relay.stop_all()

    sent = Counter(mparticle.source_message_ids())
    wanted = {mapping.source_message_id(payload["event_id"]) for payload in accepted}
    figures = {
        "redis": "private redis-server, maxmemory 24mb then 1 MB below used, noeviction",
        "accepted_before_full": len(accepted),
        "new_while_full": dict(Counter(str(r.status_code) for r in new)),
        "copies_while_full": dict(Counter(str(r.status_code) for r in copies)),
        "ignored_type_while_full": ignored.status_code,
        "readyz_while_full": ready_while_full.status_code,
        "delivered_by_a_worker_started_while_full": len(wanted & set(sent)),
        "lost": len(wanted - set(sent)),
        "duplicates": sum(n - 1 for n in sent.values() if n > 1),
        "after_memory_freed": after.status_code,
    }
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(figures, indent=2) + "\n")

    assert all(r.status_code == 503 for r in new), figures
    assert all(r.json()["details"].startswith("the queue (Redis) is full") for r in new)
    assert [(r.status_code, r.json()["status"]) for r in copies] == [(200, "duplicate")] * 5
    assert (ignored.status_code, ignored.json()["status"]) == (200, "ignored")
    assert ready_while_full.status_code == 503
    assert ready_while_full.json()["redis"].startswith("full:")
    assert ('cio_relay_webhooks_rejected_total{direction="to_mparticle",reason="redis_full"}'
            ' 10.0') in metrics
    assert "cio_relay_redis_memory_max_bytes " in metrics
    assert "cio_relay_redis_memory_used_bytes " in metrics
    assert delivered and figures["lost"] == 0 and figures["duplicates"] == 0, figures
    assert "redis memory at" in restarted_output  # the warning before (here: at) the limit
    assert "Traceback" not in restarted_output
    assert after.status_code == 202
