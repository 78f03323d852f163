"""Group mapped events into mParticle batches and requests, within mParticle's limits.

One person per batch, at most ``max_batch_bytes`` per batch; at most
``max_batches`` batches and ``max_request_bytes`` per POST /bulkevents. Each batch is
encoded once, here, so a retried request is byte-identical, and its
``source_request_id`` is derived from its content, so it is the same on every retry.
Pure: no Flask, no Redis, no I/O.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

BATCH_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://customer.io/reporting-webhooks/batch")


def encode(value: Any) -> bytes:
    """Compact JSON, as sent on the wire."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(slots=True)
class QueuedEvent:
    """A queue entry mapped for mParticle, and where it came from so it can be acked."""

    queue: str
    shard: int
    entry_id: str
    event_id: str
    event_type: str
    identities: dict[str, str]
    event: dict[str, Any]
    received_ms: int | None = None
    raw: str = ""  # the Customer.io webhook as queued, kept for dead letters and replay
    encoded: bytes = field(init=False, default=b"")

    def __post_init__(self) -> None:
        self.encoded = encode(self.event)

    @property
    def person(self) -> tuple[str, str]:
        return (self.identities.get("customer_id", ""), self.identities.get("email", ""))


@dataclass(slots=True)
class Batch:
    """One person's events as one mParticle batch, encoded."""

    events: list[QueuedEvent]
    source_request_id: str
    encoded: bytes


@dataclass(slots=True)
class BulkRequest:
    """One POST /bulkevents: its batches and its exact body."""

    batches: list[Batch]
    body: bytes

    @property
    def events(self) -> list[QueuedEvent]:
        return [event for batch in self.batches for event in batch.events]

    @property
    def batch_count(self) -> int:
        return len(self.batches)


class EventTooLargeError(ValueError):
    """A single event does not fit in a batch on its own."""


def _batch_header(environment: str, identities: dict[str, str]) -> tuple[bytes, bytes]:
    """A batch's JSON up to its source_request_id, and from there to its first event.

    Encoded once per person, the same bytes json.dumps gives for the whole header
    (``{"environment":…,"source_request_id":"…","user_identities":{…},"events":[``).
    """
    return (
        b'{"environment":' + encode(environment) + b',"source_request_id":"',
        b'","user_identities":' + encode(identities) + b',"events":[',
    )


def _finish_batch(events: list[QueuedEvent], header: tuple[bytes, bytes]) -> Batch:
    # The ids as a JSON list, not joined by a separator an event_id could itself contain
    # (["a,b"] and ["a", "b"] must not share an id); ASCII, so any id can be hashed.
    source_request_id = str(
        uuid.uuid5(BATCH_NAMESPACE, json.dumps([event.event_id for event in events]))
    )
    before_id, after_id = header
    encoded = (before_id + source_request_id.encode("ascii") + after_id
               + b",".join(event.encoded for event in events) + b"]}")
    return Batch(events=events, source_request_id=source_request_id, encoded=encoded)


def build_batches(
    events: list[QueuedEvent], *, environment: str, max_batch_bytes: int
) -> tuple[list[Batch], list[QueuedEvent]]:
    """One or more batches per person, in arrival order; also the events too large to send."""
    by_person: dict[tuple[str, str], list[QueuedEvent]] = {}
    for event in events:
        by_person.setdefault(event.person, []).append(event)
    # A UUID is 36 characters whatever it is, so the header's size is known before it.
    batches: list[Batch] = []
    too_large: list[QueuedEvent] = []
    for person_events in by_person.values():
        header = _batch_header(environment, person_events[0].identities)
        header_size = len(header[0]) + 36 + len(header[1]) + 2  # the UUID, "]}"
        current: list[QueuedEvent] = []
        size = header_size
        for event in person_events:
            added = len(event.encoded) + (1 if current else 0)
            if header_size + len(event.encoded) > max_batch_bytes:
                too_large.append(event)
                continue
            if current and size + added > max_batch_bytes:
                batches.append(_finish_batch(current, header))
                current, size, added = [], header_size, len(event.encoded)
            current.append(event)
            size += added
        if current:
            batches.append(_finish_batch(current, header))
    return batches, too_large


def make_request(batches: list[Batch]) -> BulkRequest:
    """The request that sends exactly these batches."""
    return BulkRequest(batches=batches, body=b"[" + b",".join(b.encoded for b in batches) + b"]")


def pack_requests(
    batches: list[Batch], *, max_batches: int, max_request_bytes: int
) -> list[BulkRequest]:
    """Fill requests with whole batches up to the count and size limits."""
    requests: list[BulkRequest] = []
    current: list[Batch] = []
    size = 2  # the brackets
    for batch in batches:
        added = len(batch.encoded) + (1 if current else 0)
        if current and (len(current) >= max_batches or size + added > max_request_bytes):
            requests.append(make_request(current))
            current, size, added = [], 2, len(batch.encoded)
        current.append(batch)
        size += added
    if current:
        requests.append(make_request(current))
    return requests


def split_request(request: BulkRequest) -> tuple[BulkRequest, BulkRequest]:
    """Halve a refused request to find the batch mParticle objects to."""
    middle = len(request.batches) // 2
    return make_request(request.batches[:middle]), make_request(request.batches[middle:])
