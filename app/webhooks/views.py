"""POST /webhooks/customerio: authenticate the raw bytes, load, decide, store, answer.

Slow work (mapping, mParticle) is the worker's; this view does one Redis round trip
for an event it queues, and answers well within Customer.io's 4-second limit.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, request
from marshmallow import ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from app import catalog, mapping
from app.errors import json_response
from app.services import event_store, metrics, settings, toggles
from app.store import IncomingEvent
from app.webhooks.schemas import load_webhook
from app.webhooks.signature import SignatureError, verify_signature

logger = logging.getLogger(__name__)

blueprint = Blueprint("webhooks", __name__)

# Keys of "sent" events that can carry a whole message body; not forwarded, not kept.
_BULKY_FIELDS = ("content", "headers")


@blueprint.post("/webhooks/customerio")
def receive_customerio_webhook() -> Response:
    """Verify, validate and queue one Customer.io reporting webhook."""
    counters = metrics(current_app)
    counters.received.inc()
    config = settings(current_app)
    body = _read_body(config.webhook["max_body_bytes"])
    if config.webhook["require_signature"]:
        try:
            verify_signature(
                body,
                request.headers.get("X-CIO-Timestamp"),
                request.headers.get("X-CIO-Signature"),
                config.secrets.signing_keys,
                tolerance_seconds=config.webhook["timestamp_tolerance_seconds"],
                now=time.time(),
            )
        except SignatureError as exc:
            counters.rejected.labels(reason="signature").inc()
            logger.warning("webhook refused: %s", exc, extra={"outcome": "rejected"})
            return json_response({"error": "invalid signature", "details": str(exc)}, 401)

    try:
        payload = json.loads(body, parse_constant=_refuse_constant)
    except ValueError as exc:  # includes UnicodeDecodeError
        return _quarantine(body, "body is not JSON", {"_body": [str(exc)[:200]]})
    try:
        webhook = load_webhook(payload)
    except ValidationError as exc:
        return _quarantine(body, "not a usable reporting webhook", exc.normalized_messages())

    event_type = catalog.lookup(webhook["object_type"], webhook["metric"])
    name = f"{webhook['object_type']}_{webhook['metric']}"
    if event_type is None:
        return _ignored(webhook, name, "unknown event type")
    if not toggles(current_app).is_enabled(name):
        return _ignored(webhook, name, "event type turned off")

    outcome = event_store(current_app).accept(
        IncomingEvent(
            event_id=webhook["event_id"],
            event_type=name,
            delivery_id=mapping.delivery_id_of(webhook),
            routing_key=mapping.routing_key(webhook),
            body=_queued_body(body, webhook),
        )
    )
    counters.outcomes.labels(outcome=outcome.status).inc()
    log_extra = {"event_id": webhook["event_id"], "event": name, "outcome": outcome.status}
    if outcome.status == "queued":
        logger.info("webhook queued", extra=log_extra)
        return json_response(
            {"status": "queued", "event_id": webhook["event_id"], "event": name}, 202
        )
    if outcome.status == "suppressed":
        logger.info("webhook suppressed by %s", outcome.detail, extra=log_extra)
        return json_response(
            {"status": "suppressed", "event_id": webhook["event_id"], "event": name,
             "first_event_id": outcome.detail}, 200
        )
    logger.info("webhook duplicate", extra=log_extra)
    return json_response({"status": "duplicate", "event_id": webhook["event_id"]}, 200)


def _read_body(limit: int) -> bytes:
    """The raw body; 413 past ``limit``, with or without a Content-Length."""
    body = request.get_data(cache=False)  # a Content-Length over the limit: 413 here
    # A streamed (chunked) body is cut at the limit without an error, which would leave
    # a truncated body to check and queue: one byte more means it is too large.
    if (
        request.content_length is None
        and len(body) >= limit
        and request.environ["wsgi.input"].read(1)
    ):
        raise RequestEntityTooLarge()
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _queued_body(body: bytes, webhook: dict[str, Any]) -> str:
    """The text kept in the queue: the body as received, minus message content."""
    data = webhook["data"]
    if not any(field in data for field in _BULKY_FIELDS):
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:  # valid JSON in UTF-16/32: keep it as UTF-8 text
            pass
    trimmed = {key: value for key, value in data.items() if key not in _BULKY_FIELDS}
    return json.dumps({**webhook, "data": trimmed}, separators=(",", ":"))


def _ignored(webhook: dict[str, Any], name: str, reason: str) -> Response:
    metrics(current_app).outcomes.labels(outcome="ignored").inc()
    logger.info(
        "webhook ignored: %s", reason,
        extra={"event_id": webhook["event_id"], "event": name, "outcome": "ignored"},
    )
    return json_response(
        {"status": "ignored", "event_id": webhook["event_id"], "event": name, "reason": reason},
        200,
    )


def _quarantine(body: bytes, reason: str, details: dict[str, Any]) -> Response:
    entry_id = event_store(current_app).quarantine(body, reason, details)
    metrics(current_app).outcomes.labels(outcome="quarantined").inc()
    logger.warning(
        "webhook quarantined: %s", reason,
        extra={"outcome": "quarantined", "dead_letter": entry_id},
    )
    return json_response(
        {"status": "quarantined", "reason": reason, "details": details,
         "dead_letter_id": entry_id}, 202
    )
