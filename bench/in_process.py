"""CPU per request in one process, no HTTP server: bare Flask vs the relay's webhook route.

    python bench/in_process.py [--events 10000] [--profile] [--parts]

Calls each WSGI app directly (``app(environ, start_response)``) with distinct signed
events on a real Redis (BENCH_REDIS_URL, default redis://127.0.0.1:6379/14, flushed),
and prints microseconds of CPU per request: bare Flask, the relay, and the relay with
its Redis call left out (what the route costs by itself); then ``EventStore.accept``
alone, its script called on the store's own connections (app/script_line.py) and
through redis-py. ``--profile`` adds cProfile on the CPU clock for the relay;
``--parts`` times the route's steps one by one, each on every request's own data. The
README's in-process figures come from here.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
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

import hiredis  # noqa: E402
import redis  # noqa: E402

from app import create_app  # noqa: E402
from app.config import load_settings  # noqa: E402
from app.services import services  # noqa: E402
from app.store import IncomingEvent, Outcome  # noqa: E402
from app.webhooks.signature import sign  # noqa: E402
from bench.bare_app import app as bare_app  # noqa: E402
from bench.run import SIGNING_KEY, make_event  # noqa: E402


def environ_for(body: bytes, stamp: str, signature: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/webhooks/customerio", "SERVER_NAME": "bench",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "bench",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": "application/json",
        "HTTP_X_CIO_TIMESTAMP": stamp, "HTTP_X_CIO_SIGNATURE": signature,
    }


def cpu_per_request(app: Any, requests: list[tuple[bytes, str, str]]) -> float:
    def start_response(status: str, headers: list, exc_info: Any = None) -> None:
        if not status.startswith("2"):
            raise RuntimeError(f"answered {status}")

    started = time.process_time()
    for body, stamp, signature in requests:
        b"".join(app(environ_for(body, stamp, signature), start_response))
    return (time.process_time() - started) / len(requests) * 1e6


def accept_cpu(store: Any, run: str, count: int) -> float:
    """CPU per call of ``store.accept`` for distinct events (each its own delivery)."""
    events = [IncomingEvent(f"{run}-{time.time()}-{n}", "email_opened", f"d-{run}-{n}",
                            f"person-{n}", json.dumps(make_event(n, run))) for n in range(count)]
    store.accept(events[0])
    started = time.process_time()
    for event in events[1:]:
        store.accept(event)
    return (time.process_time() - started) / (count - 1) * 1e6


def time_parts(relay: Any, requests: list[tuple[bytes, str, str]]) -> None:
    """CPU per call of each step of the webhook route, on every request's own data."""
    from app import mapping, queue_entry
    from app.webhooks import endpoint
    from app.webhooks.schemas import load_webhook
    from app.webhooks.signature import verify_signature

    relay_services = services(relay)
    signing_keys = relay_services.settings.secrets.signing_keys
    bodies = [body for body, _, _ in requests]
    webhooks = [load_webhook(json.loads(body)) for body in bodies]
    keys = relay_services.event_store._keys
    line = relay_services.event_store._accept_call
    answer = {"status": "queued", "event_id": webhooks[0]["event_id"], "event": "email_opened"}
    log = {"event_id": webhooks[0]["event_id"], "event": "email_opened", "outcome": "queued"}
    ping = hiredis.pack_command(("PING",))
    parts: dict[str, Callable[[int], Any]] = {
        "signature": lambda n: verify_signature(
            bodies[n], requests[n][1], requests[n][2], signing_keys,
            tolerance_seconds=300, now=time.time()),
        "body read (orjson, as json reads it)": lambda n: endpoint.parse_json(bodies[n]),
        "body read by json.loads, for comparison": lambda n: json.loads(bodies[n]),
        "envelope check": lambda n: load_webhook(json.loads(bodies[n])),
        "routing key": lambda n: mapping.routing_key(webhooks[n]),
        "queued body, deflated": lambda n: queue_entry.pack(bodies[n].decode()),
        "bucket keys": lambda n: (keys.mark_buckets(0, webhooks[n]["event_id"], time.time()),
                                  keys.first_buckets(0, "delivery", time.time())),
        "answer (orjson)": lambda n: endpoint.encode_answer(answer),
        "answer by json.dumps, for comparison": lambda n: json.dumps(
            answer, separators=(",", ":")).encode(),
        "log line": lambda n: endpoint._log_request(
            endpoint.Answer(202, answer, dict(log)), "0123456789ab", time.perf_counter()),
        "a PING on the script line": lambda n: line._call(ping),
    }
    for name, part in parts.items():
        started = time.process_time()
        for n in range(len(requests)):
            part(n)
        print(f"  {name}: {(time.process_time() - started) / len(requests) * 1e6:.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--parts", action="store_true")
    args = parser.parse_args()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    redis.Redis.from_url(redis_url).flushdb()
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as settings_file:
        settings_file.write('[logging]\nlevel = "INFO"\nformat = "json"\n')
    # The relay's log lines go to stderr, as in production, but not to this terminal.
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    relay = create_app(load_settings({
        "REDIS_URL": redis_url, "CIO_WEBHOOK_SIGNING_KEYS": SIGNING_KEY,
        "RELAY_SETTINGS": settings_file.name,
    }))
    stamp = str(int(time.time()))
    requests = []
    for n in range(args.events):
        body = json.dumps(make_event(n, f"inproc{stamp}"), separators=(",", ":")).encode()
        requests.append((body, stamp, sign(SIGNING_KEY.encode(), stamp, body)))
    half = len(requests) // 2
    cpu_per_request(bare_app, requests[:500])  # warm up
    print(f"bare Flask: {cpu_per_request(bare_app, requests):.1f} us CPU per request")
    print(f"relay: {cpu_per_request(relay, requests[:half]):.1f} us CPU per request")
    store = services(relay).event_store
    accept = store.accept
    store.accept = lambda event: Outcome("queued", "0-1")  # type: ignore[method-assign]
    print(f"relay without its Redis call: {cpu_per_request(relay, requests[half:]):.1f} us")
    store.accept = accept  # type: ignore[method-assign]
    line = store._accept_call
    for path, call in (("script line", line), ("redis-py", store._accept)) * 2:
        store._accept_call = call
        print(f"EventStore.accept, {path}: {accept_cpu(store, path, args.events // 2):.1f} us")
    store._accept_call = line
    if args.parts:
        print("the route's steps, CPU per call:")
        time_parts(relay, requests)
    if args.profile:
        redis.Redis.from_url(redis_url).flushdb()
        profile = cProfile.Profile(time.process_time)
        profile.runcall(cpu_per_request, relay, requests[half:])
        pstats.Stats(profile, stream=sys.stdout).sort_stats("cumtime").print_stats(40)
    os.unlink(settings_file.name)


if __name__ == "__main__":
    main()
