"""mParticle → Customer.io as the relay's worker sees it: decode, pack, send, tell.

A queue entry is one mParticle batch holding only its accepted events. It becomes
Customer.io Track API items (``mapping.items_for_batch``: the identify first, then one
item per forwarded event), each the worker's unit, packed in order into
``POST /api/v2/batch`` requests within Customer.io's limits. An entry is acked with its
last item, so a worker that dies between two requests of one entry sends it again
(Customer.io keeps one event per id, and an identify twice changes nothing).

A 207 names the refused items: each becomes a dead letter (a batch of its one event,
ready to replay) and the rest are done.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from marshmallow import ValidationError

from app.relay.direction import Answer, StateKeys, Unusable
from app.store import queue_entry
from app.to_customerio import mapping, ulid
from app.to_customerio.schema import load_batch

NAME = "to_customerio"

_EMPTY_REQUEST = len(b'{"batch":[]}')


def encode(value: Any) -> bytes:
    """Compact JSON, as sent on the wire."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def batch_text(header: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """A batch's JSON with exactly these events (what a queue entry or a letter keeps)."""
    return json.dumps({**header, "events": events}, separators=(",", ":"), ensure_ascii=False)


@dataclass(slots=True)
class TrackItem:
    """One Customer.io item: where it came from (to ack and tell), and its bytes."""

    queue: str
    shard: int
    entry_id: str
    received_ms: int | None
    encoded: bytes
    raw: str  # a batch of this item's event alone (or none: the identify), to replay
    event_id: str = ""  # the event's idempotency key; "" for a batch's identify
    event_type: str = "identify"
    completes_entry: bool = True  # the entry's last item: it is acked with this one


@dataclass(slots=True)
class TrackRequest:
    """One POST /api/v2/batch: its items and its exact body."""

    events: list[TrackItem]
    body: bytes

    @property
    def batch_count(self) -> int:
        return len(self.events)


def make_request(items: list[TrackItem]) -> TrackRequest:
    """The request that sends exactly these items, in this order."""
    return TrackRequest(items, b'{"batch":[' + b",".join(i.encoded for i in items) + b"]}")


class ToCustomerIO:
    """The mParticle → Customer.io direction."""

    name = NAME
    destination = "Customer.io"
    credentials_hint = "CUSTOMERIO_SITE_ID / CUSTOMERIO_API_KEY"
    too_large_reason = "item larger than Customer.io takes"
    refused_reason = "Customer.io refused the item"

    def __init__(
        self, client: Any, state_keys: StateKeys, options: mapping.MappingOptions, *,
        max_items_per_request: int, max_request_bytes: int, max_item_bytes: int,
    ) -> None:
        self.client = client
        self.state_keys = state_keys
        self.options = options
        self._max_items = max_items_per_request
        self._max_request_bytes = max_request_bytes
        self._max_item_bytes = max_item_bytes

    def decode(self, entries: Sequence[Any]) -> tuple[list[TrackItem], list[Unusable]]:
        """Map queue entries to Customer.io items; those that cannot be are unusable."""
        items: list[TrackItem] = []
        unusable: list[Unusable] = []
        for entry in entries:
            try:
                # The receiver's own checks again: an entry written by anything else (a
                # hand, an older version) must become a dead letter, not stop the worker.
                body = queue_entry.unpack(entry.fields)
                payload = json.loads(body)
                batch = load_batch(payload)
            except (KeyError, TypeError, ValueError, ValidationError):
                unusable.append(Unusable(self._whole_entry(
                    entry, queue_entry.readable_body(entry.fields)),
                    "queue entry is not an mParticle batch"))
                continue
            mapped = self._items(entry, payload, batch)
            if not mapped:
                unusable.append(Unusable(self._whole_entry(entry, body),
                                         "nothing to send: no usable identity"))
                continue
            items += mapped
        return items, unusable

    def _items(self, entry: Any, payload: dict[str, Any], batch: dict[str, Any]
               ) -> list[TrackItem]:
        header = {name: value for name, value in payload.items() if name != "events"}
        forwarded = [event for event in batch["events"]
                     if mapping.classify(event, self.options)[0] == "forward"]
        mapped = mapping.items_for_batch(batch, forwarded, self.options)
        if not mapped:  # no usable person (user_id_type changed since it was received)
            return []
        # One item per forwarded event, after the identify when there is one.
        lead = len(mapped) - len(forwarded)
        sources: list[dict[str, Any] | None] = [None] * lead + list(forwarded)
        items = []
        for item, event in zip(mapped, sources, strict=True):
            items.append(TrackItem(
                entry.queue, entry.shard, entry.entry_id, entry.received_ms, encode(item),
                batch_text(header, [event] if event is not None else []),
                event_id=(ulid.story_id(mapping.idempotency_key(batch, event))
                          if event is not None else ""),
                event_type=str(event.get("event_type", "")) if event is not None
                else "identify",
                completes_entry=False,
            ))
        if items:
            items[-1].completes_entry = True
        return items

    @staticmethod
    def _whole_entry(entry: Any, raw: str) -> TrackItem:
        return TrackItem(entry.queue, entry.shard, entry.entry_id, entry.received_ms, b"", raw,
                         event_type="batch")

    def pack(self, items: list[TrackItem]) -> tuple[list[TrackRequest], list[TrackItem]]:
        """Requests within Customer.io's limits, in order; and the items too large for any."""
        too_large = [item for item in items if len(item.encoded) > self._max_item_bytes]
        requests: list[TrackRequest] = []
        current: list[TrackItem] = []
        size = _EMPTY_REQUEST
        for item in items:
            if len(item.encoded) > self._max_item_bytes:
                continue
            added = len(item.encoded) + (1 if current else 0)
            if current and (len(current) >= self._max_items
                            or size + added > self._max_request_bytes):
                requests.append(make_request(current))
                current, size, added = [], _EMPTY_REQUEST, len(item.encoded)
            current.append(item)
            size += added
        if current:
            requests.append(make_request(current))
        return requests, too_large

    def split(self, request: TrackRequest) -> tuple[TrackRequest, TrackRequest]:
        """Halve a refused request to find the item Customer.io objects to."""
        middle = len(request.events) // 2
        return make_request(request.events[:middle]), make_request(request.events[middle:])

    def send(self, request: TrackRequest) -> Answer:
        """Send the request as packed; a 207's refused items come back with their reasons."""
        result = self.client.send_batch(request.body)
        refused = [(request.events[index], reason)
                   for index, reason in sorted(result.item_errors.items())
                   if 0 <= index < len(request.events)]
        return Answer(result.status, None, refused=refused)

    def check_credentials(self) -> str:
        return self.client.check_credentials()

    def relayed_endings(
        self, request: TrackRequest, answer: Answer, attempt: int
    ) -> Iterable[tuple[TrackItem, str]]:
        """Each sent event's story ends with Customer.io's answer (and attempts past one)."""
        refused = {id(item) for item, _ in answer.refused}
        ending = str(answer.status) + (f"||{attempt}" if attempt > 1 else "")
        for item in request.events:
            if item.event_id and id(item) not in refused:
                yield item, ending

    def log_fields(self, request: TrackRequest) -> dict[str, Any]:
        return {"entries": len({(item.queue, item.entry_id) for item in request.events})}


def route(options: mapping.MappingOptions, body: str) -> str:
    """The routing key (the person) of a queued mParticle batch; ValueError if unusable."""
    try:
        batch = load_batch(json.loads(body.encode("utf-8")))
    except ValidationError as exc:
        raise ValueError(str(exc)) from exc
    person = mapping.person_of(batch, options)
    if person is None:
        raise ValueError("no customer_id or email identifies the person")
    return person.routing_key
