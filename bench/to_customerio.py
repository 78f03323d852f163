"""Benchmark mParticle → Customer.io on this machine, in one run, and print the figures.

    .venv/bin/python bench/to_customerio.py [--only relay|receiver|memory] [--events 5000]
                                            [--rounds 3] [--seconds 10] [--connections 16]
                                            [--memory-batches 20000]

Every batch is mParticle's Webhook output for one person with one custom event (a
customer id and an email, three user attributes, a UUID message id and source message
id): the worst case for batching, since each batch becomes two Track API items, the
person's identify and the event. Figures are printed, never checked against a target.

1. Relay. A backlog of ``--events`` batches is POSTed to /webhooks/mparticle through the
   Flask test client of the relay's own app (``create_app`` on the bench's Redis,
   BENCH_REDIS_URL, default redis://127.0.0.1:6379/11, flushed before each round), so
   each goes through the view and ``BatchStore.accept`` as in production. Then one
   ``cio-relay worker`` process (the Procfile's worker line, started by
   ``tests.helpers.processes.Deployment``; ``[customerio] max_requests_per_second =
   1000`` so the throttle is not the limit, dry_run false) drains it into the loopback
   Customer.io stand-in (``tests.helpers.customerio_standin``, in this process), which
   checks every request and item as Customer.io would. The stand-in is http.server,
   which writes an answer's headers and body in two sends: with Nagle's algorithm on,
   the body waits for the client's delayed ACK, about 40 ms an answer on loopback (the
   relay's requests, through urllib3, already set TCP_NODELAY). The bench turns
   Nagle off on the stand-in's sockets (``disable_nagle_algorithm``, socketserver's own
   switch; ``--standin-nagle`` leaves it on), so that the figure is the relay's, not
   the stand-in's. Events/s are counted from the
   stand-in's first item taken to the last (Python's start-up and the first read are
   left out), items ÷ 2. Next to it, in turns, the same kind of backlog (fresh events)
   sent one Track API call per item by a small loop in a child process
   (``requests.Session``, each item alone as ``{"batch": [item]}``, items made by the
   relay's own mapping): Customer.io's Track API v1 takes one call per identify and one
   per event, and a one-item v2 batch costs the same call. That loop reads no queue and
   writes no story, and on loopback a call has no network round trip, so the ratio
   flatters the one-call-per-event side. Median of ``--rounds`` rounds.
2. Receiver CPU per POST. wrk (2 threads, ``--connections``) POSTs the batches, each
   distinct, with the Authorization header (a Lua script written at run time) to the
   Procfile's web (gunicorn, gunicorn.conf.py, production JSON logging at INFO) and, in
   turns, to the floor, bench/floor_app.py (a bare Flask view that reads the body and
   makes one redis-py EVALSHA of a no-op script), both on a private redis-server. CPU
   per POST = the gunicorn processes' CPU (/proc, master and workers) + Redis's (INFO
   cpu), over the requests wrk made; wrk's own CPU is not counted. The figure is floor
   CPU ÷ receiver CPU (1.0: the receiver costs no more than the floor), median of the
   rounds; requests/s at saturation are shown for information only.
3. Memory. ``--memory-batches`` batches POSTed through the test client into a private
   redis-server: INFO memory's used_memory before and after, per batch while queued
   (queue entry + the event's and the batch's marks); then drained in process by the
   real Customer.io worker with the dry-run client, per batch once relayed (the marks,
   with their stories, that the dedup window keeps).

Needs wrk (``apt-get install wrk``) for the receiver part, redis-server for the receiver
and memory parts, and a Redis at BENCH_REDIS_URL for the relay part.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import requests  # noqa: E402

from app import create_app  # noqa: E402
from app.config import load_settings  # noqa: E402
from app.services import REDIS_DECODING, services  # noqa: E402
from app.to_customerio import mapping  # noqa: E402
from app.to_customerio.delivery import encode  # noqa: E402
from app.to_customerio.schema import load_batch  # noqa: E402
from tests.helpers import customerio_standin  # noqa: E402
from tests.helpers.customerio_standin import CustomerIOStandIn  # noqa: E402
from tests.helpers.processes import Deployment, Process, process_env  # noqa: E402
from tests.helpers.redis_cluster import running_server  # noqa: E402

SITE_ID = "bench-site"
TRACK_KEY = "bench-track-key"
AUTHORIZATION = "Bearer bench-mparticle-webhook-secret"
SIGNING_KEY = "bench-signing-key"  # the other direction's; the web process needs one
WEBHOOK_PATH = "/webhooks/mparticle"
FLOOR_PATH = "/webhooks/customerio"  # bench/floor_app.py's one route
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"

WRK_SCRIPT = """\
-- POST mParticle batches, one body a line, each once (one file per wrk thread), with
-- the Authorization header. Arguments: file prefix, path, Authorization value.
local requests = {}
local index = 0
local count = 0

function setup(thread)
  thread:set("id", count)
  count = count + 1
end

function init(args)
  for body in io.lines(args[1] .. "." .. id) do
    requests[#requests + 1] = wrk.format("POST", args[2], {
      ["Content-Type"] = "application/json",
      ["Authorization"] = args[3],
    }, body)
  end
end

function request()
  index = index + 1
  if index > #requests then
    index = 1  -- out of distinct batches: repeats are answered as duplicates
  end
  return requests[index]
end

function done(summary, latency, requests_)
  io.write(string.format(
    "JSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d, " ..
    "\\"errors\\": %d, \\"non2xx\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, summary.errors.status))
end
"""


# -- the batches ---------------------------------------------------------------------

def _uuid(run: str, n: int, kind: str) -> str:
    return str(uuid.UUID(bytes=hashlib.blake2b(f"{run}:{kind}:{n}".encode(),
                                               digest_size=16).digest()))


def make_batch(n: int, run: str) -> dict[str, Any]:
    """mParticle's Webhook output for one person (their own) with one custom event."""
    now_ms = int(time.time() * 1000)
    person = f"{run}-{n:07d}"
    mpid = int.from_bytes(hashlib.blake2b(f"{run}:mpid:{n}".encode(), digest_size=8).digest(),
                          "big", signed=True)
    identity_ms = now_ms - 86_400_000
    return {
        "events": [{"event_type": "custom_event", "data": {
            "event_name": "Played Song", "custom_event_type": "media",
            "event_id": mpid ^ 0x5F5E100, "source_message_id": _uuid(run, n, "source"),
            "session_uuid": _uuid(run, n, "session"), "timestamp_unixtime_ms": now_ms,
            "custom_attributes": {"song": "Blue in Green", "artist": "Miles Davis",
                                  "duration_seconds": "337"},
        }}],
        "user_identities": [
            {"identity_type": "customer_id", "identity": person,
             "timestamp_unixtime_ms": identity_ms},
            {"identity_type": "email", "identity": f"{person}@example.com",
             "timestamp_unixtime_ms": identity_ms},
        ],
        "user_attributes": {"$FirstName": "Ada", "$LastName": "Lovelace", "plan": "pro"},
        "mpid": mpid,
        "environment": "production",
        "schema_version": 2,
        "timestamp_unixtime_ms": now_ms,
        "message_id": _uuid(run, n, "message"),
    }


def batch_body(n: int, run: str) -> bytes:
    return json.dumps(make_batch(n, run), separators=(",", ":")).encode()


# -- the relay's app in this process -------------------------------------------------

def relay_env(redis_url: str, settings_file: Path, base_url: str = "http://127.0.0.1:9"
              ) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url, "RELAY_SETTINGS": str(settings_file),
        "MPARTICLE_WEBHOOK_AUTHORIZATION": AUTHORIZATION, "CUSTOMERIO_SITE_ID": SITE_ID,
        "CUSTOMERIO_API_KEY": TRACK_KEY, "CUSTOMERIO_BASE_URL": base_url,
        "CIO_WEBHOOK_SIGNING_KEYS": SIGNING_KEY,
    }


def write_settings(path: Path, *, level: str = "WARNING", dry_run: bool = False) -> Path:
    """The settings the bench's processes read: the defaults, with these changes."""
    path.write_text(
        "[mparticle]\ndry_run = true\n"  # the other direction: nothing queued, no credentials
        f"[customerio]\nmax_requests_per_second = 1000.0\ndry_run = {str(dry_run).lower()}\n"
        f'[logging]\nlevel = "{level}"\nformat = "json"\n'
    )
    return path


def build_app(redis_url: str, settings_file: Path, client: redis.Redis) -> Any:
    settings = load_settings(relay_env(redis_url, settings_file))
    return create_app(settings, redis_client=client)


def post_backlog(app: Any, count: int, run: str) -> None:
    """POST ``count`` batches through the app's own view (the test client): all queued."""
    client = app.test_client()
    for n in range(count):
        answer = client.post(WEBHOOK_PATH, data=batch_body(n, run),
                             headers={"Authorization": AUTHORIZATION},
                             content_type="application/json")
        if answer.status_code != 202 or answer.get_json().get("queued") != 1:
            raise RuntimeError(f"batch {n} was answered {answer.status_code} "
                               f"{answer.get_data(as_text=True)[:300]}")


def queued_entries(app: Any) -> int:
    relay = services(app)
    return sum(relay.redis.xlen(queue) for queue in relay.customerio_keys.queues())


# -- 1. relay ------------------------------------------------------------------------

def _time_standin(standin: CustomerIOStandIn, items: int, label: str, sender_pid: int
                  ) -> dict[str, float]:
    """Events/s from the stand-in's first item taken to its last (two items an event), and
    the CPU per event of the sending process (/proc) and of the stand-in (this process)."""
    if not standin.wait_for_items(1, timeout=60):
        raise RuntimeError(f"{label}: nothing reached the stand-in")
    started, already = time.perf_counter(), len(standin.accepted_items())
    sender_cpu, standin_cpu = _process_tree_cpu(sender_pid), time.process_time()
    if not standin.wait_for_items(items, timeout=600):
        raise RuntimeError(f"{label}: {len(standin.accepted_items())} of {items} items taken")
    elapsed = time.perf_counter() - started
    sender_cpu = _process_tree_cpu(sender_pid) - sender_cpu
    standin_cpu = time.process_time() - standin_cpu
    if standin.duplicate_event_ids_dropped:
        raise RuntimeError(f"{label}: {standin.duplicate_event_ids_dropped} events sent twice")
    events = (items - already) / 2
    return {"rate": events / elapsed, "sender_cpu_us": sender_cpu / events * 1e6,
            "standin_cpu_us": standin_cpu / events * 1e6}


def drain_with_worker(redis_url: str, work: Path, count: int, run: str) -> dict[str, float]:
    """Fill a backlog of ``count`` batches, then time one ``cio-relay worker`` draining it."""
    client = redis.Redis.from_url(redis_url, **REDIS_DECODING)
    client.flushdb()
    settings_file = write_settings(work / f"relay-{run}.toml")
    app = build_app(redis_url, settings_file, client)
    post_backlog(app, count, run)
    with CustomerIOStandIn(site_id=SITE_ID, api_key=TRACK_KEY) as standin:
        deployment = Deployment(env=process_env(relay_env(redis_url, settings_file,
                                                          standin.base_url)), workdir=work)
        worker = deployment.start("worker")
        try:
            timed = _time_standin(standin, 2 * count, "worker", worker.popen.pid)
        finally:
            deployment.stop_all()
        batch_requests = [r for r in standin.requests if r.path == "/api/v2/batch"]
        if "Traceback" in worker.output():
            raise RuntimeError(f"the worker failed:\n{worker.output()[-3000:]}")
    if queued_entries(app) and _pending(client, app):
        raise RuntimeError("the worker left entries unacknowledged")
    return {**timed, "requests": len(batch_requests)}


def _pending(client: redis.Redis, app: Any) -> int:
    keys = services(app).customerio_keys
    total = 0
    for queue in keys.queues():
        for group in client.xinfo_groups(queue):
            total += int(group["pending"]) + int(group.get("lag") or 0)
    return total


def one_call_per_event(redis_url: str, work: Path, count: int, run: str
                       ) -> dict[str, float]:
    """The same kind of backlog, each item its own Track API call, from a child process.

    The items are made here by the relay's own mapping; the loop reads no queue.
    """
    client = redis.Redis.from_url(redis_url, **REDIS_DECODING)
    app = build_app(redis_url, write_settings(work / "single.toml"), client)
    options = services(app).customerio_options
    items_file = work / f"items-{run}.jsonl"
    with items_file.open("wb") as out:
        for n in range(count):
            batch = load_batch(make_batch(n, run))
            for item in mapping.items_for_batch(batch, batch["events"], options):
                out.write(encode(item) + b"\n")
    with CustomerIOStandIn(site_id=SITE_ID, api_key=TRACK_KEY) as standin:
        sender = subprocess.Popen([sys.executable, __file__, "--send-singly", str(items_file),
                                   standin.base_url], cwd=ROOT)
        try:
            timed = _time_standin(standin, 2 * count, "one call per event", sender.pid)
        finally:
            if sender.wait(60) != 0:
                raise RuntimeError(f"the one-call-per-event loop exited {sender.returncode}")
    return timed


def send_singly(items_file: Path, base_url: str) -> None:
    """The one-call-per-event relay: each item alone in ``POST /api/v2/batch``."""
    session = requests.Session()
    session.auth = (SITE_ID, TRACK_KEY)
    headers = {"Content-Type": "application/json"}
    url = base_url + "/api/v2/batch"
    with items_file.open("rb") as lines:
        for line in lines:
            answer = session.post(url, data=b'{"batch":[' + line.rstrip(b"\n") + b"]}",
                                  headers=headers, timeout=10)
            if answer.status_code != 200:
                sys.exit(f"the stand-in answered {answer.status_code}: {answer.text[:300]}")


def bench_relay(args: argparse.Namespace, redis_url: str, work: Path) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    for number in range(args.rounds):  # in turns, so a busy moment slows both alike
        bulk = drain_with_worker(redis_url, work, args.events, f"bulk{number}")
        single = one_call_per_event(redis_url, work, args.events, f"single{number}")
        rounds.append({"bulk": bulk, "single": single, "ratio": bulk["rate"] / single["rate"]})
        print(f"relay round {number + 1}: one worker {bulk['rate']:.0f} events/s "
              f"({bulk['requests']} requests; CPU us/event worker {bulk['sender_cpu_us']:.0f}, "
              f"stand-in {bulk['standin_cpu_us']:.0f}), one call per item "
              f"{single['rate']:.0f} events/s (CPU us/event loop "
              f"{single['sender_cpu_us']:.0f}, stand-in {single['standin_cpu_us']:.0f}), "
              f"x{rounds[-1]['ratio']:.1f}", flush=True)
    result = {f"{side}_{figure}": statistics.median(r[side][figure] for r in rounds)
              for side in ("bulk", "single")
              for figure in ("rate", "sender_cpu_us", "standin_cpu_us")}
    result.update(ratio=statistics.median(r["ratio"] for r in rounds), rounds=rounds)
    print(f"relay, one worker, {args.events} batches of one event (2 items each), median of "
          f"{args.rounds} rounds: {result['bulk_rate']:.0f} events/s; one Track API call per "
          f"item {result['single_rate']:.0f} events/s; ratio x{result['ratio']:.1f}; sender "
          f"CPU per event {result['bulk_sender_cpu_us']:.0f} us (worker) vs "
          f"{result['single_sender_cpu_us']:.0f} us (loop)", flush=True)
    return result


# -- 2. receiver CPU per POST --------------------------------------------------------

def write_bodies(work: Path, count: int, threads: int, run: str) -> Path:
    """Files of distinct batches, one body a line, one file per wrk thread."""
    base = work / f"bodies-{run}"
    handles = [open(f"{base}.{i}", "wb") for i in range(threads)]  # noqa: SIM115
    try:
        for n in range(count):
            handles[n % threads].write(batch_body(n, run) + b"\n")
    finally:
        for handle in handles:
            handle.close()
    return base


def _process_tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its threads and its descendants (gunicorn's workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            utime, stime = stat[stat.rindex(")") + 2:].split()[11:13]
            cpu += (int(utime) + int(stime)) / ticks
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return cpu


def _cpu_now(server: Deployment, client: redis.Redis) -> dict[str, float]:
    info = client.info("cpu")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk runs, once exited
    return {"server": sum(_process_tree_cpu(p.popen.pid) for p in server.processes),
            "redis": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            "wrk": children.ru_utime + children.ru_stime}


def run_wrk(server: Deployment, path: str, bodies: Path, args: argparse.Namespace,
            client: redis.Redis, script: Path, seconds: int) -> dict[str, Any]:
    before = _cpu_now(server, client)
    output = subprocess.run(
        ["wrk", "-t", "2", "-c", str(args.connections), "-d", f"{seconds}s", "-s",
         str(script), server.url + path, "--", str(bodies), path, AUTHORIZATION],
        capture_output=True, text=True, check=True,
    ).stdout
    after = _cpu_now(server, client)
    line = next(line for line in output.splitlines() if line.startswith("JSON "))
    result = json.loads(line[5:])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    for part in ("server", "redis", "wrk"):
        result[f"cpu_us_{part}"] = (after[part] - before[part]) / result["requests"] * 1e6
    result["cpu_us"] = result["cpu_us_server"] + result["cpu_us_redis"]
    return result


def start_gunicorn(env: dict[str, str], work: Path, app_path: str | None) -> Deployment:
    """The Procfile's web (``app_path`` None) or the same gunicorn command on another app."""
    deployment = Deployment(env=process_env(env), workdir=work)
    if app_path is None:
        deployment.start("web")
        deployment.wait_until_healthy()
        return deployment
    log_path = work / "floor.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            ["gunicorn", "--bind", f"0.0.0.0:{deployment.port}", app_path], cwd=ROOT,
            env={**deployment.env, "PORT": str(deployment.port)}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    deployment.processes.append(Process("floor", popen, log_path))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.post(deployment.url + FLOOR_PATH, data=b"{}", timeout=2)
            return deployment
        except (requests.ConnectionError, requests.Timeout):  # still booting
            if popen.poll() is not None:
                raise RuntimeError(f"the floor exited:\n{log_path.read_text()}") from None
            time.sleep(0.1)
    deployment.stop_all()
    raise RuntimeError("the floor did not start")


def bench_receiver(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    script = work / "post_batches.lua"
    script.write_text(WRK_SCRIPT)
    with running_server(work / "redis-receiver") as server:
        client = redis.Redis.from_url(server.url, **REDIS_DECODING)
        settings_file = write_settings(work / "receiver.toml", level="INFO")  # production's
        env = relay_env(server.url, settings_file)
        app = build_app(server.url, settings_file, client)  # to count what was queued
        servers: dict[str, tuple[Deployment, str]] = {}
        rounds: list[dict[str, Any]] = []
        try:  # every server up at once, measured in turns: a busy moment slows both alike
            servers["floor"] = (start_gunicorn(env, work, "bench.floor_app:app"), FLOOR_PATH)
            servers["receiver"] = (start_gunicorn(env, work, None), WEBHOOK_PATH)
            warm = write_bodies(work, 3000, 2, "warm")
            for deployment, path in servers.values():
                run_wrk(deployment, path, warm, args, client, script, 2)
            for number in range(args.rounds):
                floor = run_wrk(*servers["floor"], warm, args, client, script, args.seconds)
                distinct = max(int(floor["rps"] * args.seconds * 1.3), 5000)
                bodies = write_bodies(work, distinct, 2, f"receiver{number}")
                client.flushdb()
                receiver = run_wrk(*servers["receiver"], bodies, args, client, script,
                                   args.seconds)
                queued = queued_entries(app)
                if floor["errors"] + floor["non2xx"]:
                    raise RuntimeError(f"the floor answered {floor} with errors")
                rounds.append({"floor": floor, "receiver": receiver, "queued": queued,
                               "ratio": floor["cpu_us"] / receiver["cpu_us"]})
                print(f"receiver round {number + 1}: floor {floor['cpu_us']:.0f} us/POST "
                      f"({floor['rps']:.0f}/s), receiver {receiver['cpu_us']:.0f} us/POST "
                      f"(gunicorn {receiver['cpu_us_server']:.0f} + redis "
                      f"{receiver['cpu_us_redis']:.0f}; {receiver['rps']:.0f}/s, p50 "
                      f"{receiver['p50_us'] / 1000:.1f} ms, p99 {receiver['p99_us'] / 1000:.1f}"
                      f" ms, {receiver['errors'] + receiver['non2xx']} errors; {queued} queued "
                      f"of {receiver['requests']}), floor/receiver {rounds[-1]['ratio']:.2f}",
                      flush=True)
        finally:
            for deployment, _ in servers.values():
                deployment.stop_all()
    if any(r["queued"] < r["receiver"]["requests"] for r in rounds):
        print("warning: the receiver did not queue every POST of a round (duplicates or "
              "refusals)")
    result = {name: statistics.median(r[name]["cpu_us"] for r in rounds)
              for name in ("floor", "receiver")}
    result.update(
        ratio=statistics.median(r["ratio"] for r in rounds),
        receiver_server=statistics.median(r["receiver"]["cpu_us_server"] for r in rounds),
        receiver_redis=statistics.median(r["receiver"]["cpu_us_redis"] for r in rounds),
        floor_rps=statistics.median(r["floor"]["rps"] for r in rounds),
        receiver_rps=statistics.median(r["receiver"]["rps"] for r in rounds),
        p50_ms=statistics.median(r["receiver"]["p50_us"] for r in rounds) / 1000,
        p99_ms=statistics.median(r["receiver"]["p99_us"] for r in rounds) / 1000,
        rounds=[r["ratio"] for r in rounds],
    )
    print(f"receiver, CPU per POST (gunicorn + Redis), median of {args.rounds} rounds: floor "
          f"{result['floor']:.0f} us, receiver {result['receiver']:.0f} us; floor CPU / "
          f"receiver CPU {result['ratio']:.2f}", flush=True)
    return result


# -- 3. memory -----------------------------------------------------------------------

def bench_memory(args: argparse.Namespace, work: Path) -> dict[str, float]:
    count = args.memory_batches
    with running_server(work / "redis-memory") as server:
        client = redis.Redis.from_url(server.url, **REDIS_DECODING)
        settings_file = write_settings(work / "memory.toml", dry_run=True)
        app = build_app(server.url, settings_file, client)
        before = int(client.info("memory")["used_memory"])
        post_backlog(app, count, "memory")
        queued = int(client.info("memory")["used_memory"])
        worker = services(app).build_customerio_worker()
        worker.consumer.ensure_groups()
        while worker.relay_pending():
            pass
        left = _pending(client, app)
        at_rest = int(client.info("memory")["used_memory"])
    if left:
        raise RuntimeError(f"{left} queue entries were not relayed")
    result = {"queued": (queued - before) / count, "at_rest": (at_rest - before) / count,
              "body": len(batch_body(0, "memory"))}
    print(f"memory, {count} batches of one event ({result['body']} bytes a POST): "
          f"{result['queued']:.0f} Redis bytes a batch while queued, {result['at_rest']:.0f} "
          "once relayed (the event's and the batch's marks, with their stories)", flush=True)
    return result


# -- main ----------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000,
                        help="batches (one event each) in the relay part's backlog")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--only", choices=["relay", "receiver", "memory"])
    parser.add_argument("--seconds", type=int, default=10, help="wrk's time per server")
    parser.add_argument("--connections", type=int, default=16, help="wrk's connections")
    parser.add_argument("--memory-batches", type=int, default=20_000)
    parser.add_argument("--send-singly", nargs=2, metavar=("ITEMS", "URL"),
                        help=argparse.SUPPRESS)  # the one-call-per-event loop's child
    parser.add_argument("--standin-nagle", action="store_true",
                        help="leave Nagle's algorithm on in the Customer.io stand-in (about "
                             "40 ms an answer on loopback)")
    args = parser.parse_args()
    # socketserver.StreamRequestHandler sets TCP_NODELAY on each connection when this holds.
    customerio_standin._Handler.disable_nagle_algorithm = not args.standin_nagle
    if args.send_singly:
        send_singly(Path(args.send_singly[0]), args.send_singly[1])
        return
    if args.only in (None, "receiver") and not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    redis_url = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
          f"stand-in Nagle {'on' if args.standin_nagle else 'off'}; "
          f"{time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cio-relay-bench-cio-") as tmp:
        work = Path(tmp)
        results: dict[str, Any] = {}
        if args.only in (None, "relay"):
            results["relay"] = bench_relay(args, redis_url, work)
        if args.only in (None, "receiver"):
            results["receiver"] = bench_receiver(args, work)
        if args.only in (None, "memory"):
            results["memory"] = bench_memory(args, work)
    print("JSON " + json.dumps(results))


if __name__ == "__main__":
    main()
