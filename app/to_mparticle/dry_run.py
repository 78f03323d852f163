"""Stands in for mParticle when ``[mparticle] dry_run`` is on: logs, sends nothing."""

from __future__ import annotations

import logging

from app.to_mparticle.client import BulkResult

logger = logging.getLogger(__name__)


class DryRunClient:
    """The mParticle client's two calls, answered without sending anything."""

    def send_bulk(self, body: bytes) -> BulkResult:
        logger.info("dry run: would POST /bulkevents %s", body.decode("utf-8")[:4000])
        return BulkResult(status=202, rate_limit_percent_used=None)

    def check_credentials(self) -> str:
        return "ok (dry run: nothing is sent)"
