"""POST /webhooks/mparticle/audiences: mParticle's audiences, as AWS Data Firehose posts them.

A Flask view in a Blueprint, registered only while ``MPARTICLE_AUDIENCE_ACCESS_KEY`` is
set (404 otherwise). Answered as AWS specifies: ``200 {"requestId", "timestamp"}`` once
every record is in Redis, anything else with ``{"requestId", "timestamp",
"errorMessage"}`` (Firehose retries it): 401 for an access key that is not the one set,
400 for an envelope that is not a Firehose delivery, 413 past
``[customerio] max_audience_body_bytes``, 503 while Redis cannot take it. A record
that does not decode is quarantined and the rest of the delivery is still taken; a
delivery taken already (by its request id) is answered 200 again, applied once.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any, NoReturn

from flask import Blueprint, Request, Response, current_app, g, request

from app import json_body
from app.extension import services
from app.store.audiences import PersonChanges
from app.store.redis_health import FULL_ERRORS, UNAVAILABLE_ERRORS
from app.to_customerio import audiences

if TYPE_CHECKING:
    from app.services import Services

logger = logging.getLogger(__name__)

AUDIENCES_PATH = "/webhooks/mparticle/audiences"
ACCESS_KEY_HEADER = "X-Amz-Firehose-Access-Key"
REQUEST_ID_HEADER = "X-Amz-Firehose-Request-Id"

blueprint = Blueprint("mparticle_audiences", __name__)


class Answer(Exception):
    """A finished answer: status, the error message (None: success), the log's fields."""

    def __init__(self, status: int, error: str | None, log: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.error = error
        self.log = log


@blueprint.post(AUDIENCES_PATH, provide_automatic_options=False)
def firehose_delivery() -> Response:
    """Authenticate, decode and apply one Firehose delivery of audience changes."""
    relay = services(current_app)
    counters = relay.metrics.to_customerio
    request_id = request.headers.get(REQUEST_ID_HEADER) or ""
    try:
        answer, request_id = receive_delivery(relay, request, request_id)
    except Answer as refusal:
        answer = refusal
    except UNAVAILABLE_ERRORS as exc:
        logger.error("redis unavailable: %s", exc.__class__.__name__)
        answer = Answer(503, "the queue (Redis) cannot be reached; retry later",
                        {"outcome": "refused", "reason": "redis_unavailable"})
    except FULL_ERRORS:
        logger.error("redis is full (maxmemory): the delivery was not taken")
        answer = Answer(503, "the queue (Redis) is full; retry later",
                        {"outcome": "refused", "reason": "redis_full"})
    except Exception:
        logger.exception("unexpected error")
        answer = Answer(500, "internal error", {"outcome": "refused", "reason": "error"})
    if answer.log.get("reason") in counters.rejected_for:
        counters.rejected_for[answer.log["reason"]].inc()
    payload: dict[str, Any] = {"requestId": request_id, "timestamp": int(time.time() * 1000)}
    if answer.error is not None:
        payload["errorMessage"] = answer.error
    _log_request(answer, request_id, g.request_id, g.request_started)
    return Response(json_body.encode_answer(payload), answer.status,
                    mimetype="application/json")


def receive_delivery(relay: Services, incoming: Request, request_id: str) -> tuple[Answer, str]:
    """Authenticate, decode and apply one delivery; the answer and the delivery's id."""
    _authenticate(incoming.headers.get(ACCESS_KEY_HEADER), relay)
    limit = relay.settings.customerio["max_audience_body_bytes"]
    body = _read_body(incoming, limit)
    try:
        delivery = audiences.parse_delivery(body, request_id or None,
                                            incoming.headers.get("Content-Encoding"),
                                            max_bytes=limit)
    except audiences.EnvelopeError as exc:
        raise Answer(400, f"not a Firehose delivery: {exc}",
                     {"outcome": "refused", "reason": "envelope"}) from None
    request_id = delivery.request_id
    log: dict[str, Any] = {"records": len(delivery.records)}
    people, quarantined, ignored = _people(relay, delivery)
    # One round trip: a retried delivery's changes are no newer than those applied, so
    # they change nothing, and the delivery's mark says it was taken before.
    applied = relay.audience_store.apply(request_id, people)
    log.update(outcome="duplicate" if applied.delivery_seen_before else "applied",
               people=len(people), quarantined=quarantined, ignored=ignored,
               changes_applied=sum(sum(flags) for flags in applied.applied),
               queued=sum(entry is not None for entry in applied.entries))
    return Answer(200, None, log), request_id


def _people(relay: Services, delivery: audiences.Delivery
            ) -> tuple[list[PersonChanges], int, int]:
    """The delivery's changes per person, in record order; records that do not decode are
    quarantined, people with no usable identity ignored."""
    options = relay.customerio_options
    changes: dict[str, list[audiences.Change]] = defaultdict(list)
    persons: dict[str, Any] = {}
    quarantined = ignored = 0
    for index, data in enumerate(delivery.records):
        try:
            change = audiences.decode_record(data)
        except audiences.RecordError as exc:
            relay.audience_events.quarantine(
                data.encode("utf-8", "replace"), "not an mParticle audience message",
                {"records": {str(index): [str(exc)[:200]]}, "requestId": [delivery.request_id]},
            )
            quarantined += 1
            continue
        person = audiences.person_for(change, options)
        if person is None:
            ignored += 1
            continue
        persons[person.routing_key] = (person, change.identities)
        changes[person.routing_key].append(change)
    people = []
    for routing_key, person_changes in changes.items():
        _person, identities = persons[routing_key]
        body = json_body.encode_answer({
            "identities": identities,
            "changed_at_ms": max(change.changed_at_ms for change in person_changes),
            "changes": [{"id": c.audience_id, "name": c.audience_name, "member": c.is_member}
                        for c in person_changes],
        }).decode("utf-8")
        people.append(PersonChanges(routing_key, body, [
            (c.audience_id, c.changed_at_ms, c.is_member, c.audience_name)
            for c in person_changes]))
    return people, quarantined, ignored


def _authenticate(given: str | None, relay: Services) -> None:
    """401 unless the header equals the configured access key (constant time)."""
    expected = relay.settings.secrets.audience_access_key.encode("utf-8")
    if not hmac.compare_digest((given or "").encode("utf-8", "replace"), expected):
        raise Answer(401, "the X-Amz-Firehose-Access-Key is missing or is not the one set",
                     {"outcome": "refused", "reason": "authorization"})


def _read_body(incoming: Request, limit: int) -> bytes:
    """The raw body; 413 past ``limit`` (read no further)."""
    try:
        return json_body.read_body(incoming, limit)
    except json_body.BodyTooLargeError:
        _too_large(limit)


def _too_large(limit: int) -> NoReturn:
    raise Answer(413, f"the body is over {limit} bytes ([customerio] max_audience_body_bytes)",
                 {"outcome": "refused", "reason": "body_too_large"})


def _log_request(answer: Answer, delivery_id: str, request_id: str, started: float) -> None:
    """One line per Firehose delivery: what became of it; never the access key."""
    level = (logging.ERROR if answer.status >= 500 else
             logging.WARNING if answer.status >= 400 or answer.log.get("quarantined")
             else logging.INFO)
    fields = {**answer.log, "status": answer.status, "firehose_request_id": delivery_id,
              "request_id": request_id, "direction": "to_customerio",
              "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    logger.log(level, "audience delivery %s", fields.get("outcome"), extra=fields)
