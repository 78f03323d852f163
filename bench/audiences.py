"""Measure audiences: Redis bytes per person and per membership, and deliveries per second.

    python bench/audiences.py [--people 20000] [--audiences 5] [--deliveries 300]

1. Memory: a private redis-server (nothing else moves its INFO); ``--people`` people
   join ``--audiences`` audiences each through ``AudienceStore.apply`` (the state only:
   the queue entries are drained, as the worker would); bytes per person and per
   membership from ``INFO memory`` before and after.
2. Deliveries per second: Firehose-style deliveries of 100 records each posted to the
   app's route in process (Flask's test client, the real Redis at BENCH_REDIS_URL,
   default redis://127.0.0.1:6379/14, flushed), records/s and deliveries/s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from app import create_app  # noqa: E402
from app.config import load_settings  # noqa: E402
from app.services import REDIS_DECODING  # noqa: E402
from app.store.audiences import AudienceStore, PersonChanges  # noqa: E402
from app.store.keys import KeySpace  # noqa: E402
from tests.helpers import firehose  # noqa: E402
from tests.helpers.firehose import audience_message  # noqa: E402
from tests.helpers.processes import free_port  # noqa: E402


def measure_memory(people: int, audiences: int) -> dict[str, float]:
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-audiences-"))
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--dir", str(workdir)],
                              stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, **REDIS_DECODING)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        keys = KeySpace().for_direction("a", "to-customerio-audiences")
        store = AudienceStore(client, keys, membership_ttl_seconds=90 * 86400,
                              delivery_ttl_seconds=8 * 86400)
        before = int(client.info("memory")["used_memory"])
        batch: list[PersonChanges] = []
        for n in range(people):
            routing_key = f"id:customer-{n:08d}"
            changes = [(11000 + a, 1_700_000_000_000 + a, True, f"Audience {11000 + a}")
                       for a in range(audiences)]
            batch.append(PersonChanges(routing_key, "{}", changes))
            if len(batch) == 200:
                store.apply(f"bench-{n}", batch)
                batch = []
        if batch:
            store.apply("bench-last", batch)
        for queue in keys.queues():  # the worker drains these; only the state remains
            client.delete(queue)
        for key in client.scan_iter(match="*deliveries*"):
            client.delete(key)
        after = int(client.info("memory")["used_memory"])
        grown = after - before
        return {"people": people, "audiences_each": audiences,
                "bytes_per_person": round(grown / people, 1),
                "bytes_per_membership": round(grown / (people * audiences), 1)}
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def measure_deliveries(count: int, redis_url: str) -> dict[str, float]:
    client = redis.Redis.from_url(redis_url, **REDIS_DECODING)
    client.flushdb()
    settings_file = Path(tempfile.mkdtemp(prefix="bench-audiences-")) / "settings.toml"
    settings_file.write_text('[customerio]\ndry_run = true\n[logging]\nlevel = "WARNING"\n')
    settings = load_settings({
        "REDIS_URL": redis_url, "RELAY_SETTINGS": str(settings_file),
        "CIO_WEBHOOK_SIGNING_KEYS": "bench", "MPARTICLE_API_KEY": "k",
        "MPARTICLE_API_SECRET": "s", "MPARTICLE_AUDIENCE_ACCESS_KEY": firehose.ACCESS_KEY,
    })
    app = create_app(settings, redis_client=client)
    test_client = app.test_client()
    bodies = []
    for n in range(count):
        messages = [audience_message(11000 + (r % 20), customer_id=f"p{n}-{r % 25}",
                                     member=r % 3 != 0) for r in range(100)]
        body, request_id = firehose.delivery(*messages)
        bodies.append((firehose.encode(body), firehose.headers(request_id)))
    started = time.perf_counter()
    for data, headers in bodies:
        response = test_client.post("/webhooks/mparticle/audiences", data=data, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"delivery answered {response.status_code}: {response.data!r}")
    elapsed = time.perf_counter() - started
    client.flushdb()
    return {"deliveries": count, "records_each": 100,
            "deliveries_per_second": round(count / elapsed, 1),
            "records_per_second": round(count * 100 / elapsed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--audiences", type=int, default=5)
    parser.add_argument("--deliveries", type=int, default=300)
    args = parser.parse_args()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    print("memory:", measure_memory(args.people, args.audiences))
    print("receiver:", measure_deliveries(args.deliveries, redis_url))


if __name__ == "__main__":
    main()
