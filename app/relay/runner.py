"""Runs relay workers as a process: until SIGTERM or SIGINT, the requests in flight first.

One worker per direction, each on a thread of its own: a destination that is slow or
down holds back only its own direction.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from app.relay.worker import RelayWorker

logger = logging.getLogger(__name__)


def run_until_signalled(*workers: RelayWorker) -> None:
    """Run the workers until SIGTERM/SIGINT, each finishing its request in flight first."""
    stopping = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        logger.info("signal %s: finishing the requests in flight, then stopping", signum)
        for worker in workers:
            worker.stop()
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    *others, first = workers
    threads = [threading.Thread(target=worker.run, name=f"relay-{worker.direction.name}")
               for worker in others]
    for thread in threads:
        thread.start()
    first.run()  # on the main thread, which receives the signals
    for thread in threads:
        thread.join()
