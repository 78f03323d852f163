"""What a direction hands the relay: how to read its queue entries and send them.

The worker knows no destination. A direction (``app/to_mparticle`` today) decodes
entries into items, packs items into requests within its destination's limits, sends a
request through its client (which raises :mod:`app.relay.outcomes`), and says how each
sent item's story ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class Item(Protocol):
    """One queued event, decoded: where it came from, so it can be acked and told.

    An item may also say ``completes_entry = False``: its queue entry holds more items,
    and is acked with the last of them (absent means True).
    """

    queue: str
    shard: int
    entry_id: str
    event_id: str
    event_type: str
    received_ms: int | None
    raw: str  # the body as queued, for dead letters and replay


class Request(Protocol):
    """One request to the destination: its items and its exact body."""

    @property
    def events(self) -> list[Any]: ...

    @property
    def body(self) -> bytes: ...

    @property
    def batch_count(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Answer:
    """The destination took a request; ``refused``: items it took but refused (a 207),
    each with the destination's reason, to dead-letter while the rest are done."""

    status: int
    rate_limit_percent_used: float | None = None
    refused: list[tuple[Any, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Unusable:
    """An entry that cannot be sent, and why: it becomes a dead letter."""

    item: Any
    reason: str


@dataclass(frozen=True, slots=True)
class StateKeys:
    """The Redis keys where the workers of one direction keep what they saw."""

    health: str  # hash: the destination's last answer and rate-limit use
    auth: str  # string: set while the destination refuses the credentials
    throttle: str  # string: every worker waits out its TTL before sending


class Direction(Protocol):
    """A direction of the relay, as the worker sees it."""

    name: str  # the metrics' direction label, e.g. "to_mparticle"
    destination: str  # for log lines, e.g. "mParticle"
    credentials_hint: str  # what to fix when the credentials are refused
    too_large_reason: str  # why an item larger than any request is dead-lettered
    refused_reason: str  # why an item the destination refused is dead-lettered
    state_keys: StateKeys

    def decode(self, entries: Sequence[Any]) -> tuple[list[Any], list[Unusable]]:
        """Items to send, and entries that cannot be sent."""
        ...

    def pack(self, items: list[Any]) -> tuple[list[Any], list[Any]]:
        """Requests within the destination's limits, and items too large for any."""
        ...

    def split(self, request: Any) -> tuple[Any, Any]:
        """Two halves of a refused request of several batches."""
        ...

    def send(self, request: Any) -> Answer:
        """Send a request exactly as packed (a retry is byte-identical)."""
        ...

    def check_credentials(self) -> str:
        """Check the destination takes the credentials, sending nothing."""
        ...

    def relayed_endings(
        self, request: Any, answer: Answer, attempt: int
    ) -> Iterable[tuple[Any, str]]:
        """Each sent item with the end of its relayed story."""
        ...

    def log_fields(self, request: Any) -> dict[str, Any]:
        """What the log line of a request says of it beyond its events and batches."""
        ...
