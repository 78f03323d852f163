"""The worker process serves its own counters when WORKER_METRICS_PORT is set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.test_procfile_processes import _deployment, post
from tests.helpers.mparticle_standin import MParticleStandIn
from tests.helpers.processes import free_port, wait_for
from tests.helpers.webhooks import webhook

pytestmark = pytest.mark.e2e


def test_the_worker_serves_its_relay_counters_on_its_own_port(
    tmp_path: Path, redis_url: str, redis: Any, mparticle: MParticleStandIn
):
    port = free_port()
    relay = _deployment(tmp_path, redis_url, mparticle, WORKER_METRICS_PORT=str(port))
    try:
        relay.start("web")
        relay.start("worker")
        relay.wait_until_healthy()
        assert post(relay, webhook("email", "opened", delivery_id="wm-1")).status_code == 202
        assert mparticle.wait_for_events(1, timeout=20)

        def relayed() -> bool:
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except requests.RequestException:
                return False
            return 'cio_relay_events_relayed_total{direction="to_mparticle"} 1.0' in text

        assert wait_for(relayed, 10)
    finally:
        relay.stop_all()
