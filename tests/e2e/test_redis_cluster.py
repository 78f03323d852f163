"""End to end on a real Redis Cluster: three masters on loopback, REDIS_URL=redis+cluster://.

The Procfile's web and worker run against the cluster exactly as in production. What
could break only on a cluster (a script or command touching keys in two slots, EVALSHA
through a cluster pipeline, a command sent to the wrong node) shows up as a 5xx, an
error in a process log, or an event that never reaches the stand-in.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from app.store.keys import KeySpace
from app.to_mparticle import catalog, mapping
from tests.e2e.test_procfile_processes import _deployment, admin_get, post
from tests.helpers.mparticle_standin import MParticleStandIn
from tests.helpers.processes import Deployment
from tests.helpers.redis_cluster import RedisCluster, redis_binaries_missing, running_cluster
from tests.helpers.webhooks import webhook

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(redis_binaries_missing()), reason=str(redis_binaries_missing())),
]

CLUSTER_RELAY = {
    "relay": {
        "poll_interval_seconds": 0.05,
        # More shards than masters, so every master holds some of the queue.
        "queue_shards": 6,
    },
    "redis": {"toggle_refresh_seconds": 0.2},
    "logging": {"format": "json", "level": "INFO"},
}
# What a process log must never hold on a cluster.
CLUSTER_ERRORS = ("CROSSSLOT", "NoScript", "NOSCRIPT", "blocked when running redis in cluster",
                  "MOVED", "Traceback", "ClusterError", "RedisClusterException")


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    with running_cluster(tmp_path / "cluster") as started:
        yield started


@pytest.fixture
def cluster_relay(tmp_path: Path, cluster: RedisCluster, mparticle: MParticleStandIn) -> Any:
    relay = _deployment(tmp_path, cluster.url, mparticle, sections=CLUSTER_RELAY)
    try:
        relay.start("web")
        relay.start("worker")
        relay.wait_until_healthy()
        yield relay
    finally:
        relay.stop_all()


def cli(relay: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `cio-relay ARGS` with the deployment's environment, as an admin would."""
    return subprocess.run(
        ["cio-relay", *args], env=relay.env, capture_output=True, text=True,
        timeout=30, check=False,
    )


def test_the_queue_shards_spread_over_every_master(cluster: RedisCluster):
    client = cluster.client()
    keys = KeySpace("cior", CLUSTER_RELAY["relay"]["queue_shards"])
    owners = {client.get_node_from_key(queue).port for queue in keys.queues()}
    client.close()

    assert owners == {node.port for node in cluster.nodes}


def test_end_to_end_on_a_redis_cluster_relays_each_event_once(
    cluster_relay: Deployment, mparticle: MParticleStandIn
):
    names = list(catalog.FEED_DEFAULTS)
    distinct = [
        webhook(catalog.CATALOG[name].object_type, catalog.CATALOG[name].metric,
                customer_id=f"c{n % 40}", email=f"c{n % 40}@example.com",
                delivery_id=f"cd-{n}")
        for n, name in zip(range(300), itertools.cycle(names), strict=False)
    ]
    # Customer.io's retries of accepted events, and later occurrences of an event type
    # already forwarded for a delivery ("send only the first time").
    retries = distinct[::10]
    repeats = [
        webhook(payload["object_type"], payload["metric"],
                customer_id=payload["data"]["customer_id"],
                delivery_id=payload["data"]["delivery_id"])
        for payload in distinct[5::15]
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        first = list(pool.map(lambda p: post(cluster_relay, p), distinct))
        second = list(pool.map(lambda p: post(cluster_relay, p), retries + repeats))

    answers = Counter((r.status_code, r.json().get("status")) for r in first + second)
    assert answers == {
        (202, "queued"): len(distinct),
        (200, "duplicate"): len(retries),
        (200, "suppressed"): len(repeats),
    }, answers

    assert mparticle.wait_for_events(len(distinct), timeout=40), len(mparticle.source_message_ids())
    time.sleep(0.5)  # anything sent twice would arrive now
    sent = mparticle.source_message_ids()
    assert len(sent) == len(set(sent)), "an event reached mParticle twice"
    assert set(sent) == {mapping.source_message_id(p["event_id"]) for p in distinct}

    # Toggles live on the cluster too: the CLI turns a type off, the web process obeys.
    # Each process re-reads the overrides on the first request after toggle_refresh_seconds.
    refresh = CLUSTER_RELAY["redis"]["toggle_refresh_seconds"]
    off = cli(cluster_relay, "events", "disable", "email_clicked")
    assert off.returncode == 0, off.stderr
    time.sleep(refresh * 3)
    clicked = webhook("email", "clicked", customer_id="c1", delivery_id="cd-toggle")
    ignored = post(cluster_relay, clicked)
    assert (ignored.status_code, ignored.json()["reason"]) == (200, "event type turned off")
    assert cli(cluster_relay, "events", "enable", "email_clicked").returncode == 0
    time.sleep(refresh * 3)
    assert post(cluster_relay, clicked).status_code == 202
    assert mparticle.wait_for_events(len(distinct) + 1, timeout=20)

    # Support's look-ups read every shard, on whichever node holds it.
    shown = cli(cluster_relay, "dedup", "show", distinct[7]["event_id"])
    assert shown.returncode == 0, shown.stderr
    assert "status     relayed" in shown.stdout
    first_flags = cli(cluster_relay, "dedup", "first", distinct[7]["data"]["delivery_id"])
    assert first_flags.returncode == 0 and distinct[7]["event_id"] in first_flags.stdout
    story = admin_get(cluster_relay, f"/admin/dedup/{distinct[0]['event_id']}").json()
    assert story["status"] == "relayed"
    queue = admin_get(cluster_relay, "/admin/queue")
    assert queue.status_code == 200 and queue.json()["length"] == 0
    assert requests.get(f"{cluster_relay.url}/readyz", timeout=5).status_code == 200
    metrics = requests.get(f"{cluster_relay.url}/metrics", timeout=5).text
    assert 'cio_relay_queue_depth{direction="to_mparticle"} 0.0' in metrics

    cluster_relay.stop_all()
    for process in cluster_relay.processes:
        log = process.output()
        assert not [error for error in CLUSTER_ERRORS if error in log], log[-3000:]


def test_mparticle_batches_reach_customerio_through_a_redis_cluster(
    tmp_path: Path, cluster: RedisCluster, mparticle: MParticleStandIn
):
    from tests.e2e.test_two_directions import post_batch
    from tests.helpers.customerio_standin import CustomerIOStandIn
    from tests.to_customerio.conftest import (
        AUTHORIZATION,
        SITE_ID,
        TRACK_KEY,
        custom_event,
        mparticle_batch,
    )

    with CustomerIOStandIn(site_id=SITE_ID, api_key=TRACK_KEY) as customerio:
        relay = _deployment(
            tmp_path, cluster.url, mparticle, sections=CLUSTER_RELAY,
            MPARTICLE_WEBHOOK_AUTHORIZATION=AUTHORIZATION, CUSTOMERIO_SITE_ID=SITE_ID,
            CUSTOMERIO_API_KEY=TRACK_KEY, CUSTOMERIO_BASE_URL=customerio.base_url,
        )
        try:
            relay.start("web")
            relay.start("worker")
            relay.wait_until_healthy()
            batches = [mparticle_batch(custom_event(f"Ev {n}"), customer_id=f"k{n % 12}")
                       for n in range(60)]
            answers = Counter(post_batch(relay.url, batch).status_code for batch in batches)
            retried = Counter(post_batch(relay.url, batch).json()["status"]
                              for batch in batches[::6])
            assert customerio.wait_for_items(120, timeout=60)  # an identify and an event each
            time.sleep(0.5)  # anything sent twice would arrive now
            logs = "".join(process.output() for process in relay.processes)
        finally:
            relay.stop_all()

    assert answers == Counter({202: 60}) and retried == Counter({"duplicate": 10})
    assert len(customerio.events()) == 60 and customerio.duplicate_event_ids_dropped == 0
    for marker in CLUSTER_ERRORS:
        assert marker not in logs, marker
