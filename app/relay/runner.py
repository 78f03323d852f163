"""Builds a RelayWorker from an app's services and runs it as a process."""

from __future__ import annotations

import logging
import signal
from typing import Any

from flask import Flask

from app.services import services
from app.worker import DryRunClient, RelayWorker

logger = logging.getLogger(__name__)


def build_worker(app: Flask) -> RelayWorker:
    """A worker over the app's Redis, with the mParticle client or the dry-run stand-in."""
    relay = services(app)
    relay.settings.require_mparticle()
    client: Any = (
        DryRunClient() if relay.settings.mparticle["dry_run"] else relay.mparticle_client()
    )
    return RelayWorker(relay.redis, relay.keys, client, relay.settings, relay.metrics)


def run_worker_process(app: Flask) -> None:
    """Run until SIGTERM/SIGINT, finishing the request in flight first."""
    worker = build_worker(app)

    def _stop(signum: int, _frame: Any) -> None:
        logger.info("signal %s: finishing the request in flight, then stopping", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker.run()
