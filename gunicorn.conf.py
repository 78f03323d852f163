"""gunicorn settings for the Procfile's ``web`` process (gunicorn reads this file itself).

Every value can still be overridden on the command line or in GUNICORN_CMD_ARGS.
"""

import os
import shutil
import sys
import tempfile

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# Chosen by measurement (bench/run.py --only ingest and an interleaved head-to-head on
# this 2-core machine, wrk on the same box, medians of 4 rounds, relay = real webhook
# path on Redis; requests/s, p99 ms):
#   gthread 4 workers x 2 threads: bare 4664/s 11.4, relay 2202/s 20.8, ratio 0.45
#   gthread 2 workers x 4 threads: bare 4855/s 10.0, relay 2124/s 18.8, ratio 0.44
#   gthread 2 workers x 2 threads: bare 5279/s  7.4, relay 1908/s 19.8, ratio 0.40
#   sync    4 workers:             bare 4538/s  7.8, relay 2104/s 11.0, ratio 0.46
#   sync    2 workers:             relay a third slower than the others (ratio 0.32)
# Throughput is equal within the noise of a shared machine except sync x cores, which
# idles while each request waits for Redis. sync x 2*cores has the best p99 but no
# keep-alive, and a slow or idle connection (a browser's preconnect to the console, a
# slow client) holds a whole process until `timeout`; gthread parks those in its poller.
# So: gthread, 2 processes per core, 2 threads each. Heroku and others set
# WEB_CONCURRENCY themselves (a container's os.cpu_count() is often the host's).
workers = int(os.environ.get("WEB_CONCURRENCY", str(2 * (os.cpu_count() or 1))))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "2"))
# Customer.io waits 4 seconds; a request that takes longer than this is stuck.
timeout = 30
graceful_timeout = 20
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


def on_starting(server):
    """Refuse, with one line, configurations that cannot work."""
    from app.config import ConfigError, load_settings

    try:
        settings = load_settings()
        if settings.embedded and server.cfg.workers > 1:
            raise ConfigError(
                "REDIS_URL is not set: the embedded in-process store serves one gunicorn "
                f"worker only, not {server.cfg.workers} (run with --workers 1 / "
                "WEB_CONCURRENCY=1, or set REDIS_URL)"
            )
        settings.require_signing_keys()
        if settings.embedded:
            settings.require_mparticle()
    except ConfigError as exc:
        sys.stderr.write(f"configuration error: {exc}\n")
        sys.exit(1)


def child_exit(server, worker):
    """Tell prometheus-client a worker is gone, so its gauges stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
