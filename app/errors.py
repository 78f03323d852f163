"""One JSON shape for every error answer: ``{"error": ..., "details": ...}``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from app.extension import services
from app.store.redis_health import FULL_ERRORS, UNAVAILABLE_ERRORS

logger = logging.getLogger(__name__)

# Answers shared by the handlers below and the webhook views, which answer these
# themselves so that their own log line says so.
REDIS_UNAVAILABLE = {
    "error": "service unavailable",
    "details": "the queue (Redis) cannot be reached; retry later",
}
REDIS_FULL = {
    "error": "service unavailable",
    "details": "the queue (Redis) is full and refuses writes; retry later",
}
INTERNAL_ERROR = {"error": "internal error", "details": None}


def json_response(payload: dict[str, Any], status: int) -> Response:
    """A compact JSON answer."""
    return Response(
        json.dumps(payload, separators=(",", ":")), status=status, mimetype="application/json"
    )


def register_error_handlers(
    app: Flask, html_pages: Mapping[str, Callable[[HTTPException], Any]] | None = None
) -> None:
    """Answer every error as JSON; Redis being unreachable is a 503 so senders retry.

    ``html_pages`` maps a path prefix to the page that answers HTTP errors under it
    instead (the console's, for a person in a browser).
    """
    pages = dict(html_pages or {})

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        for prefix, page in pages.items():
            if request.path.startswith(prefix):
                return page(exc)
        response = json_response(
            {"error": (exc.name or "error").lower(), "details": exc.description}, exc.code or 500
        )
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    def redis_unavailable(exc: Exception) -> Response:
        logger.error("redis unavailable: %s", exc.__class__.__name__)
        services(app).metrics.rejected_for["redis_unavailable"].inc()
        return json_response(REDIS_UNAVAILABLE, 503)

    def redis_full(exc: Exception) -> Response:
        logger.error("redis is full (maxmemory): a write was refused")
        services(app).metrics.rejected_for["redis_full"].inc()
        return json_response(REDIS_FULL, 503)

    for error in UNAVAILABLE_ERRORS:
        app.register_error_handler(error, redis_unavailable)
    for error in FULL_ERRORS:
        app.register_error_handler(error, redis_full)

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> Response:
        logger.exception("unexpected error")
        return json_response(INTERNAL_ERROR, 500)
