"""Benchmark the relay on this machine, in one run, and print the figures for the README.

    python bench/run.py [--only ingest|relay|memory] [--rounds 5] [--seconds 10] [--connections 16]
                        [--backlog 10000] [--memory-events 100000]

1. Ingest: wrk POSTs, in turns, to servers all started with the Procfile's gunicorn
   command (gunicorn.conf.py applies to each): (a) a bare Flask endpoint that only reads
   the body (bench/bare_app.py); (f) the floor, (a) plus one redis-py EVALSHA of a no-op
   script (bench/floor_app.py); (b) the real webhook path on a real Redis, with
   distinct, freshly signed events; and (c) a straightforward handler
   (bench/straightforward_app.py: HMAC, JSON, SET NX + XADD) on events of its own.
   The figure is CPU per webhook (the gunicorn processes from /proc, plus Redis from
   INFO cpu; wrk's own CPU is shown apart, not counted) as floor / relay, median of
   the rounds: 1.0 means the relay costs no more than the floor, the target is >= 0.85.
   (a) and (c) are given beside it the same way (floor / theirs). Requests/s at
   saturation and p50/p99 are printed too, for information only.
2. Relay: a backlog of distinct events (each its own person: one batch per event, the
   worst case) drained by one `cio-relay worker` process into the loopback mParticle
   stand-in, next to the same backlog sent one POST per event; in turns, median of the
   rounds, timed from mParticle's first answer (not the process's start).
3. Memory: Redis bytes per accepted event from INFO memory over many events: while
   queued (mark + first-occurrence flag + queue entry) and once relayed (mark with its
   story + flag, the part the dedup windows keep: 8-12 days, 90-135 for the flag).

Needs wrk (Debian package), redis-server (ingest and memory run on a private one, so
that nothing else moves its INFO figures) and a Redis for the relay part
(BENCH_REDIS_URL; default redis://127.0.0.1:6379/14, flushed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from app import create_app  # noqa: E402
from app.config import load_settings  # noqa: E402
from app.services import REDIS_DECODING, services  # noqa: E402
from app.store.events import EventStore, IncomingEvent  # noqa: E402
from app.store.keys import KeySpace  # noqa: E402
from app.to_mparticle.signature import sign  # noqa: E402
from tests.helpers.mparticle_standin import MParticleStandIn  # noqa: E402
from tests.helpers.processes import Deployment, free_port, process_env  # noqa: E402

SIGNING_KEY = "bench-signing-key"
WRK_SCRIPT = ROOT / "bench" / "post_events.lua"


def _id_like(prefix: str, length: int, run: str, n: int) -> str:
    """A distinct id of a real one's length: memory per event depends on it."""
    digest = hashlib.blake2b(f"{run}:{n}".encode(), digest_size=16).hexdigest()
    return (prefix + digest)[:length]


def make_event(
    n: int, run: str, *, person: int | None = None, metric: str = "opened",
    delivery: int | None = None,
) -> dict[str, Any]:
    person_id = str(person if person is not None else n % 5000)
    delivery = n if delivery is None else delivery
    return {
        "event_id": _id_like("01", 26, run, n),  # as long as Customer.io's (a ULID)
        "object_type": "email",
        "metric": metric,
        "timestamp": int(time.time()),
        "data": {
            "action_id": 42,
            "campaign_id": 7,
            "delivery_id": _id_like("RPIL", 28, run, delivery),
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


def run_wrk(url: str, events: Path, seconds: int, connections: int, threads: int,
            server: Deployment | None = None, redis_client: Any = None) -> dict:
    """wrk's figures, and the CPU time each party used per request (when told the server).

    Requests/s on a shared machine follow whatever else runs; CPU time per request does
    not (much), so the two together say what the code costs.
    """
    before = _cpu_now(server, redis_client)
    output = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
         "-s", str(WRK_SCRIPT), url + "/webhooks/customerio", "--", str(events)],
        capture_output=True, text=True, check=True,
    ).stdout
    after = _cpu_now(server, redis_client)
    line = next(line for line in output.splitlines() if line.startswith("JSON "))
    result = json.loads(line[5:])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    if server is not None:
        for part in ("server", "wrk", "redis"):
            result[f"cpu_us_{part}"] = (after[part] - before[part]) / result["requests"] * 1e6
        result["switches"] = (after["switches"] - before["switches"]) / result["requests"]
    return result


def _cpu_now(server: Deployment | None, redis_client: Any) -> dict[str, float]:
    """CPU seconds used so far by the server's processes, by wrk runs, and by Redis; and
    the server's context switches (each a thread that slept or was preempted)."""
    if server is None:
        return {}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has exited
    info = redis_client.info("cpu") if redis_client is not None else {}
    usage = [_process_tree_usage(process.popen.pid) for process in server.processes]
    return {
        "server": sum(cpu for cpu, _ in usage),
        "wrk": children.ru_utime + children.ru_stime,
        "redis": float(info.get("used_cpu_user", 0)) + float(info.get("used_cpu_sys", 0)),
        "switches": sum(switches for _, switches in usage),
    }


def _process_tree_usage(pid: int) -> tuple[float, int]:
    """CPU seconds and context switches of a process, its threads and its descendants
    (gunicorn's master and workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu, switches, pending = 0.0, 0, [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            utime, stime = stat[stat.rindex(")") + 2:].split()[11:13]
            cpu += (int(utime) + int(stime)) / ticks
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
                switches += sum(int(line.split()[1])
                                for line in (task / "status").read_text().splitlines()
                                if "ctxt_switches:" in line)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return cpu, switches


def start_web(env: dict[str, str], workdir: Path, app_path: str | None = None) -> Deployment:
    deployment = Deployment(env=process_env(env), workdir=workdir)
    if app_path:  # the same gunicorn command as the Procfile's web, another app
        command = ["gunicorn", "--bind", f"0.0.0.0:{deployment.port}", app_path]
        name = app_path.split(":")[0].rsplit(".", 1)[-1]
        log = (workdir / f"{name}.log").open("wb")
        popen = subprocess.Popen(command, cwd=ROOT, env={**deployment.env,
                                 "PORT": str(deployment.port)}, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        from tests.helpers.processes import Process

        deployment.processes.append(Process(name, popen, workdir / f"{name}.log"))
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


# The ingest servers, measured in this order in every round: the floor right before the
# relay, so a busy moment weighs on both alike. Bare first: its rate sizes the distinct
# events the others get.
SERVERS = (
    # name, label, app (None: the Procfile's web, the relay itself), gets distinct events
    # (else the warm-up's, over and over)
    ("bare", "(a) bare Flask, reads the body", "bench.bare_app:app", False),
    ("floor", "(f) the floor: (a) + one redis-py EVALSHA of a no-op script",
     "bench.floor_app:app", False),
    ("relay", "(b) the relay's webhook, distinct signed events", None, True),
    ("straightforward", "(c) a straightforward handler: HMAC, JSON, SET NX + XADD",
     "bench.straightforward_app:app", True),
)


def bench_ingest(args: argparse.Namespace, redis_url: str, work: Path) -> dict[str, Any]:
    """Every server up at once, measured in turns: a busy machine slows them alike."""
    client = redis.Redis.from_url(redis_url, **REDIS_DECODING)
    threads = 2
    warm = write_signed_events(work, 3000, threads, "warm")
    settings_file = work / "settings.toml"
    # Production's logging (INFO, JSON lines): the per-request line is part of the cost.
    settings_file.write_text('[logging]\nlevel = "INFO"\nformat = "json"\n')
    env = {"REDIS_URL": redis_url, "CIO_WEBHOOK_SIGNING_KEYS": SIGNING_KEY,
           "RELAY_SETTINGS": str(settings_file)}
    if os.environ.get("GUNICORN_CMD_ARGS"):  # to compare worker settings: all servers get it
        env["GUNICORN_CMD_ARGS"] = os.environ["GUNICORN_CMD_ARGS"]
    client.flushdb()
    servers = {name: start_web(env, work, app_path) for name, _, app_path, _ in SERVERS}
    worker_class = _worker_class(servers["relay"])
    distinct_for = {name: distinct for name, _, _, distinct in SERVERS}
    rounds: list[dict[str, Any]] = []
    try:
        for server in servers.values():
            run_wrk(server.url, warm, 2, args.connections, threads)
        for number in range(args.rounds):
            results: dict[str, Any] = {}
            for name, server in servers.items():
                events = warm
                if distinct_for[name]:
                    # Distinct events for every request it could possibly take in that time.
                    distinct = max(int(results["bare"]["rps"] * args.seconds * 1.2), 5000)
                    events = write_signed_events(work, distinct, threads, f"{name}{number}")
                    client.flushdb()
                results[name] = run_wrk(server.url, events, args.seconds, args.connections,
                                        threads, server, client)
                if name == "relay":
                    queued = sum(client.xlen(queue) for queue in KeySpace().queues())
            floor_cpu = cpu_per_webhook(results["floor"])
            rounds.append({**results, "queued": queued, "distinct_events": distinct,
                           "floor_ratio": {name: floor_cpu / cpu_per_webhook(result)
                                           for name, result in results.items()}})
            print(f"round {number + 1}: " + "; ".join(
                f"{name} {result['rps']:.0f}/s, floor/{name} "
                f"{rounds[-1]['floor_ratio'][name]:.2f}, CPU us/webhook {_cpu_text(result)}"
                for name, result in results.items()), flush=True)
    finally:
        for server in servers.values():
            server.stop_all()
    if any(result["queued"] < result["relay"]["requests"] for result in rounds):
        print("warning: the relay did not queue every request of a round: some were "
              "answered as duplicates or refused")
    median_round = sorted(rounds, key=lambda result: result["floor_ratio"]["relay"])[
        len(rounds) // 2]
    return {"median_round": median_round, "rounds": rounds, "worker_class": worker_class}


def _worker_class(server: Deployment) -> str:
    """The gunicorn worker class a server runs ("Using worker: ..." in its log)."""
    output = server.processes[0].output()
    line = next((line for line in output.splitlines() if "Using worker:" in line), "")
    return line.rsplit(":", 1)[-1].strip() or "unknown"


def _median(values: list[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def cpu_per_webhook(result: dict[str, Any]) -> float:
    """The server's CPU per request: its gunicorn processes plus Redis (not wrk)."""
    return result["cpu_us_server"] + result["cpu_us_redis"]


def _cpu_text(result: dict[str, Any]) -> str:
    return (f"{cpu_per_webhook(result):.0f} (gunicorn {result['cpu_us_server']:.0f} + redis "
            f"{result['cpu_us_redis']:.0f}; wrk, not counted, {result['cpu_us_wrk']:.0f}; "
            f"server context switches {result['switches']:.1f})")


# An email's life as Customer.io reports it: one delivery, several events.
EMAIL_LIFECYCLE = ("sent", "delivered", "opened", "clicked")


def fill_backlog(client: redis.Redis, count: int, run: str, *, per_delivery: int = 1) -> None:
    """Accept ``count`` distinct events, ``per_delivery`` of them (sent, delivered...) each."""
    keys = KeySpace(event_ttl_seconds=691200, first_occurrence_ttl_seconds=7776000)
    store = EventStore(client, keys, first_occurrence_only=True, dead_letter_max_entries=1000)
    for n in range(count):
        delivery, step = divmod(n, per_delivery)
        metric = EMAIL_LIFECYCLE[step % len(EMAIL_LIFECYCLE)] if per_delivery > 1 else "opened"
        event = make_event(n, run, person=delivery, metric=metric, delivery=delivery)
        outcome = store.accept(IncomingEvent(
            event_id=event["event_id"], event_type=f"email_{metric}",
            delivery_id=event["data"]["delivery_id"], routing_key=str(delivery),
            body=json.dumps(event, separators=(",", ":")),
        ))
        if outcome.status != "queued":
            raise RuntimeError(f"bench event {n} was {outcome.status}, not queued")


def drain_with_worker(redis_url: str, work: Path, count: int, sections: str, run: str) -> float:
    client = redis.Redis.from_url(redis_url, **REDIS_DECODING)
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
        deployment.start("worker")
        try:
            # The clock starts at mParticle's first answer, not at the process's start:
            # Python's imports would otherwise weigh on the short bulk drain only.
            if not standin.wait_for_events(1, timeout=60):
                raise RuntimeError("the worker sent nothing")
            started, already = time.perf_counter(), len(standin.source_message_ids())
            if not standin.wait_for_events(count, timeout=600):
                raise RuntimeError(f"worker relayed {len(standin.source_message_ids())} "
                                   f"of {count}")
            elapsed = time.perf_counter() - started
            duplicates = len(standin.source_message_ids()) - len(set(standin.source_message_ids()))
        finally:
            deployment.stop_all()
    if duplicates:
        raise RuntimeError(f"{duplicates} events were sent twice")
    return (count - already) / elapsed


@contextmanager
def private_redis(work: Path) -> Iterator[str]:
    """A redis-server of the bench's own, so nothing else moves its INFO figures."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    redis_url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(redis_url)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield redis_url
    finally:
        server.terminate()
        server.wait(10)


def bench_memory(work: Path, count: int, per_delivery: int) -> dict[str, float]:
    """Bytes per event while queued, and at rest once relayed (what 8 days of marks cost).

    Measured on a private redis-server, so nothing else moves INFO memory. The drain
    runs the real RelayWorker in this process with the dry-run client, so each mark
    carries the story a relayed event really has (status, time, source_request_id).
    """
    with private_redis(work) as redis_url:
        client = redis.Redis.from_url(redis_url, **REDIS_DECODING)
        before = int(client.info("memory")["used_memory"])
        fill_backlog(client, count, "mem", per_delivery=per_delivery)
        queued = int(client.info("memory")["used_memory"])
        settings_file = work / "memory.toml"
        settings_file.write_text('[mparticle]\ndry_run = true\n[logging]\nlevel = "WARNING"\n')
        settings = load_settings({"REDIS_URL": redis_url, "RELAY_SETTINGS": str(settings_file),
                                  "CIO_WEBHOOK_SIGNING_KEYS": SIGNING_KEY})
        worker = services(create_app(settings, redis_client=client, role="cli")).build_worker()
        worker.consumer.ensure_groups()
        while worker.relay_pending():
            pass
        left = sum(client.xlen(queue) for queue in KeySpace().queues())
        at_rest = int(client.info("memory")["used_memory"])
    if left:
        raise RuntimeError(f"{left} events were not drained")
    return {"queued": (queued - before) / count, "at_rest": (at_rest - before) / count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--memory-events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds in turns: each server (ingest), bulk then one POST "
                             "per event (relay); medians are reported")
    parser.add_argument("--only", choices=["ingest", "relay", "memory"],
                        help="run one part (for profiling); the README's figures are a full run")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    with tempfile.TemporaryDirectory(prefix="cio-relay-bench-") as tmp:
        work = Path(tmp)
        if args.only in (None, "ingest"):
            with private_redis(work) as ingest_redis_url:
                print_ingest(args, bench_ingest(args, ingest_redis_url, work))
        if args.only in (None, "relay"):
            # In turns, like the ingest rounds, so a busy moment slows both alike.
            bulk_rates, single_rates = [], []
            for number in range(args.rounds):
                bulk_rates.append(drain_with_worker(redis_url, work, args.backlog, "",
                                                    f"bulk{number}"))
                single_rates.append(drain_with_worker(
                    redis_url, work, args.backlog, "[relay]\nmax_batches_per_request = 1\n",
                    f"single{number}",
                ))
                print(f"relay round {number + 1}: bulk {bulk_rates[-1]:.0f} events/s, one POST "
                      f"per event {single_rates[-1]:.0f} events/s", flush=True)
            bulk_rate, single_rate = _median(bulk_rates), _median(single_rates)
            print(f"relay, one worker, {args.backlog} events, median of {args.rounds} rounds: "
                  f"bulk {bulk_rate:.0f} events/s, one POST per event {single_rate:.0f} "
                  f"events/s, x{bulk_rate / single_rate:.1f}")
        if args.only in (None, "memory"):
            for per_delivery, label in ((4, "4 events per delivery (email sent, delivered, "
                                            "opened, clicked)"),
                                        (1, "1 event per delivery (worst case)")):
                memory = bench_memory(work, args.memory_events, per_delivery)
                print(f"Redis bytes per accepted event, {args.memory_events} events, {label}: "
                      f"{memory['queued']:.0f} while queued, {memory['at_rest']:.0f} once "
                      f"relayed (mark with its story + first-occurrence flag)")


def print_ingest(args: argparse.Namespace, ingest: dict[str, Any]) -> None:
    rounds, middle = ingest["rounds"], ingest["median_round"]
    names = [name for name, _, _, _ in SERVERS]
    print(f"machine: {os.cpu_count()} cores; gunicorn per gunicorn.conf.py "
          f"{os.environ.get('GUNICORN_CMD_ARGS', '')} (worker class {ingest['worker_class']}); "
          f"wrk -t2 -c{args.connections} -d{args.seconds}s")
    print("CPU per webhook = the server's gunicorn processes (/proc) + Redis (INFO cpu), "
          "us per request; ratio = floor CPU / that server's CPU (1.00: no dearer than the "
          "floor; target for the relay >= 0.85)")
    print("| round | " + " | ".join(f"{name} CPU us" for name in names) + " | "
          + " | ".join(f"floor/{name}" for name in names if name != "floor") + " | "
          + " | ".join(f"{name} req/s" for name in names) + " |")
    print("|---" * (1 + 3 * len(names) - 1) + "|")

    def row(label: str, cpu: list[float], ratio: list[float], rps: list[float]) -> str:
        ratios = [value for name, value in zip(names, ratio, strict=True) if name != "floor"]
        return (f"| {label} | " + " | ".join(f"{value:.0f}" for value in cpu) + " | "
                + " | ".join(f"{value:.2f}" for value in ratios) + " | "
                + " | ".join(f"{value:.0f}" for value in rps) + " |")

    for number, result in enumerate(rounds, 1):
        print(row(str(number), [cpu_per_webhook(result[name]) for name in names],
                  [result["floor_ratio"][name] for name in names],
                  [result[name]["rps"] for name in names]))
    print(row("median", [_median([cpu_per_webhook(result[name]) for result in rounds])
                         for name in names],
              [_median([result["floor_ratio"][name] for result in rounds]) for name in names],
              [_median([result[name]["rps"] for result in rounds]) for name in names]))
    relay_ratio = _median([result["floor_ratio"]["relay"] for result in rounds])
    print(f"ingest: CPU per webhook, floor / relay, median of {len(rounds)} rounds: "
          f"{relay_ratio:.2f} (target >= 0.85): the relay costs {1 / relay_ratio - 1:+.0%} "
          "on top of the floor")
    print("median round (by floor/relay), latency at saturation and CPU split:")
    print("| ingest | requests/s | p50 ms | p99 ms | errors | CPU us/webhook |")
    print("|---|---|---|---|---|---|")
    for name, label, _, _ in SERVERS:
        result = middle[name]
        print(f"| {label} | {result['rps']:.0f} | {result['p50_us'] / 1000:.2f} | "
              f"{result['p99_us'] / 1000:.2f} | {result['errors'] + result['non2xx']} | "
              f"{_cpu_text(result)} |")
    print(f"median round: {middle['queued']} queued of {middle['relay']['requests']} requests, "
          f"{middle['distinct_events']} distinct events available")


if __name__ == "__main__":
    main()
