"""gunicorn settings for the Procfile's ``web`` process (gunicorn reads this file itself).

Every value can still be overridden on the command line or in GUNICORN_CMD_ARGS.
"""

import os
import shutil
import sys
import tempfile

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "4"))
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
