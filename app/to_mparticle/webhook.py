"""POST /webhooks/customerio: authenticate the raw bytes, load, decide, store, answer.

A Flask view in a Blueprint. Slow work (mapping, mParticle) is the worker's: this
route makes one Redis round trip for an event it queues (a registered redis-py
script), and answers well within Customer.io's 4 seconds. Flask answers 405 (a method
other than POST, OPTIONS included) and 413 (a body over ``[webhook] max_body_bytes``,
with or without a Content-Length) before any of our work.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, NoReturn

from flask import Blueprint, Request, Response, current_app, g, request
from marshmallow import ValidationError

from app import json_body
from app.errors import INTERNAL_ERROR, REDIS_FULL, REDIS_UNAVAILABLE
from app.extension import services
from app.store.events import ClockSkewError, IncomingEvent
from app.store.redis_health import FULL_ERRORS, UNAVAILABLE_ERRORS
from app.to_mparticle import catalog, mapping
from app.to_mparticle.schema import load_webhook, usable_event_id
from app.to_mparticle.signature import SignatureError, StaleTimestampError, verify_signature

if TYPE_CHECKING:
    from app.services import Services

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/customerio"

blueprint = Blueprint("customerio_webhook", __name__)

# Keys of "sent" events that can carry a whole message body; not forwarded, not kept.
_BULKY_FIELDS = ("content", "headers")

class Answer(Exception):
    """A finished answer: status, JSON payload and the log line's fields.

    Raised where the route stops early (a refusal), returned where it ends normally.
    """

    def __init__(self, status: int, payload: dict[str, Any], log: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.payload = payload
        self.log = log


@blueprint.post(WEBHOOK_PATH, provide_automatic_options=False)
def customerio_webhook() -> Response:
    """Verify, validate and queue one Customer.io reporting webhook."""
    relay = services(current_app)
    try:
        answer = receive_webhook(relay, request)
    except Answer as refusal:
        answer = refusal
    except UNAVAILABLE_ERRORS as exc:
        logger.error("redis unavailable: %s", exc.__class__.__name__)
        relay.metrics.rejected_for["redis_unavailable"].inc()
        answer = Answer(503, REDIS_UNAVAILABLE,
                        {"outcome": "refused", "reason": "redis_unavailable"})
    except FULL_ERRORS:
        # Nothing was written (the script's first write is refused); Customer.io retries.
        logger.error("redis is full (maxmemory): the event was not taken")
        relay.metrics.rejected_for["redis_full"].inc()
        answer = Answer(503, REDIS_FULL, {"outcome": "refused", "reason": "redis_full"})
    except ClockSkewError as exc:
        # Nothing was written; Customer.io retries a 503, and the clocks need fixing.
        logger.error("refused to write a dedup mark: %s; check the clocks (NTP)", exc)
        answer = Answer(
            503, {"error": "service unavailable", "details": "this server's clock and "
                  "the queue's (Redis) are too far apart; retry later"},
            {"outcome": "refused", "reason": "clock_skew"},
        )
    except Exception:
        logger.exception("unexpected error")
        answer = Answer(500, INTERNAL_ERROR, {"outcome": "refused", "reason": "error"})
    _log_request(answer, g.request_id, g.request_started)
    return Response(json_body.encode_answer(answer.payload), answer.status,
                    mimetype="application/json")


def receive_webhook(relay: Services, incoming: Request) -> Answer:
    """Verify, validate and queue one Customer.io reporting webhook."""
    config = relay.settings.webhook
    counters = relay.metrics
    counters.received.inc()
    body = _read_body(incoming, config["max_body_bytes"], relay)
    if config["require_signature"]:
        headers = incoming.headers
        try:
            verify_signature(
                body,
                headers.get("X-CIO-Timestamp"),
                headers.get("X-CIO-Signature"),
                relay.settings.secrets.signing_keys,
                tolerance_seconds=config["timestamp_tolerance_seconds"],
                now=time.time(),
            )
        except SignatureError as exc:
            log: dict[str, Any] = {"outcome": "refused", "reason": "signature",
                                   "details": str(exc)}
            if isinstance(exc, StaleTimestampError):
                log["reason"] = "stale_timestamp"
                log["timestamp_age_seconds"] = round(exc.age_seconds, 1)
            counters.rejected_for[log["reason"]].inc()
            raise Answer(401, {"error": "invalid signature", "details": str(exc)}, log) from None

    try:
        payload = json_body.parse_json(body)
    except (ValueError, RecursionError) as exc:  # ValueError includes UnicodeDecodeError
        return _quarantine(relay, body, "body is not JSON", {"_body": [str(exc)[:200]]})
    if json_body.too_deep(body, payload):
        depth = json_body.MAX_JSON_DEPTH
        return _quarantine(relay, body, "body is nested too deep",
                           {"_body": [f"JSON nested deeper than {depth} levels"]})
    try:
        webhook = load_webhook(payload)
    except ValidationError as exc:
        return _quarantine(
            relay, body, "not a usable reporting webhook", exc.normalized_messages(), payload
        )

    event_id = webhook["event_id"]
    name = f"{webhook['object_type']}_{webhook['metric']}"
    log = {"event_id": event_id, "event": name}
    # One cached read decides, known type or not: a type the catalog does not list is
    # forwarded only when an admin turned it on (its override is in the same cache).
    if not relay.toggles.is_enabled(name):
        known = catalog.lookup(webhook["object_type"], webhook["metric"]) is not None
        reason = "event type turned off" if known else "unknown event type"
        return _ignored(relay, webhook, name, log, reason)

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
        return Answer(202, {"status": "queued", "event_id": event_id, "event": name}, log)
    if status == "suppressed":
        log["first_event_id"] = outcome.detail
        return Answer(200, {"status": "suppressed", "event_id": event_id, "event": name,
                            "first_event_id": outcome.detail}, log)
    return Answer(200, {"status": "duplicate", "event_id": event_id}, log)


def _log_request(answer: Answer, request_id: str, started: float) -> None:
    """One JSON line per webhook request: what became of it, status, latency.

    Never a header: the signature stays out of the logs.
    """
    status = answer.status
    fields = answer.log
    if status >= 500:
        level = logging.ERROR
    elif status >= 400 or fields["outcome"] == "quarantined":
        level = logging.WARNING
    else:
        level = logging.INFO
    if not logger.isEnabledFor(level):
        return
    fields["status"] = status
    fields["request_id"] = request_id
    fields["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    # logger.log() would also walk the stack for a source line nobody reads here:
    # a tenth of this line's cost, on every request.
    logger.handle(logger.makeRecord(
        logger.name, level, __file__, 0, "webhook %s", (fields["outcome"],), None,
        func="receive_webhook", extra=fields,
    ))


def _read_body(incoming: Request, limit: int, relay: Services) -> bytes:
    """The raw body; 413 past ``limit`` (read no further)."""
    try:
        return json_body.read_body(incoming, limit)
    except json_body.BodyTooLargeError:
        _too_large(relay, limit)


def _too_large(relay: Services, limit: int) -> NoReturn:
    relay.metrics.rejected_for["body_too_large"].inc()
    raise Answer(
        413, {"error": "request entity too large",
              "details": f"the body is over {limit} bytes ([webhook] max_body_bytes)"},
        {"outcome": "refused", "reason": "body_too_large"},
    )


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
    relay: Services, webhook: dict[str, Any], name: str, log: dict[str, Any], reason: str
) -> Answer:
    # Its story says why (for support's "where is event X"); nothing is queued. Only a
    # note: a full Redis that refuses it does not change the answer.
    try:
        relay.event_store.note_ignored(
            log["event_id"], name, mapping.routing_key(webhook), reason
        )
    except FULL_ERRORS:
        log["note"] = "not kept: redis is full"
    relay.metrics.outcome["ignored"].inc()
    log["outcome"] = "ignored"
    log["reason"] = reason
    return Answer(200, {"status": "ignored", "event_id": log["event_id"],
                        "event": log["event"], "reason": reason}, log)


def _quarantine(
    relay: Services, body: bytes, reason: str, details: dict[str, Any], payload: Any = None
) -> Answer:
    entry_id = relay.event_store.quarantine(
        body, reason, details, event_id=usable_event_id(payload)
    )
    relay.metrics.outcome["quarantined"].inc()
    return Answer(
        202, {"status": "quarantined", "reason": reason, "details": details,
              "dead_letter_id": entry_id},
        {"outcome": "quarantined", "reason": reason, "dead_letter": entry_id},
    )
