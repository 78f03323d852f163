"""POST /webhooks/customerio: authenticate the raw bytes, load, decide, store, answer.

Slow work (mapping, mParticle) is the worker's; this view does one Redis round trip
for an event it queues, and answers well within Customer.io's 4-second limit.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from marshmallow import ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from app import catalog, mapping
from app.errors import json_response
from app.services import services
from app.store import IncomingEvent
from app.webhooks.schemas import load_webhook, usable_event_id
from app.webhooks.signature import SignatureError, verify_signature

logger = logging.getLogger(__name__)

blueprint = Blueprint("webhooks", __name__)

WEBHOOK_PATH = "/webhooks/customerio"

# Keys of "sent" events that can carry a whole message body; not forwarded, not kept.
_BULKY_FIELDS = ("content", "headers")

# Customer.io's webhooks nest four levels deep. JSON nested far deeper is junk, and one
# nested near Python's recursion limit could be parsed here yet not by the worker (or
# not re-encoded here): it is quarantined instead.
MAX_JSON_DEPTH = 64

# Why a webhook request was refused, for its log line, when the view did not say.
_REFUSALS = {
    405: "method_not_allowed",
    413: "body_too_large",
    503: "redis_unavailable",
}


@blueprint.post(WEBHOOK_PATH)
def receive_customerio_webhook() -> Response:
    """Verify, validate and queue one Customer.io reporting webhook."""
    relay = services(current_app)
    config = relay.settings.webhook
    counters = relay.metrics
    counters.received.inc()
    body = _read_body(config["max_body_bytes"])
    if config["require_signature"]:
        environ = request.environ
        try:
            verify_signature(
                body,
                environ.get("HTTP_X_CIO_TIMESTAMP"),
                environ.get("HTTP_X_CIO_SIGNATURE"),
                relay.settings.secrets.signing_keys,
                tolerance_seconds=config["timestamp_tolerance_seconds"],
                now=time.time(),
            )
        except SignatureError as exc:
            counters.rejected_for["signature"].inc()
            g.webhook_log = {"outcome": "refused", "reason": "signature", "details": str(exc)}
            return json_response({"error": "invalid signature", "details": str(exc)}, 401)

    try:
        payload = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # ValueError includes UnicodeDecodeError
        return _quarantine(relay, body, "body is not JSON", {"_body": [str(exc)[:200]]})
    # Counting brackets is a C-speed scan that rules out deep nesting for nearly every body.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _nested_too_deep(payload):
        return _quarantine(relay, body, "body is nested too deep",
                           {"_body": [f"JSON nested deeper than {MAX_JSON_DEPTH} levels"]})
    try:
        webhook = load_webhook(payload)
    except ValidationError as exc:
        return _quarantine(
            relay, body, "not a usable reporting webhook", exc.normalized_messages(), payload
        )

    event_id = webhook["event_id"]
    name = f"{webhook['object_type']}_{webhook['metric']}"
    log = g.webhook_log = {"event_id": event_id, "event": name}
    if catalog.lookup(webhook["object_type"], webhook["metric"]) is None:
        return _ignored(relay, webhook, name, log, "unknown event type")
    if not relay.toggles.is_enabled(name):
        return _ignored(relay, webhook, name, log, "event type turned off")

    outcome = relay.event_store.accept(
        IncomingEvent(
            event_id=event_id,
            event_type=name,
            delivery_id=mapping.delivery_id_of(webhook),
            routing_key=mapping.routing_key(webhook),
            body=_queued_body(body, webhook),
        )
    )
    status = outcome.status
    counters.outcome[status].inc()
    log["outcome"] = status
    if status == "queued":
        return json_response({"status": "queued", "event_id": event_id, "event": name}, 202)
    if status == "suppressed":
        log["first_event_id"] = outcome.detail
        return json_response(
            {"status": "suppressed", "event_id": event_id, "event": name,
             "first_event_id": outcome.detail}, 200
        )
    return json_response({"status": "duplicate", "event_id": event_id}, 200)


@blueprint.after_app_request
def log_webhook_request(response: Response) -> Response:
    """One JSON line per webhook request: who, what became of it, status, latency.

    Runs for the view's answers and for the errors answered around it (405, 413, 503),
    so every request to the endpoint has its line. Never a header: the signature stays
    out of the logs.
    """
    if request.path != WEBHOOK_PATH:
        return response
    status = response.status_code
    fields: dict[str, Any] = g.pop("webhook_log", None) or {}
    if "outcome" not in fields:
        fields["outcome"] = "refused"
        fields["reason"] = _REFUSALS.get(status, "error")
        if status == 413:
            services(current_app).metrics.rejected_for["body_too_large"].inc()
    fields["status"] = status
    fields["request_id"] = g.get("request_id")
    started = g.get("request_started")
    if started is not None:
        fields["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    if status >= 500:
        level = logging.ERROR
    elif status >= 400 or fields["outcome"] == "quarantined":
        level = logging.WARNING
    else:
        level = logging.INFO
    if logger.isEnabledFor(level):
        # logger.log() would also walk the stack for a source line nobody reads here:
        # a tenth of this line's cost, on every request.
        logger.handle(logger.makeRecord(
            logger.name, level, __file__, 0, "webhook %s", (fields["outcome"],), None,
            func="receive_customerio_webhook", extra=fields,
        ))
    return response


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


def _nested_too_deep(payload: Any) -> bool:
    """Whether lists and objects nest deeper than MAX_JSON_DEPTH (without recursing)."""
    pending = [(payload, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > MAX_JSON_DEPTH:
            return True
        pending.extend((child, depth + 1) for child in value)
    return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _queued_body(body: bytes, webhook: dict[str, Any]) -> str:
    """The text kept in the queue: the body as received, minus message content."""
    data = webhook["data"]
    if "content" not in data and "headers" not in data:  # _BULKY_FIELDS, unrolled
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:  # valid JSON in UTF-16/32: keep it as UTF-8 text
            pass
    trimmed = {key: value for key, value in data.items() if key not in _BULKY_FIELDS}
    return json.dumps({**webhook, "data": trimmed}, separators=(",", ":"))


def _ignored(
    relay: Any, webhook: dict[str, Any], name: str, log: dict[str, Any], reason: str
) -> Response:
    # Its story says why (for support's "where is event X"); nothing is queued.
    relay.event_store.note_ignored(log["event_id"], name, mapping.routing_key(webhook), reason)
    relay.metrics.outcome["ignored"].inc()
    log["outcome"] = "ignored"
    log["reason"] = reason
    return json_response(
        {"status": "ignored", "event_id": log["event_id"], "event": log["event"],
         "reason": reason}, 200,
    )


def _quarantine(
    relay: Any, body: bytes, reason: str, details: dict[str, Any], payload: Any = None
) -> Response:
    entry_id = relay.event_store.quarantine(
        body, reason, details, event_id=usable_event_id(payload)
    )
    relay.metrics.outcome["quarantined"].inc()
    g.webhook_log = {"outcome": "quarantined", "reason": reason, "dead_letter": entry_id}
    return json_response(
        {"status": "quarantined", "reason": reason, "details": details,
         "dead_letter_id": entry_id}, 202
    )
