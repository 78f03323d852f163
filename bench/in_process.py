"""CPU per request in one process, no HTTP server: bare Flask, the floor and the relay.

    python bench/in_process.py [--events 10000] [--profile] [--parts]

Calls each WSGI app directly (``app(environ, start_response)``) with distinct signed
events on a real Redis (BENCH_REDIS_URL, default redis://127.0.0.1:6379/14, flushed),
and prints microseconds of this process's CPU per request (Redis's own CPU is not in
it): (a) bare Flask, (a) again as a view added to the relay's own app (its hooks and
extensions), (f) the floor (bench/floor_app.py: the body read and one redis-py
EVALSHA of a no-op script), the relay, and the relay with its store call left out (what
the route costs by itself); then ``EventStore.accept`` alone and the floor's no-op
EVALSHA alone. ``--profile`` adds cProfile on the CPU clock for the relay; ``--parts``
times the route's steps one by one through the app's public functions, each on every
request's own data. Only public APIs of the app are used.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
# As under gunicorn.conf.py: prometheus-client's multiprocess files (chosen at import),
# and the floor's one client from REDIS_URL.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="cio-relay-bench-"))
os.environ["REDIS_URL"] = REDIS_URL

import redis  # noqa: E402
from flask import request as flask_request  # noqa: E402

from app import create_app, json_body  # noqa: E402
from app.config import load_settings  # noqa: E402
from app.services import services  # noqa: E402
from app.store import queue_entry  # noqa: E402
from app.store.events import IncomingEvent, Outcome  # noqa: E402
from app.to_mparticle import catalog, mapping, webhook  # noqa: E402
from app.to_mparticle.schema import load_webhook  # noqa: E402
from app.to_mparticle.signature import sign, verify_signature  # noqa: E402
from bench import floor_app  # noqa: E402
from bench.bare_app import app as bare_app  # noqa: E402
from bench.run import SIGNING_KEY, make_event  # noqa: E402

BARE_ON_RELAY_PATH = "/bench/bare"


def environ_for(body: bytes, stamp: str, signature: str,
                path: str = "/webhooks/customerio") -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST", "PATH_INFO": path, "SERVER_NAME": "bench",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "bench",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": "application/json",
        "HTTP_X_CIO_TIMESTAMP": stamp, "HTTP_X_CIO_SIGNATURE": signature,
    }


def read_body_only() -> tuple[dict[str, str], int]:
    """bench/bare_app.py's view, to add to the relay's app."""
    flask_request.get_data()
    return {"status": "queued"}, 202


def cpu_per_request(app: Any, requests: list[tuple[bytes, str, str]],
                    path: str = "/webhooks/customerio") -> float:
    def start_response(status: str, headers: list, exc_info: Any = None) -> None:
        if not status.startswith("2"):
            raise RuntimeError(f"answered {status}")

    started = time.process_time()
    for body, stamp, signature in requests:
        b"".join(app(environ_for(body, stamp, signature, path), start_response))
    return (time.process_time() - started) / len(requests) * 1e6


def cpu_per_call(call: Callable[[int], Any], count: int) -> float:
    started = time.process_time()
    for n in range(count):
        call(n)
    return (time.process_time() - started) / count * 1e6


def accept_cpu(store: Any, run: str, count: int) -> float:
    """CPU per call of ``store.accept`` for distinct events (each its own delivery)."""
    events = [IncomingEvent(f"{run}-{time.time()}-{n}", "email_opened", f"d-{run}-{n}",
                            f"person-{n}", json.dumps(make_event(n, run))) for n in range(count)]
    store.accept(events[0])
    return cpu_per_call(lambda n: store.accept(events[n + 1]), count - 1)


def time_parts(relay: Any, requests: list[tuple[bytes, str, str]]) -> None:
    """CPU per call of each step of the webhook route, on every request's own data."""
    relay_services = services(relay)
    signing_keys = relay_services.settings.secrets.signing_keys
    keys, metrics, toggles = relay_services.keys, relay_services.metrics, relay_services.toggles
    bodies = [body for body, _, _ in requests]
    webhooks = [load_webhook(json.loads(body)) for body in bodies]
    answer = {"status": "queued", "event_id": webhooks[0]["event_id"], "event": "email_opened"}
    route_logger = logging.getLogger(webhook.__name__)
    fields = {"event_id": webhooks[0]["event_id"], "event": "email_opened",
              "outcome": "queued", "status": 202, "request_id": "0123456789ab",
              "latency_ms": 1.23}
    parts: dict[str, Callable[[int], Any]] = {
        "signature (HMAC-SHA256 over the body)": lambda n: verify_signature(
            bodies[n], requests[n][1], requests[n][2], signing_keys,
            tolerance_seconds=300, now=time.time()),
        "body read (json_body.parse_json: orjson, as json reads it)":
            lambda n: json_body.parse_json(bodies[n]),
        "body read by json.loads, for comparison": lambda n: json.loads(bodies[n]),
        "envelope check (load_webhook, fast path)": lambda n: load_webhook(webhooks[n]),
        "event type: catalog lookup + toggle": lambda n: (
            catalog.lookup(webhooks[n]["object_type"], webhooks[n]["metric"]),
            toggles.is_enabled("email_opened")),
        "routing key + delivery id": lambda n: (mapping.routing_key(webhooks[n]),
                                                mapping.delivery_id_of(webhooks[n])),
        "queued body, deflated (queue_entry.pack)":
            lambda n: queue_entry.pack(bodies[n].decode()),
        "shard + bucket keys": lambda n: (
            keys.mark_buckets(keys.shard_for(str(n)), webhooks[n]["event_id"], time.time()),
            keys.first_buckets(keys.shard_for(str(n)), "delivery", time.time())),
        "metrics (received + outcome counters)": lambda n: (
            metrics.received.inc(), metrics.outcome["queued"].inc()),
        "answer (json_body.encode_answer: orjson)": lambda n: json_body.encode_answer(answer),
        "log line (one JSON record with the route's fields, to /dev/null)":
            lambda n: route_logger.info("webhook %s", "queued", extra=dict(fields)),
        "one no-op EVALSHA through redis-py (the floor's round trip)":
            lambda n: floor_app.no_op(keys=[], args=[]),
    }
    for name, part in parts.items():
        print(f"  {name}: {cpu_per_call(part, len(requests)):.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--parts", action="store_true")
    args = parser.parse_args()
    redis.Redis.from_url(REDIS_URL).flushdb()
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as settings_file:
        settings_file.write('[logging]\nlevel = "INFO"\nformat = "json"\n')
    relay = create_app(load_settings({
        "REDIS_URL": REDIS_URL, "CIO_WEBHOOK_SIGNING_KEYS": SIGNING_KEY,
        "RELAY_SETTINGS": settings_file.name,
    }))
    # The relay's log lines are written, as in production, but not to this terminal.
    devnull = open(os.devnull, "w")  # noqa: SIM115
    for handler in logging.getLogger("app").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)
    # Flask's public add_url_rule, before the first request: a view that only reads the
    # body, on the relay's own app (its request-id hooks, sessions, CSRF extension).
    relay.add_url_rule(BARE_ON_RELAY_PATH, "bench_bare_on_relay", read_body_only,
                       methods=["POST"])
    stamp = str(int(time.time()))
    requests = []
    for n in range(args.events):
        body = json.dumps(make_event(n, f"inproc{stamp}"), separators=(",", ":")).encode()
        requests.append((body, stamp, sign(SIGNING_KEY.encode(), stamp, body)))
    half = len(requests) // 2
    for app in (bare_app, floor_app.app):
        cpu_per_request(app, requests[:500])  # warm up
    print(f"(a) bare Flask: {cpu_per_request(bare_app, requests):.1f} us CPU per request")
    print(f"(f) floor: {cpu_per_request(floor_app.app, requests):.1f} us CPU per request")
    print(f"(a) on the relay's app (its hooks and extensions): "
          f"{cpu_per_request(relay, requests, BARE_ON_RELAY_PATH):.1f} us CPU per request")
    print(f"relay: {cpu_per_request(relay, requests[:half]):.1f} us CPU per request")
    store = services(relay).event_store
    accept = store.accept
    store.accept = lambda event: Outcome("queued", "0-1")  # type: ignore[method-assign]
    print(f"relay without its store call: {cpu_per_request(relay, requests[half:]):.1f} us")
    store.accept = accept  # type: ignore[method-assign]
    for _ in range(2):
        print(f"EventStore.accept alone: {accept_cpu(store, 'accept', args.events // 2):.1f} us; "
              f"a no-op EVALSHA alone: "
              f"{cpu_per_call(lambda n: floor_app.no_op(keys=[], args=[]), args.events):.1f} us")
    if args.parts:
        print("the route's steps, CPU per call:")
        time_parts(relay, requests)
    if args.profile:
        redis.Redis.from_url(REDIS_URL).flushdb()
        profile = cProfile.Profile(time.process_time)
        profile.runcall(cpu_per_request, relay, requests[half:])
        stats = pstats.Stats(profile, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumtime").print_stats(50)
    os.unlink(settings_file.name)


if __name__ == "__main__":
    main()
