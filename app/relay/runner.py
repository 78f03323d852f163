"""Runs a relay worker as a process: until SIGTERM or SIGINT, the request in flight first."""

from __future__ import annotations

import logging
import signal
from typing import Any

from app.relay.worker import RelayWorker

logger = logging.getLogger(__name__)


def run_until_signalled(worker: RelayWorker) -> None:
    """Run the worker until SIGTERM/SIGINT, finishing the request in flight first."""

    def _stop(signum: int, _frame: Any) -> None:
        logger.info("signal %s: finishing the request in flight, then stopping", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker.run()
