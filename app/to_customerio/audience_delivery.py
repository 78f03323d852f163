"""mParticle's audiences → Customer.io as the relay's worker sees it.

A queue entry names one person and the audience changes just applied to them; the
worker reads the person's audiences as they are now (``AudienceStore.members``) and
sends one identify with ``SegmentMembership`` (and, with
``[customerio] one_attribute_per_audience``, ``In <Audience Name>`` true or false).
Entries of one person are sent in order, so the last identify carries the latest state.
A ``SegmentMembership`` over Customer.io's 1000 bytes is never cut: the entry becomes a
dead letter with that reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from app.relay.direction import Unusable
from app.store import queue_entry
from app.to_customerio import audiences, mapping
from app.to_customerio.delivery import ToCustomerIO, TrackItem, encode

NAME = "to_customerio"


class AudiencesToCustomerIO(ToCustomerIO):
    """Audience membership changes, written to Customer.io as identifies."""

    def __init__(self, client: Any, state_keys: Any, options: mapping.MappingOptions,
                 store: Any, *, one_attribute_per_audience: bool, **limits: int) -> None:
        super().__init__(client, state_keys, options, **limits)
        self._store = store
        self._one_attribute_per_audience = one_attribute_per_audience

    def decode(self, entries: Sequence[Any]) -> tuple[list[TrackItem], list[Unusable]]:
        """Each entry's person as an identify of their audiences now."""
        unusable: list[Unusable] = []
        decoded = []
        for entry in entries:
            try:
                body = queue_entry.unpack(entry.fields)
                change = json.loads(body)
                person = mapping.person_of({"user_identities": [
                    {"identity_type": kind, "identity": value}
                    for kind, value in change["identities"].items()]}, self.options)
                changed = {int(c["id"]): (str(c["name"]), bool(c["member"]))
                           for c in change["changes"]}
                changed_at_ms = int(change["changed_at_ms"])
            except (KeyError, TypeError, ValueError, AttributeError):
                unusable.append(Unusable(self._whole_entry(
                    entry, queue_entry.readable_body(entry.fields)),
                    "queue entry is not an audience change"))
                continue
            if person is None:
                unusable.append(Unusable(self._whole_entry(entry, body),
                                         "no customer_id or email identifies the person"))
                continue
            decoded.append((entry, body, person, changed, changed_at_ms))
        members = self._store.members([(entry.shard, person.routing_key)
                                       for entry, _body, person, _c, _at in decoded])
        items: list[TrackItem] = []
        for (entry, body, person, changed, changed_at_ms), member_of in zip(
                decoded, members, strict=True):
            try:
                item = audiences.identify_item(
                    person, member_of, changed, changed_at_ms,
                    one_attribute_per_audience=self._one_attribute_per_audience)
            except audiences.MembershipTooLongError as exc:
                unusable.append(Unusable(self._whole_entry(entry, body),
                                         f"SegmentMembership over 1000 bytes: {exc}"))
                continue
            items.append(TrackItem(entry.queue, entry.shard, entry.entry_id,
                                   entry.received_ms, encode(item), body,
                                   event_type="audiences"))
        return items, unusable


def route(options: mapping.MappingOptions, body: str) -> str:
    """The routing key (the person) of a queued audience change; ValueError if unusable."""
    try:
        identities = json.loads(body)["identities"]
        person = mapping.person_of({"user_identities": [
            {"identity_type": kind, "identity": value} for kind, value in identities.items()]},
            options)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not an audience change: {exc}") from exc
    if person is None:
        raise ValueError("no customer_id or email identifies the person")
    return person.routing_key
