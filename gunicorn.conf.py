"""gunicorn settings for the Procfile's ``web`` process (gunicorn reads this file itself).

Every value can still be overridden on the command line or in GUNICORN_CMD_ARGS.
"""

import os
import shutil
import sys
import tempfile
import traceback

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# Why gevent, not gthread: gunicorn 27's gthread worker hands every new connection to a
# thread of its pool, which waits up to 5 s for a first byte (a constant, no setting)
# before parking it, then reads the request line and headers with no deadline at all.
# So 200 connections that send nothing made signed webhooks queue behind them for 10 s
# and more, and 8 that sent one header byte a second held threads for good. The gevent
# worker gives each connection a greenlet (a few KB) that costs nothing while it waits,
# and bounds the reading of a request's line and headers by `keepalive` (below).
# tests/e2e/test_slow_clients.py measures it; docs/operations.md, "Slow and idle
# clients, and proxies", says what it leaves to a proxy.
worker_class = "gevent"
# One process per core. Measured (wrk -c16 on the relay's webhook path on this 2-core
# machine, interleaved rounds, medians): gthread 2 per core x 2 threads 643 req/s, p99
# 100 ms, 2271 us CPU per webhook; gevent 1 per core 641 req/s, 98 ms, 1988 us; gevent
# 2 per core 393 req/s, 142 ms, 2340 us. A gevent process overlaps its requests' waits
# for Redis by itself; more processes than cores only take turns on them. Heroku and
# others set WEB_CONCURRENCY themselves (a container's os.cpu_count() is often the
# host's).
workers = int(os.environ.get("WEB_CONCURRENCY", str(os.cpu_count() or 1)))
# Open connections per worker process (gevent's pool): past it, a process accepts no
# more until one closes, and new connections wait in the listen backlog (2048). Each
# needs a file descriptor: `ulimit -n` must exceed this plus the Redis connections.
worker_connections = 1000
# Only for `--worker-class gthread` (GUNICORN_CMD_ARGS); gevent has no threads.
threads = int(os.environ.get("WEB_THREADS", "2"))
# Customer.io waits 4 seconds; a request that takes longer than this is stuck. Under
# gevent this is the worker's heartbeat: a worker whose loop is blocked this long is
# killed and replaced.
timeout = 30
graceful_timeout = 20
# Seconds an idle kept-alive connection stays open, and, under gevent, the read
# deadline of each request's line and headers (an idle new connection included): a
# client that has not sent them all by then is closed. Behind a load balancer, set it
# above the balancer's idle timeout (docs/operations.md): GUNICORN_CMD_ARGS="--keep-alive 75".
keepalive = 5
accesslog = None
errorlog = "-"

# prometheus-client's multiprocess mode: each worker writes its counters under this
# folder and /metrics adds them up.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="cio-relay-metrics-")
    _own_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
else:
    _own_metrics_dir = None


def _configuration_problem(workers: int) -> str | None:
    """Why this configuration cannot work, in one line; None when it can."""
    from app.config import ConfigError, load_settings

    try:
        settings = load_settings()
        if settings.embedded and workers > 1:
            raise ConfigError(
                "REDIS_URL is not set: the embedded in-process store serves one gunicorn "
                f"worker only, not {workers} (run with --workers 1 / "
                "WEB_CONCURRENCY=1, or set REDIS_URL)"
            )
        settings.require_signing_keys()
        settings.require_customerio()
        if settings.embedded:
            settings.require_mparticle()
        else:
            # A Redis that may evict the relay's data stops the start here, in the
            # master: a worker that refuses to boot would only be started again.
            from app.services import build_redis, require_redis_that_keeps_data

            client = build_redis(settings)
            try:
                require_redis_that_keeps_data(client)
            finally:
                client.close()
    except ConfigError as exc:
        return str(exc)
    return None


def on_starting(server):
    """Refuse, with one line, configurations that cannot work.

    The check runs in a child process that exits when done: importing the app in the
    master would import requests and urllib3 there, and the workers, forked from it,
    would hold them from before gevent patches the standard library. urllib3 keeps its
    own reference to ssl.SSLContext, so its HTTPS (the embedded worker's calls to
    mParticle) would block a worker's whole event loop.
    """
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            problem = _configuration_problem(server.cfg.workers)
            if problem:
                sys.stderr.write(f"configuration error: {problem}\n")
            else:
                code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(1)


def child_exit(server, worker):
    """Tell prometheus-client a worker is gone, so its gauges stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
