"""Benchmark the relay on this machine, in one run, and print the figures for the README.

    python bench/run.py [--seconds 10] [--connections 16] [--backlog 5000] [--memory-events 100000]

1. Ingest: wrk POSTs to (a) a bare Flask endpoint that only reads the body and (b) the
   real webhook path on a real Redis, both served by the Procfile's gunicorn command
   (gunicorn.conf.py applies to both). (b) gets distinct, freshly signed events.
   Prints requests/s, p50/p99 and the ratio (b)/(a).
2. Relay: a backlog of distinct events drained by one `cio-relay worker` process into
   the loopback mParticle stand-in, next to the same backlog sent one POST per event.
3. Memory: Redis bytes per accepted event (mark/story + first-occurrence flag + queue
   entry) from INFO memory over many events.

Needs wrk (Debian package) and a Redis (REDIS_URL or BENCH_REDIS_URL; default
redis://127.0.0.1:6379/14, flushed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from app.keys import KeySpace  # noqa: E402
from app.store import EventStore, IncomingEvent  # noqa: E402
from app.webhooks.signature import sign  # noqa: E402
from tests.support.mparticle_standin import MParticleStandIn  # noqa: E402
from tests.support.processes import Deployment, process_env  # noqa: E402

SIGNING_KEY = "bench-signing-key"
WRK_SCRIPT = ROOT / "bench" / "post_events.lua"


def make_event(n: int, run: str, *, person: int | None = None) -> dict[str, Any]:
    person_id = str(person if person is not None else n % 5000)
    return {
        "event_id": f"01BENCH{run}{n:010d}",
        "object_type": "email",
        "metric": "opened",
        "timestamp": int(time.time()),
        "data": {
            "action_id": 42,
            "campaign_id": 7,
            "delivery_id": f"RPILAgUBcRh{run}{n:010d}",
            "identifiers": {"id": person_id, "email": f"p{person_id}@example.com",
                            "cio_id": "d9c106000001"},
            "customer_id": person_id,
            "email_address": f"p{person_id}@example.com",
            "recipient": f"p{person_id}@example.com",
            "subject": "Your weekly digest",
            "journey_id": "01GW20GXAAXBKZD8J96M8FNV3R",
        },
    }


def write_signed_events(directory: Path, count: int, threads: int, run: str) -> Path:
    """Files of pre-signed distinct webhooks, one per wrk thread."""
    base = directory / f"events-{run}"
    stamp = str(int(time.time()))
    handles = [open(f"{base}.{i}", "w") for i in range(threads)]  # noqa: SIM115
    try:
        for n in range(count):
            body = json.dumps(make_event(n, run), separators=(",", ":"))
            signature = sign(SIGNING_KEY.encode(), stamp, body.encode())
            handles[n % threads].write(f"{stamp}\t{signature}\t{body}\n")
    finally:
        for handle in handles:
            handle.close()
    return base


def run_wrk(url: str, events: Path, seconds: int, connections: int, threads: int) -> dict:
    output = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
         "-s", str(WRK_SCRIPT), url + "/webhooks/customerio", "--", str(events)],
        capture_output=True, text=True, check=True,
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith("JSON "))
    result = json.loads(line[5:])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def start_web(env: dict[str, str], workdir: Path, app_path: str | None = None) -> Deployment:
    deployment = Deployment(env=process_env(env), workdir=workdir)
    if app_path:  # the same gunicorn command as the Procfile's web, another app
        command = ["gunicorn", "--bind", f"0.0.0.0:{deployment.port}", app_path]
        log = (workdir / "bare.log").open("wb")
        popen = subprocess.Popen(command, cwd=ROOT, env={**deployment.env,
                                 "PORT": str(deployment.port)}, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        from tests.support.processes import Process

        deployment.processes.append(Process("bare", popen, workdir / "bare.log"))
    else:
        deployment.start("web")
    deployment.wait_until_healthy() if not app_path else _wait_port(deployment)
    return deployment


def _wait_port(deployment: Deployment) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", deployment.port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("bare app did not start")


def bench_ingest(args: argparse.Namespace, redis_url: str, work: Path) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    threads = 2
    warm = write_signed_events(work, 3000, threads, "warm")
    settings_file = work / "settings.toml"
    settings_file.write_text('[logging]\nlevel = "WARNING"\n')
    env = {"REDIS_URL": redis_url, "CIO_WEBHOOK_SIGNING_KEYS": SIGNING_KEY,
           "RELAY_SETTINGS": str(settings_file)}
    bare = start_web(env, work, "bench.bare_app:app")
    try:
        run_wrk(bare.url, warm, 2, args.connections, threads)
        bare_result = run_wrk(bare.url, warm, args.seconds, args.connections, threads)
    finally:
        bare.stop_all()
    # Distinct events for every request the relay could possibly take in that time.
    distinct = max(int(bare_result["rps"] * args.seconds * 1.2), 5000)
    events = write_signed_events(work, distinct, threads, "run1")
    client.flushdb()
    relay = start_web(env, work)
    try:
        run_wrk(relay.url, warm, 2, args.connections, threads)
        client.flushdb()
        relay_result = run_wrk(relay.url, events, args.seconds, args.connections, threads)
    finally:
        relay.stop_all()
    keys = KeySpace()
    queued = sum(client.xlen(queue) for queue in keys.queues())
    return {"bare": bare_result, "relay": relay_result, "distinct_events": distinct,
            "queued": queued, "ratio": relay_result["rps"] / bare_result["rps"]}


def fill_backlog(client: redis.Redis, count: int, run: str) -> None:
    store = EventStore(client, KeySpace(), event_ttl_seconds=691200,
                       first_occurrence_ttl_seconds=7776000, first_occurrence_only=True,
                       dead_letter_max_entries=1000)
    for n in range(count):
        event = make_event(n, run, person=n)
        store.accept(IncomingEvent(
            event_id=event["event_id"], event_type="email_opened",
            delivery_id=event["data"]["delivery_id"], routing_key=str(n),
            body=json.dumps(event, separators=(",", ":")),
        ))


def drain_with_worker(redis_url: str, work: Path, count: int, sections: str, run: str) -> float:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    fill_backlog(client, count, run)
    settings_file = work / f"relay-{run}.toml"
    settings_file.write_text(sections + '\n[logging]\nlevel = "WARNING"\n')
    with MParticleStandIn(api_key="bench-key", api_secret="bench-secret") as standin:
        deployment = Deployment(env=process_env({
            "REDIS_URL": redis_url, "MPARTICLE_API_KEY": "bench-key",
            "MPARTICLE_API_SECRET": "bench-secret", "MPARTICLE_BASE_URL": standin.base_url,
            "RELAY_SETTINGS": str(settings_file), "CIO_WEBHOOK_SIGNING_KEYS": SIGNING_KEY,
        }), workdir=work)
        started = time.perf_counter()
        deployment.start("worker")
        try:
            if not standin.wait_for_events(count, timeout=600):
                raise RuntimeError(f"worker relayed {len(standin.source_message_ids())} "
                                   f"of {count}")
            elapsed = time.perf_counter() - started
            duplicates = len(standin.source_message_ids()) - len(set(standin.source_message_ids()))
        finally:
            deployment.stop_all()
    if duplicates:
        raise RuntimeError(f"{duplicates} events were sent twice")
    return count / elapsed


def bench_memory(redis_url: str, count: int) -> float:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    time.sleep(0.2)
    before = int(client.info("memory")["used_memory"])
    fill_backlog(client, count, "mem")
    after = int(client.info("memory")["used_memory"])
    client.flushdb()
    return (after - before) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--backlog", type=int, default=5000)
    parser.add_argument("--memory-events", type=int, default=100_000)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    with tempfile.TemporaryDirectory(prefix="cio-relay-bench-") as tmp:
        work = Path(tmp)
        ingest = bench_ingest(args, redis_url, work)
        bulk_rate = drain_with_worker(redis_url, work, args.backlog, "", "bulk")
        single_rate = drain_with_worker(
            redis_url, work, args.backlog, "[relay]\nmax_batches_per_request = 1\n", "single"
        )
        memory = bench_memory(redis_url, args.memory_events)
    bare, relay = ingest["bare"], ingest["relay"]
    print(f"machine: {os.cpu_count()} cores; gunicorn per gunicorn.conf.py; "
          f"wrk -t2 -c{args.connections} -d{args.seconds}s")
    print("| ingest | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|")
    for name, result in (("(a) bare Flask, reads the body", bare),
                         ("(b) relay webhook, distinct signed events", relay)):
        print(f"| {name} | {result['rps']:.0f} | {result['p50_us'] / 1000:.2f} | "
              f"{result['p99_us'] / 1000:.2f} | {result['errors'] + result['non2xx']} |")
    print(f"ratio (b)/(a): {ingest['ratio']:.2f}  "
          f"({ingest['queued']} queued of {relay['requests']} requests, "
          f"{ingest['distinct_events']} distinct events available)")
    print(f"relay, one worker, {args.backlog} events: bulk {bulk_rate:.0f} events/s, "
          f"one POST per event {single_rate:.0f} events/s, x{bulk_rate / single_rate:.1f}")
    print(f"Redis memory per accepted event: {memory:.0f} bytes "
          f"(mark/story + first-occurrence flag + queue entry, {args.memory_events} events)")


if __name__ == "__main__":
    main()
