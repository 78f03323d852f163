"""Idle and slow clients end to end: webhooks are answered while they hold connections.

The Procfile's web process is started as an operator starts it (gunicorn.conf.py as it
is, its default worker count), on the real Redis. Before any webhook is sent, a few
hundred connections are opened that send nothing, and ten "slowloris" connections
that send one header byte a second and never finish their headers. Then signed
webhooks are posted, each on a fresh connection, as Customer.io does; each must be
answered 202 within Customer.io's 4 seconds. The server must close the slow
connections itself, within its read deadline (gunicorn's keepalive, 5 s; see
docs/operations.md, "Slow and idle clients, and proxies").

Everything is on loopback and bounded: the connections are counted, every wait has a
deadline, and the test ends within about 30 s whatever the server does. Its figures are
written to ``artifacts/slow_clients.json`` for docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import requests

from app.services import REDIS_DECODING
from tests.conftest import STANDIN_KEY, STANDIN_SECRET, toml_text
from tests.helpers.processes import REPO_ROOT, Deployment, process_env
from tests.helpers.webhooks import SIGNING_KEY, encode, signed_headers, webhook

pytestmark = pytest.mark.e2e

REDIS_URL = os.environ.get("SLOW_CLIENTS_REDIS_URL", "redis://127.0.0.1:6379/12")
IDLE = 200
SLOW = 10
WEBHOOKS = 50
SENDERS = 10  # webhooks in flight at once, at most
SPREAD = 2.5  # seconds over which the webhooks are sent, while the slow clients trickle
BUDGET = 4.0  # Customer.io's wait for an answer, in seconds
READ_DEADLINE = 5.0  # gunicorn.conf.py: keepalive, which bounds reading a request's headers
CLOSE_SLACK = 3.0  # a busy 2-core machine: the deadline's timer, scheduling
SLOW_LIMIT = 20.0  # a slow client gives up by itself after this long
RESULTS_FILE = REPO_ROOT / "artifacts" / "slow_clients.json"
# A request that never ends: each tick sends one more byte of an endless header value.
SLOW_PREFIX = b"POST /webhooks/customerio HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


class Connections:
    """Client sockets opened to the server, and when the server closed each of them."""

    def __init__(self, port: int, count: int) -> None:
        self.opened_at: dict[socket.socket, float] = {}
        self.closed_after: dict[socket.socket, float] = {}
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            sock.setblocking(False)
            self.opened_at[sock] = time.monotonic()

    def open(self) -> list[socket.socket]:
        return [sock for sock in self.opened_at if sock not in self.closed_after]

    def note_closed(self) -> None:
        """Record the sockets the server has closed (EOF or reset) since the last look."""
        poller = select.poll()  # not select.select: it stops at file descriptor 1023
        by_fd = {sock.fileno(): sock for sock in self.open()}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        for fd, _event in poller.poll(0):
            sock = by_fd[fd]
            try:
                while sock.recv(4096):  # an error answer (408, 400) may come before the close
                    pass
            except BlockingIOError:
                continue  # data but no close yet
            except OSError:
                pass  # reset: closed too
            self.closed_after[sock] = time.monotonic() - self.opened_at[sock]

    def close_all(self) -> None:
        for sock in self.opened_at:
            sock.close()


class Slowloris(threading.Thread):
    """Send one header byte a second on each slow connection, until closed or SLOW_LIMIT."""

    def __init__(self, connections: Connections) -> None:
        super().__init__(name="slowloris", daemon=True)
        self.connections = connections
        self.stopping = threading.Event()
        for sock in connections.opened_at:
            sock.send(SLOW_PREFIX)

    def run(self) -> None:
        deadline = time.monotonic() + SLOW_LIMIT
        while not self.stopping.is_set() and time.monotonic() < deadline:
            self.connections.note_closed()
            if not self.connections.open():
                return
            for sock in self.connections.open():
                try:
                    sock.send(b"x")
                except BlockingIOError:
                    pass
                except OSError:  # reset by the server: note_closed records it next
                    pass
            for _ in range(10):  # look for closes ten times a second, so they are timed
                if self.stopping.wait(0.1):
                    break
                self.connections.note_closed()
        self.connections.note_closed()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Deployment]:
    """The Procfile's web process, alone, on Redis DB 12 (flushed before and after)."""
    client = redis_lib.Redis.from_url(REDIS_URL, **REDIS_DECODING)
    client.flushdb()
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(toml_text({
        "redis": {"key_prefix": "slowclients"},
        "logging": {"format": "json", "level": "WARNING"},
    }))
    deployment = Deployment(
        env=process_env({
            "REDIS_URL": REDIS_URL,
            "CIO_WEBHOOK_SIGNING_KEYS": SIGNING_KEY,
            "MPARTICLE_API_KEY": STANDIN_KEY,
            "MPARTICLE_API_SECRET": STANDIN_SECRET,
            "MPARTICLE_BASE_URL": "http://127.0.0.1:9/v2",
            "RELAY_SETTINGS": str(settings_file),
        }),
        workdir=tmp_path,
    )
    try:
        deployment.start("web")
        deployment.wait_until_healthy()
        yield deployment
    finally:
        deployment.stop_all()
        client.flushdb()
        client.close()


def post_one(url: str, n: int, start: float) -> tuple[int | None, float]:
    """(status or None when unanswered within BUDGET, seconds) for the n-th webhook.

    It is sent at its turn, ``start + n * SPREAD / WEBHOOKS``, or at once if that passed.
    """
    time.sleep(max(0.0, start + n * SPREAD / WEBHOOKS - time.monotonic()))
    payload = webhook("email", "delivered", customer_id=f"slow-p{n}", delivery_id=f"slow-d{n}")
    body = encode(payload)
    started = time.monotonic()
    try:
        # A fresh connection each time (no session): it queues behind the idle ones.
        answer = requests.post(f"{url}/webhooks/customerio", data=body,
                               headers=signed_headers(body), timeout=BUDGET)
        return answer.status_code, time.monotonic() - started
    except requests.RequestException:
        return None, time.monotonic() - started


def test_webhooks_are_answered_in_time_while_idle_and_slow_clients_hold_connections(web):
    slow = Connections(web.port, SLOW)
    slowloris = Slowloris(slow)
    slowloris.start()
    idle = Connections(web.port, IDLE)
    try:
        time.sleep(0.5)  # every connection is accepted (or in the backlog) before the first
        idle.note_closed()
        idle_open_at_start = len(idle.open())
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=SENDERS) as pool:
            answers = list(pool.map(lambda n: post_one(web.url, n, start), range(WEBHOOKS)))
        idle.note_closed()
        idle_open_at_end = len(idle.open())
        slowloris.join(SLOW_LIMIT + 2)
    finally:
        slowloris.stopping.set()
        slowloris.join(3)
        idle.note_closed()
        slow.close_all()
        idle.close_all()

    latencies = [seconds for status, seconds in answers]
    answered = sum(1 for status, seconds in answers if status == 202 and seconds <= BUDGET)
    slow_closed = sorted(slow.closed_after.values())
    results: dict[str, Any] = {
        "idle_connections": IDLE,
        "idle_open_when_webhooks_started": idle_open_at_start,
        "idle_open_when_webhooks_ended": idle_open_at_end,
        "slow_connections": SLOW,
        "webhooks": WEBHOOKS,
        "webhooks_in_flight": SENDERS,
        "answered_202_within_4s": answered,
        "statuses": sorted({str(status) for status, _ in answers}),
        "worst_latency_seconds": round(max(latencies), 3),
        "median_latency_seconds": round(sorted(latencies)[len(latencies) // 2], 3),
        "slow_closed_by_server": len(slow_closed),
        "slow_closed_after_seconds_max": round(slow_closed[-1], 2) if slow_closed else None,
        "slow_closed_after_seconds_min": round(slow_closed[0], 2) if slow_closed else None,
        "idle_closed_by_server": len(idle.closed_after),
        "read_deadline_seconds": READ_DEADLINE,
    }
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(results, indent=2) + "\n")

    assert idle_open_at_start == IDLE, results  # the idle ones were all there, open
    assert answered == WEBHOOKS, results
    assert max(latencies) < BUDGET, results
    assert len(slow_closed) == SLOW, results
    assert slow_closed[-1] <= READ_DEADLINE + CLOSE_SLACK, results
