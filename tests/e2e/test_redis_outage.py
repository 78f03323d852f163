"""Redis goes away under traffic and comes back: nothing accepted is lost, nothing restarts.

A private redis-server (AOF on, its own directory and port) serves the Procfile's web
and worker while webhooks keep arriving. It is shut down once cleanly and once killed
with SIGKILL, and restarted each time on the same port and directory. Meanwhile the
webhook may answer only 2xx or 503 (so Customer.io retries), and must answer the 503 at
once; afterwards every event answered 2xx must reach the stand-in. The figures go to
``artifacts/redis_outage.json``.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from app.services import build_redis, connect_timeout
from app.to_mparticle import mapping
from tests.e2e.test_procfile_processes import _deployment
from tests.helpers.mparticle_standin import MParticleStandIn
from tests.helpers.processes import REPO_ROOT, Deployment, wait_for
from tests.helpers.redis_cluster import RedisServer, redis_binaries_missing
from tests.helpers.webhooks import encode, signed_headers, webhook

missing = redis_binaries_missing()
pytestmark = pytest.mark.skipif(bool(missing), reason=str(missing))

OUTAGE_RELAY = {
    "relay": {"poll_interval_seconds": 0.05},
    "logging": {"format": "json", "level": "INFO"},
}
ARTIFACT = REPO_ROOT / "artifacts" / "redis_outage.json"


@dataclass
class Traffic:
    """Webhooks posted from a few threads until stopped, with every answer recorded."""

    url: str
    answers: list[tuple[dict[str, Any], int, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, senders: int = 3) -> Traffic:
        for index in range(senders):
            thread = threading.Thread(target=self._send_until_stopped, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def post(self, payload: dict[str, Any]) -> tuple[int, float]:
        body = encode(payload)
        started = time.perf_counter()
        try:
            status = requests.post(f"{self.url}/webhooks/customerio", data=body,
                                   headers=signed_headers(body), timeout=10).status_code
        except requests.RequestException:
            status = 0  # no answer at all: as bad as a 5xx for Customer.io
        took = time.perf_counter() - started
        with self._lock:
            self.answers.append((payload, status, took))
        return status, took

    def count_since(self, mark: int, status: int) -> int:
        with self._lock:
            return sum(answer[1] == status for answer in self.answers[mark:])

    def until(self, status: int, count: int, timeout: float = 20.0) -> bool:
        """Wait until ``count`` more answers with this status arrive than so far."""
        mark = self.mark()
        return wait_for(lambda: self.count_since(mark, status) >= count, timeout)

    def mark(self) -> int:
        with self._lock:
            return len(self.answers)

    def _send_until_stopped(self, index: int) -> None:
        for n in range(100_000):
            if self._stop.is_set():
                return
            person = f"o{index}-{n % 17}"
            self.post(webhook("email", "delivered", customer_id=person,
                              email=f"{person}@example.com", delivery_id=f"od-{index}-{n}"))
            self._stop.wait(0.01)



def readyz(relay: Deployment) -> int:
    return requests.get(f"{relay.url}/readyz", timeout=10).status_code


def test_the_redis_client_gives_up_fast_enough_for_a_503_within_customerios_budget(
    make_settings: Any,
):
    settings = make_settings()
    client = build_redis(settings)
    kwargs = client.connection_pool.connection_kwargs
    timeout = settings.redis["socket_timeout_seconds"]

    assert kwargs["socket_connect_timeout"] == connect_timeout(timeout) <= 1.0
    retry = kwargs["retry"]
    assert retry.get_retries() == 1  # one immediate retry: a pooled connection Redis closed
    # Worst case while Redis hangs: two connect attempts, or one command that times out.
    assert max(2 * kwargs["socket_connect_timeout"], timeout) < 4.0


@pytest.mark.e2e
def test_webhooks_answer_503_while_redis_is_down_and_nothing_accepted_is_lost(
    tmp_path: Path, mparticle: MParticleStandIn
):
    server = RedisServer(tmp_path / "redis",
                         options=("--appendonly", "yes", "--appendfsync", "always"))
    server.start()
    relay = _deployment(tmp_path, server.url, mparticle, sections=OUTAGE_RELAY)
    traffic = Traffic(relay.url)
    outages: list[dict[str, Any]] = []
    try:
        web, worker = relay.start("web"), relay.start("worker")
        relay.wait_until_healthy()
        traffic.start()
        for how in ("shutdown", "sigkill", "sigstop"):
            assert traffic.until(202, 40)
            down = traffic.mark()
            went_down = time.monotonic()
            if how == "shutdown":
                server.stop()  # SIGTERM: Redis fsyncs the AOF and exits
            elif how == "sigkill":
                server.kill()  # a crash: what is on disk (fsynced per write here) survives
            else:
                server.pause()  # hung: connections open, no answers, until timeouts
            # Down long enough for the worker's reconnect backoff to grow past its first
            # step; readyz itself waits out one socket timeout while Redis hangs.
            assert traffic.until(503, 3)
            ready_while_down = readyz(relay)
            if how != "sigstop":
                time.sleep(1.5)
            if how == "sigstop":
                server.resume()
            else:
                server.start()  # same port, same directory: the AOF is read back
            up = traffic.mark()
            assert traffic.until(202, 20), "the webhook did not recover by itself"
            outages.append({"how": how, "seconds_down": round(time.monotonic() - went_down, 1),
                            "answers_while_down": up - down,
                            "readyz_while_down": ready_while_down})
        time.sleep(0.5)
        traffic.stop()

        # Customer.io retries what got no 2xx; the retries now find Redis up.
        first_answers = list(traffic.answers)
        retried = [payload for payload, status, _ in first_answers if not 200 <= status < 300]
        retry_answers = Counter(traffic.post(payload)[0] for payload in retried)
        accepted = {payload["event_id"] for payload, status, _ in traffic.answers
                    if 200 <= status < 300}

        delivered_all = mparticle.wait_for_events(len(accepted), timeout=40)
        time.sleep(0.5)  # anything sent twice would arrive now
        sent = Counter(mparticle.source_message_ids())
        wanted = {mapping.source_message_id(event_id) for event_id in accepted}
        lost = len(wanted - set(sent))
        request_ids: dict[str, set[str]] = {}
        for batch, event in mparticle.accepted_events():
            request_ids.setdefault(event["data"]["source_message_id"], set()).add(
                batch["source_request_id"])
        statuses = Counter(status for _, status, _ in first_answers)
        refused_in = sorted(took for _, status, took in first_answers if status == 503)
        figures = {
            "sent": len(first_answers),
            "answered_2xx": sum(n for status, n in statuses.items() if 200 <= status < 300),
            "answered_503": statuses[503],
            "other_answers": {str(s): n for s, n in statuses.items()
                              if s != 503 and not 200 <= s < 300},
            "retried_after_recovery": len(retried),
            "retry_answers": {str(status): n for status, n in retry_answers.items()},
            "accepted": len(accepted),
            "delivered": len(wanted & set(sent)),
            "lost": lost,
            "duplicates": sum(n - 1 for n in sent.values() if n > 1),
            "duplicates_with_another_source_request_id": sum(
                1 for ids in request_ids.values() if len(ids) > 1),
            "seconds_to_answer_503": {
                "median": round(statistics.median(refused_in), 4) if refused_in else None,
                "max": round(max(refused_in), 4) if refused_in else None,
            },
            "outages": outages,
            "redis": "private redis-server, appendonly yes, appendfsync always",
        }
        print(json.dumps(figures, indent=2))  # noqa: T201 - the figures, for the README
        ARTIFACT.parent.mkdir(exist_ok=True)
        ARTIFACT.write_text(json.dumps(figures, indent=2) + "\n")

        assert set(statuses) <= {202, 503}, statuses  # a hung Redis: 503 after the timeout
        assert statuses[503] > 0 and all(o["readyz_while_down"] == 503 for o in outages)
        assert set(retry_answers) <= {202, 200}, retry_answers
        assert delivered_all and lost == 0, figures
        assert readyz(relay) == 200
        # Neither process was restarted: the same pids, each started once.
        assert web.popen.poll() is None and worker.popen.poll() is None
        assert web.output().count("Booting worker") == int(relay.env["WEB_CONCURRENCY"])
        assert worker.output().count(" started") == 1
        assert "redis unavailable" in worker.output()  # it noticed, backed off, reconnected
    finally:
        traffic.stop()
        relay.stop_all()
        server.stop()
