"""Faults end to end: real processes, the real Redis, mParticle misbehaving on loopback.

The Procfile's web (gunicorn) and worker processes run as an operator starts them. For
each fault a few hundred distinct signed webhooks are posted, the relay is left to
drain, and every accepted event must be found at the stand-in (or, for the refused
batch, in the dead-letter store). Duplicates are counted; a duplicate must carry the
same source_request_id as its first copy, so mParticle can drop it.

The figures of each scenario are written to ``artifacts/faults.json`` for the README.
The last test reads every line the processes logged and looks for the secrets.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis as redis_lib
import requests

from app.services import REDIS_DECODING
from app.store.keys import CONSUMER_GROUP, KeySpace
from app.to_mparticle import mapping
from tests.conftest import TEST_REDIS_URL
from tests.helpers.mparticle_standin import MParticleStandIn, Reply
from tests.helpers.processes import REPO_ROOT, Deployment, Process, process_env, wait_for
from tests.helpers.webhooks import encode, signed_headers, webhook

pytestmark = pytest.mark.e2e

# Distinctive values, so the last test can search the logs for them.
SIGNING_KEY = "sk-cio-FAULTS-7f3a9c51"
MP_KEY = "mpkey-FAULTS-41d2e8aa"
MP_SECRET = "mpsecret-FAULTS-b95c07ee"
ADMIN_TOKEN = "admintok-FAULTS-0c6e1d77-of-32-characters"
SECRETS = {
    "signing key": SIGNING_KEY,
    "mParticle key": MP_KEY,
    "mParticle secret": MP_SECRET,
    "admin token": ADMIN_TOKEN,
    "Basic credentials": base64.b64encode(f"{MP_KEY}:{MP_SECRET}".encode()).decode(),
}

PREFIX = "faults"
SHARDS = 4
EVENTS_PER_SCENARIO = 300
READ_TIMEOUT = 1.0
CLAIM_IDLE = 3
SETTINGS = f"""
[relay]
queue_shards = {SHARDS}
# Small requests, so that a fault lands among many requests, not on one or two.
max_batches_per_request = 10
poll_interval_seconds = 0.02
retry_schedule_seconds = [0.1, 0.2, 0.5, 1.0]
retry_jitter_ratio = 0.2
claim_idle_seconds = {CLAIM_IDLE}
auth_recheck_seconds = 0.3
[mparticle]
connect_timeout_seconds = 0.5
read_timeout_seconds = {READ_TIMEOUT}
[redis]
key_prefix = "{PREFIX}"
[logging]
format = "json"
level = "INFO"
"""
RESULTS_FILE = REPO_ROOT / "artifacts" / "faults.json"


class Relay:
    """The web process, the current worker process, the stand-in and the Redis test DB."""

    def __init__(self, deployment: Deployment, standin: MParticleStandIn,
                 redis: redis_lib.Redis) -> None:
        self.deployment = deployment
        self.standin = standin
        self.redis = redis
        self.keys = KeySpace(PREFIX, SHARDS)
        self.worker: Process | None = None
        self.session = requests.Session()
        self.results: dict[str, dict[str, Any]] = {}

    def start_worker(self) -> Process:
        self.worker = self.deployment.start("worker")
        assert wait_for(lambda: "started" in self.worker.output(), 20), self.worker.output()
        return self.worker

    def ensure_worker(self) -> Process:
        if self.worker is None or self.worker.popen.poll() is not None:
            return self.start_worker()
        return self.worker

    def post(self, payload: dict[str, Any]) -> requests.Response:
        body = encode(payload)
        return self.session.post(
            f"{self.deployment.url}/webhooks/customerio", data=body,
            headers=signed_headers(body, key=SIGNING_KEY), timeout=10,
        )

    def post_all(self, payloads: list[dict[str, Any]]) -> list[str]:
        """Post concurrently, as Customer.io does; return the event_ids answered "queued"."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(self.post, payloads))
        return [
            payload["event_id"]
            for payload, answer in zip(payloads, answers, strict=True)
            if answer.status_code == 202 and answer.json().get("status") == "queued"
        ]

    def queue_state(self) -> tuple[int, int]:
        """(entries in the queue streams, entries pending in the consumer group)."""
        length = pending = 0
        for queue in self.keys.queues():
            length += self.redis.xlen(queue)
            with contextlib.suppress(redis_lib.ResponseError):  # no group yet
                pending += int(self.redis.xpending(queue, CONSUMER_GROUP)["pending"])
        return length, pending

    def dead_lettered(self) -> list[str]:
        return [fields.get("event_id", "") for _id, fields in
                self.redis.xrange(self.keys.dead_letters)]

    def all_output(self) -> str:
        return "\n".join(process.output() for process in self.deployment.processes)



@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """One web process and a worker for the whole module; scenarios run one after another."""
    workdir = tmp_path_factory.mktemp("faults")
    settings_file = workdir / "settings.toml"
    settings_file.write_text(SETTINGS)
    client = redis_lib.Redis.from_url(TEST_REDIS_URL, **REDIS_DECODING)
    client.flushdb()
    with MParticleStandIn(api_key=MP_KEY, api_secret=MP_SECRET) as standin:
        deployment = Deployment(
            env=process_env({
                "REDIS_URL": TEST_REDIS_URL,
                "CIO_WEBHOOK_SIGNING_KEYS": SIGNING_KEY,
                "MPARTICLE_API_KEY": MP_KEY,
                "MPARTICLE_API_SECRET": MP_SECRET,
                "MPARTICLE_BASE_URL": standin.base_url,
                "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
                "RELAY_SETTINGS": str(settings_file),
                "WEB_CONCURRENCY": "2",
            }),
            workdir=workdir,
        )
        relay = Relay(deployment, standin, client)
        try:
            deployment.start("web")
            relay.start_worker()
            deployment.wait_until_healthy()
            yield relay
        finally:
            deployment.stop_all()
            relay.session.close()
            if relay.results:  # merged, so running one scenario keeps the others' figures
                RESULTS_FILE.parent.mkdir(exist_ok=True)
                earlier = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.exists() else {}
                RESULTS_FILE.write_text(json.dumps({**earlier, **relay.results}, indent=2) + "\n")
            client.flushdb()
            client.close()


def scenario_payloads(name: str, count: int = EVENTS_PER_SCENARIO) -> list[dict[str, Any]]:
    """Distinct events of 40 people, each on its own delivery (so none is suppressed)."""
    metrics = ("sent", "delivered", "opened", "clicked")
    return [
        webhook(
            "email", metrics[n % len(metrics)],
            customer_id=f"{name}-p{n % 40}", email=f"{name}-p{n % 40}@example.com",
            delivery_id=f"{name}-d{n}",
        )
        for n in range(count)
    ]


def settle(relay: Relay, accepted: list[str], dead_expected: set[str]) -> None:
    """Wait until every accepted event is accounted for and nothing is left queued."""
    wanted = {mapping.source_message_id(event_id) for event_id in accepted
              if event_id not in dead_expected}

    def drained() -> bool:
        delivered = set(relay.standin.source_message_ids())
        dead = set(relay.dead_lettered())
        return wanted <= delivered and dead_expected <= dead and relay.queue_state() == (0, 0)

    assert wait_for(drained, timeout=30), (relay.queue_state(), relay.worker.output()[-3000:])
    time.sleep(0.3)  # a copy sent twice would arrive now


def measure(relay: Relay, name: str, sent: int, accepted: list[str],
            dead_expected: set[str] = frozenset()) -> dict[str, Any]:
    """Count what became of the accepted events, record the figures and return them."""
    by_message = {mapping.source_message_id(event_id): event_id for event_id in accepted}
    copies: Counter[str] = Counter()
    request_ids: dict[str, set[str]] = defaultdict(set)
    for batch, event in relay.standin.accepted_events():
        message_id = event["data"]["source_message_id"]
        if message_id in by_message:
            copies[message_id] += 1
            request_ids[message_id].add(batch["source_request_id"])
    dead = set(relay.dead_lettered()) & set(accepted)
    delivered = {by_message[message_id] for message_id in copies}
    duplicated = [message_id for message_id, n in copies.items() if n > 1]
    figures = {
        "sent": sent,
        "accepted": len(accepted),
        "delivered": len(delivered),
        "dead_lettered": len(dead),
        "lost": len(set(accepted) - delivered - dead),
        "duplicates": sum(n - 1 for n in copies.values()),
        "duplicates_with_another_source_request_id": sum(
            1 for message_id in duplicated if len(request_ids[message_id]) > 1
        ),
        "mparticle_answers": dict(Counter(str(r.status) for r in relay.standin.requests)),
    }
    relay.results[name] = figures
    return figures


def run_scenario(relay: Relay, name: str, inject: Callable[[MParticleStandIn], None],
                 dead_rule: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    relay.ensure_worker()
    relay.standin.reset()
    inject(relay.standin)
    payloads = scenario_payloads(name)
    accepted = relay.post_all(payloads)
    dead_expected = {p["event_id"] for p in payloads
                     if dead_rule is not None and dead_rule(p) and p["event_id"] in accepted}
    settle(relay, accepted, dead_expected)
    return measure(relay, name, len(payloads), accepted, dead_expected)


def _is_poison(payload: dict[str, Any]) -> bool:
    return payload["data"]["customer_id"].endswith(("-p7", "-p23"))


SCENARIOS: dict[str, Callable[[MParticleStandIn], None]] = {
    "429 with Retry-After": lambda s: s.script(*[Reply(429, {"Retry-After": "1"})] * 3),
    "429 without Retry-After": lambda s: s.script(*[Reply(429)] * 6),
    "429 with a garbage Retry-After": lambda s: s.script(
        *[Reply(429, {"Retry-After": "soon, maybe"})] * 4
    ),
    "500": lambda s: s.script(*[Reply(500, body="internal error")] * 6),
    "503 outage for 2 s": lambda s: s.fail_for(2.0, Reply(503)),
    "401 then 202": lambda s: s.script(*[Reply(401)] * 4),
    "answer after the read timeout": lambda s: s.script(
        *[Reply(202, delay=READ_TIMEOUT + 1.0)] * 2
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_accepted_event_is_lost_when_mparticle_fails(relay, name):
    figures = run_scenario(relay, name, SCENARIOS[name])

    assert figures["accepted"] == figures["sent"]
    assert figures["lost"] == 0
    assert figures["delivered"] == figures["accepted"]
    assert figures["duplicates_with_another_source_request_id"] == 0
    if name != "answer after the read timeout":
        # mParticle never took a request it refused, so nothing reached it twice.
        assert figures["duplicates"] == 0, figures
    else:  # the relay gave up on two requests mParticle did take: sent again, same ids
        assert 0 < figures["duplicates"] <= 2 * EVENTS_PER_SCENARIO, figures
    assert relay.worker.popen.poll() is None, "the worker died"


def test_only_the_refused_batches_are_dead_lettered_and_the_rest_delivered(relay):
    def inject(standin: MParticleStandIn) -> None:
        standin.reject_batches_where(
            lambda batch: batch["user_identities"]["customer_id"].endswith(("-p7", "-p23"))
        )

    figures = run_scenario(relay, "400 for 2 people's batches", inject, dead_rule=_is_poison)

    poisoned = sum(1 for p in scenario_payloads("x") if _is_poison(p))
    assert figures["lost"] == 0
    assert figures["dead_lettered"] == poisoned
    assert figures["delivered"] == figures["accepted"] - poisoned
    assert figures["duplicates"] == 0
    letters = relay.redis.xrange(relay.keys.dead_letters)
    refused = [fields for _id, fields in letters if fields.get("status") == "400"]
    assert len(refused) == poisoned
    assert all("refused by the test's rule" in fields["response"] for fields in refused)


def test_a_worker_killed_mid_request_is_taken_over_by_another(relay):
    name = "worker SIGKILLed mid-request"
    worker = relay.ensure_worker()
    relay.standin.reset()
    relay.standin.answer_slowly(0.5)  # so the kill lands while a request is in flight
    payloads = scenario_payloads(name)
    accepted = relay.post_all(payloads)
    assert wait_for(lambda: len(relay.standin.requests) >= 2, timeout=15)

    assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
    assert relay.queue_state()[1] > 0  # it died holding entries
    relay.standin.answer_slowly(0)
    relay.start_worker()
    settle(relay, accepted, set())
    figures = measure(relay, name, len(payloads), accepted)

    assert figures["lost"] == 0
    assert figures["delivered"] == figures["accepted"] == len(payloads)
    assert figures["duplicates_with_another_source_request_id"] == 0
    assert "took over" in relay.worker.output()


def test_sigterm_finishes_the_request_in_flight_and_exits_0(relay):
    name = "worker SIGTERMed mid-request"
    worker = relay.ensure_worker()
    relay.standin.reset()
    relay.standin.answer_slowly(0.6)
    payloads = scenario_payloads(name)
    accepted = relay.post_all(payloads)
    assert wait_for(lambda: len(relay.standin.requests) >= 1, timeout=15)

    assert worker.stop(signal.SIGTERM) == 0
    in_flight = relay.standin.requests[-1]
    relay.standin.answer_slowly(0)
    relay.start_worker()
    settle(relay, accepted, set())
    figures = measure(relay, name, len(payloads), accepted)

    assert in_flight.status == 202
    assert "stopped" in worker.output() and "Traceback" not in worker.output()
    assert figures["lost"] == 0
    # The request in flight was answered and acknowledged before the exit: no copy.
    assert figures["duplicates"] == 0
    assert figures["delivered"] == figures["accepted"] == len(payloads)


def test_no_secret_appears_in_any_log_line_under_faults(relay):
    for name in ("500", "401 then 202"):  # already run, unless this test runs alone
        if name not in relay.results:
            run_scenario(relay, name, SCENARIOS[name])
    # Make the secrets travel once more: a wrong and a right admin token, a forged webhook.
    url = relay.deployment.url
    assert requests.get(f"{url}/admin/queue", timeout=5,
                        headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert requests.get(f"{url}/admin/queue", timeout=5,
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
    body = encode(webhook())
    forged = signed_headers(body, key="not-the-key")
    assert requests.post(f"{url}/webhooks/customerio", data=body, headers=forged,
                         timeout=5).status_code == 401
    time.sleep(0.3)

    output = relay.all_output()
    request_lines = [json.loads(line) for line in output.splitlines()
                     if line.startswith("{") and "mParticle request" in line]
    assert len(request_lines) > 10  # the logs under test really hold the faults
    for line in request_lines:
        assert {"status", "events", "batches", "attempt", "latency_ms",
                "source_request_ids", "rate_limit_percent"} <= line.keys()
    assert {line["status"] for line in request_lines} >= {202, 500, 401}
    for what, secret in SECRETS.items():
        assert secret not in output, f"the {what} appears in a log line"
