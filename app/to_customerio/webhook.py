"""POST /webhooks/mparticle: mParticle's Webhook output, authenticated, loaded, queued.

A Flask view in a Blueprint, registered only while ``MPARTICLE_WEBHOOK_AUTHORIZATION``
is set (404 otherwise). In this order: a method other than POST, 405 (Flask); an
``Authorization`` value that is not one configured, 401, before the body is read; a
body over ``[customerio] max_body_bytes``, 413; Redis unreachable, 503 (mParticle
retries 5xx, never 4xx). What is authenticated but unusable is quarantined (202), and
one unusable event is quarantined on its own while the rest of its batch is taken.
The batch's new events are queued in one round trip (``BatchStore.accept``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import TYPE_CHECKING, Any, NoReturn

from flask import Blueprint, Request, Response, current_app, g, request
from marshmallow import ValidationError

from app import json_body
from app.errors import INTERNAL_ERROR, REDIS_FULL, REDIS_UNAVAILABLE
from app.extension import services
from app.store.batches import BatchEvent
from app.store.events import ClockSkewError
from app.store.redis_health import FULL_ERRORS, UNAVAILABLE_ERRORS
from app.to_customerio import mapping, ulid
from app.to_customerio.schema import event_problem, load_batch

if TYPE_CHECKING:
    from app.services import Services

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/mparticle"

blueprint = Blueprint("mparticle_webhook", __name__)


class Answer(Exception):
    """A finished answer: status, JSON payload and the log line's fields."""

    def __init__(self, status: int, payload: dict[str, Any], log: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.payload = payload
        self.log = log


@blueprint.post(WEBHOOK_PATH, provide_automatic_options=False)
def mparticle_webhook() -> Response:
    """Authenticate, validate and queue one POST of mParticle's Webhook output."""
    relay = services(current_app)
    counters = relay.metrics.to_customerio
    counters.received.inc()
    try:
        answer = receive_batch(relay, request)
    except Answer as refusal:
        answer = refusal
    except UNAVAILABLE_ERRORS as exc:
        logger.error("redis unavailable: %s", exc.__class__.__name__)
        answer = Answer(503, REDIS_UNAVAILABLE,
                        {"outcome": "refused", "reason": "redis_unavailable"})
    except FULL_ERRORS:
        logger.error("redis is full (maxmemory): the batch was not taken")
        answer = Answer(503, REDIS_FULL, {"outcome": "refused", "reason": "redis_full"})
    except ClockSkewError as exc:
        logger.error("refused to write a dedup mark: %s; check the clocks (NTP)", exc)
        answer = Answer(503, {"error": "service unavailable", "details": "this server's clock "
                              "and the queue's (Redis) are too far apart; retry later"},
                        {"outcome": "refused", "reason": "clock_skew"})
    except Exception:
        logger.exception("unexpected error")
        answer = Answer(500, INTERNAL_ERROR, {"outcome": "refused", "reason": "error"})
    _count(counters, answer)
    _log_request(answer, g.request_id, g.request_started)
    return Response(json_body.encode_answer(answer.payload), answer.status,
                    mimetype="application/json")


def _count(counters: Any, answer: Answer) -> None:
    """One count per POST: its outcome, or why it was refused."""
    outcome = answer.log.get("outcome")
    if outcome in counters.outcome:
        counters.outcome[outcome].inc()
    elif answer.log.get("reason") in counters.rejected_for:
        counters.rejected_for[answer.log["reason"]].inc()


def receive_batch(relay: Services, incoming: Request) -> Answer:
    """Authenticate, validate and queue one mParticle batch."""
    _authenticate(incoming.headers.get("Authorization"), relay)
    body = _read_body(incoming, relay.settings.customerio["max_body_bytes"])
    try:
        payload = json_body.parse_json(body)
    except (ValueError, RecursionError) as exc:
        return _quarantine(relay, body, "body is not JSON", {"_body": [str(exc)[:200]]})
    if json_body.too_deep(body, payload):
        return _quarantine(relay, body, "body is nested too deep", {"_body": [
            f"JSON nested deeper than {json_body.MAX_JSON_DEPTH} levels"]})
    try:
        batch = load_batch(payload)
    except ValidationError as exc:
        return _quarantine(relay, body, "not a usable mParticle batch", exc.normalized_messages())

    options = relay.customerio_options
    person = mapping.person_of(batch, options)
    log: dict[str, Any] = {"mpid": batch.get("mpid"), "events": len(batch["events"])}
    if person is None:
        return _ignored(log, "no usable identity (customer id or email) under "
                             f"[customerio] user_id_type = {options.user_id_type}")
    header = {name: value for name, value in payload.items() if name != "events"}
    accepted, counts = _sort_events(relay, header, batch, options)
    send_without_events = bool(mapping.items_for_batch(batch, [], options))
    if not accepted and not send_without_events:
        if counts["quarantined"]:
            return _answer_counts(202, "quarantined", counts, log)
        return _ignored(log, "no event to forward and no attribute to set")

    outcome = relay.batch_store.accept(
        routing_key=person.routing_key, batch_key=_batch_key(batch, body),
        events=[event for event, _ in accepted], head=_head(header), tail="]}",
        send_without_events=send_without_events,
    )
    for status in outcome.statuses:
        counts[status] += 1
    counts["duplicate"] += counts.pop("repeated")
    if outcome.entry_id:
        log["queue_entry"] = outcome.entry_id
        return _answer_counts(202, "queued", counts, log)
    if counts["duplicate"] or outcome.batch_seen_before:
        log["outcome"] = "duplicate"
        return Answer(200, {"status": "duplicate"}, log)
    return _ignored(log, "nothing new to send")


def _authenticate(given: str | None, relay: Services) -> None:
    """401 unless the header equals a configured value (constant time, every value tried)."""
    offered = (given or "").encode("utf-8", "replace")
    matched = False
    for value in relay.settings.secrets.mparticle_webhook_authorizations:
        matched |= hmac.compare_digest(offered, value.encode("utf-8"))
    if not matched:
        raise Answer(401, {"error": "unauthorized", "details": "the Authorization header is "
                           "missing or is not the one set in mParticle's Webhook output"},
                     {"outcome": "refused", "reason": "authorization"})


def _read_body(incoming: Request, limit: int) -> bytes:
    """The raw body; 413 past ``limit`` (read no further)."""
    try:
        return json_body.read_body(incoming, limit)
    except json_body.BodyTooLargeError:
        _too_large(limit)


def _too_large(limit: int) -> NoReturn:
    raise Answer(413, {"error": "request entity too large", "details":
                       f"the body is over {limit} bytes ([customerio] max_body_bytes)"},
                 {"outcome": "refused", "reason": "body_too_large"})


def _sort_events(
    relay: Services, header: dict[str, Any], batch: dict[str, Any],
    options: mapping.MappingOptions,
) -> tuple[list[tuple[BatchEvent, dict[str, Any]]], dict[str, int]]:
    """The batch's forwardable events, once per key; the others counted (and quarantined)."""
    counts = {"queued": 0, "duplicate": 0, "ignored": 0, "quarantined": 0, "repeated": 0}
    accepted: list[tuple[BatchEvent, dict[str, Any]]] = []
    seen: set[str] = set()
    for event in batch["events"]:
        problem = event_problem(event)
        if problem:
            relay.customerio_events.quarantine(
                json_body.encode_answer({**header, "events": [event]}), problem,
                {"events": [problem]},
            )
            counts["quarantined"] += 1
            continue
        verdict, _reason = mapping.classify(event, options)
        if verdict != "forward":
            counts["ignored"] += 1
            continue
        # The mark goes by the story id (from the key), so support finds it by either the
        # key or the ULID sent to Customer.io.
        key = ulid.story_id(mapping.idempotency_key(batch, event))
        if key in seen:  # the same event twice in one POST: taken once
            counts["repeated"] += 1
            continue
        seen.add(key)
        text = json_body.encode_answer(event).decode("utf-8")
        accepted.append((BatchEvent(key, str(event.get("event_type", "")), text), event))
    return accepted, counts


def _batch_key(batch: dict[str, Any], body: bytes) -> str:
    """A batch's own idempotency key: mParticle's ids, else a hash of the body."""
    for name in ("message_id", "batch_id"):
        value = batch.get(name)
        if value not in (None, ""):
            text = str(value)
            if text.isascii() and len(text) <= 200:
                return f"batch:{name}:{text}"
            # Anything else (very long, or text Redis cannot take, e.g. a lone surrogate)
            # by its hash: the same id still makes the same key.
            digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
            return f"batch:{name}:sha256:{digest}"
    return "batch:sha256:" + hashlib.sha256(body).hexdigest()[:32]


def _head(header: dict[str, Any]) -> str:
    """The queue entry's text before its events: the batch's other fields, then events."""
    text = json_body.encode_answer(header).decode("utf-8")
    return (text[:-1] + "," if len(header) else "{") + '"events":['


def _answer_counts(status: int, word: str, counts: dict[str, int],
                   log: dict[str, Any]) -> Answer:
    log.update(counts, outcome=word)
    return Answer(status, {"status": word, **{name: counts[name] for name in
                                              ("queued", "duplicate", "ignored", "quarantined")}},
                  log)


def _ignored(log: dict[str, Any], reason: str) -> Answer:
    log.update(outcome="ignored", reason=reason)
    return Answer(200, {"status": "ignored", "reason": reason}, log)


def _quarantine(relay: Services, body: bytes, reason: str, details: dict[str, Any]) -> Answer:
    entry_id = relay.customerio_events.quarantine(body, reason, details)
    return Answer(202, {"status": "quarantined", "reason": reason, "details": details,
                        "dead_letter_id": entry_id},
                  {"outcome": "quarantined", "reason": reason, "dead_letter": entry_id})


def _log_request(answer: Answer, request_id: str, started: float) -> None:
    """One JSON line per mParticle POST: what became of it, status, latency; no header."""
    status = answer.status
    fields = answer.log
    if status >= 500:
        level = logging.ERROR
    elif status >= 400 or fields.get("outcome") == "quarantined":
        level = logging.WARNING
    else:
        level = logging.INFO
    fields.update(status=status, request_id=request_id, direction="to_customerio",
                  latency_ms=round((time.perf_counter() - started) * 1000, 2))
    logger.log(level, "mparticle batch %s", fields.get("outcome"), extra=fields)
