"""Stands in for Customer.io when ``[customerio] dry_run`` is on: logs, sends nothing."""

from __future__ import annotations

import logging

from app.to_customerio.client import BATCH_PATH, BatchResult

logger = logging.getLogger(__name__)


class DryRunClient:
    """The Customer.io client's two calls, answered without sending anything."""

    def send_batch(self, body: bytes) -> BatchResult:
        text = body.decode("utf-8", errors="replace")[:4000]
        logger.info("dry run: would POST %s %s", BATCH_PATH, text)
        return BatchResult(status=200, item_errors={})

    def check_credentials(self) -> str:
        return "ok (dry run: nothing is sent)"
