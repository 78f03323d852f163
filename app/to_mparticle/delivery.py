"""Customer.io → mParticle as the relay's worker sees it: decode, pack, send, tell.

Plugs this direction into the direction-neutral worker (``app.relay.direction``):
queue entries are Customer.io webhooks as received; they become mParticle events
(``mapping``), batches and bulk requests (``batching``), sent by the mParticle client
or its dry-run stand-in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from marshmallow import ValidationError

from app.relay.direction import Answer, StateKeys, Unusable
from app.store import marks, queue_entry
from app.to_mparticle import catalog, mapping
from app.to_mparticle.batching import (
    BulkRequest,
    QueuedEvent,
    build_batches,
    pack_requests,
    split_request,
)
from app.to_mparticle.schema import load_webhook

NAME = "to_mparticle"


class ToMParticle:
    """The Customer.io → mParticle direction."""

    name = NAME
    destination = "mParticle"
    credentials_hint = "MPARTICLE_API_KEY / MPARTICLE_API_SECRET"
    too_large_reason = "event larger than an mParticle batch"
    refused_reason = "mParticle refused the batch"

    def __init__(
        self, client: Any, state_keys: StateKeys, *, environment: str, event_names: str,
        max_batch_bytes: int, max_batches_per_request: int, max_request_bytes: int,
    ) -> None:
        self.client = client
        self.state_keys = state_keys
        self._environment = environment
        self._event_style = event_names
        self._max_batch_bytes = max_batch_bytes
        self._max_batches = max_batches_per_request
        self._max_request_bytes = max_request_bytes

    def decode(self, entries: Sequence[Any]) -> tuple[list[QueuedEvent], list[Unusable]]:
        """Map queue entries to mParticle events; those that cannot be are unusable."""
        events: list[QueuedEvent] = []
        unusable: list[Unusable] = []
        for entry in entries:
            try:
                # The view's own check again: an entry written by anything else (a hand,
                # an older version) must become a dead letter, not stop the worker.
                body = queue_entry.unpack(entry.fields)
                webhook = load_webhook(json.loads(body))
            except (KeyError, TypeError, ValueError, ValidationError):
                placeholder = QueuedEvent(
                    entry.queue, entry.shard, entry.entry_id, "", "", {}, {},
                    raw=queue_entry.readable_body(entry.fields),
                )
                unusable.append(Unusable(placeholder, "queue entry is not a reporting webhook"))
                continue
            # Known or not: a type the catalog does not list is queued only when an admin
            # turned it on, and is named after itself (Title Case in the feed's style).
            event_type = catalog.event_type_of(webhook["object_type"], webhook["metric"])
            name = event_type.name
            identities = mapping.person_identities(webhook)
            event = QueuedEvent(
                queue=entry.queue, shard=entry.shard, entry_id=entry.entry_id,
                event_id=webhook["event_id"], event_type=name, identities=identities,
                event=mapping.map_event(webhook, event_type.event_name(self._event_style)),
                received_ms=entry.received_ms, raw=body,
            )
            if not identities:
                unusable.append(Unusable(event, "no customer_id or email identifies the person"))
                continue
            events.append(event)
        return events, unusable

    def pack(self, items: list[QueuedEvent]) -> tuple[list[BulkRequest], list[QueuedEvent]]:
        """Batches per person, bulk requests within mParticle's limits; and what fits none."""
        batches, too_large = build_batches(
            items, environment=self._environment, max_batch_bytes=self._max_batch_bytes
        )
        requests = pack_requests(
            batches, max_batches=self._max_batches, max_request_bytes=self._max_request_bytes
        )
        return requests, too_large

    def split(self, request: BulkRequest) -> tuple[BulkRequest, BulkRequest]:
        return split_request(request)

    def send(self, request: BulkRequest) -> Answer:
        result = self.client.send_bulk(request.body)
        return Answer(result.status, result.rate_limit_percent_used)

    def check_credentials(self) -> str:
        return self.client.check_credentials()

    def relayed_endings(
        self, request: BulkRequest, answer: Answer, attempt: int
    ) -> Iterable[tuple[QueuedEvent, str]]:
        """Each event's relayed story ends with mParticle's answer and its batch's id."""
        for batch in request.batches:
            ending = marks.relayed_ending(answer.status, batch.source_request_id, attempt)
            for event in batch.events:
                yield event, ending


    def log_fields(self, request: BulkRequest) -> dict[str, Any]:
        return {"source_request_ids": len({b.source_request_id for b in request.batches})}


def route(body: str) -> str:
    """The routing key (the person) of a queued Customer.io webhook; ValueError if unusable."""
    try:
        # As bytes: a body that is not UTF-8 (a letter written by hand) is refused.
        webhook = load_webhook(json.loads(body.encode("utf-8")))
    except ValidationError as exc:
        raise ValueError(str(exc)) from exc
    return mapping.routing_key(webhook)


def delivery_of(body: str) -> str | None:
    """The delivery a queued Customer.io webhook belongs to, if it names one."""
    payload = json.loads(body)
    data = payload.get("data") if isinstance(payload, dict) else None
    delivery = data.get("delivery_id") if isinstance(data, dict) else None
    return str(delivery) if delivery is not None else None
