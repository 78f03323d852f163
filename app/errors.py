"""One JSON shape for every error answer: ``{"error": ..., "details": ...}``."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, request
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)

CONSOLE_PATH = "/admin/console/"

# Answers shared with the webhook route, which is served before Flask (and its handlers).
REDIS_UNAVAILABLE = {
    "error": "service unavailable",
    "details": "the queue (Redis) cannot be reached; retry later",
}
INTERNAL_ERROR = {"error": "internal error", "details": None}


def json_response(payload: dict[str, Any], status: int) -> Response:
    """A compact JSON answer."""
    return Response(
        json.dumps(payload, separators=(",", ":")), status=status, mimetype="application/json"
    )


def register_error_handlers(app: Flask) -> None:
    """Answer every error as JSON; Redis being unreachable is a 503 so senders retry."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if request.path.startswith(CONSOLE_PATH):
            # A console URL that matches no page (a typo, an old bookmark) is a person
            # in a browser: answer with the console's page, not JSON. The console's own
            # errors never get here; its blueprint handles them.
            from app.admin.console import error_page

            return error_page(exc)
        response = json_response(
            {"error": (exc.name or "error").lower(), "details": exc.description}, exc.code or 500
        )
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(RedisConnectionError)
    @app.errorhandler(RedisTimeoutError)
    def redis_unavailable(exc: Exception) -> Response:
        logger.error("redis unavailable: %s", exc.__class__.__name__)
        from app.services import metrics

        metrics(app).rejected_for["redis_unavailable"].inc()
        return json_response(REDIS_UNAVAILABLE, 503)

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> Response:
        logger.exception("unexpected error")
        return json_response(INTERNAL_ERROR, 500)
