"""Batches and requests within mParticle's limits: one person per batch, 128 KiB a batch,
100 batches and 256 KiB a request, byte-identical on every retry."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from app.to_mparticle import mapping
from app.to_mparticle.batching import (
    Batch,
    QueuedEvent,
    build_batches,
    encode,
    make_request,
    pack_requests,
    split_request,
)
from tests.helpers.webhooks import webhook

MAX_BATCH_BYTES = 131072
MAX_REQUEST_BYTES = 262144
MAX_BATCHES = 100
TIMESTAMP = 1_713_484_800
ANN = ("42", "ann@example.com")
BOB = ("43", "bob@example.com")
CY = ("44", None)


def queued(event_id: str, person: tuple[str, str | None] = ANN, padding: int = 0) -> QueuedEvent:
    """A mapped email_opened event of this person, ``padding`` bytes fatter than usual."""
    customer_id, email = person
    payload = webhook(event_id=event_id, customer_id=customer_id, email=email,
                      recipient=email, timestamp=TIMESTAMP)
    event = mapping.map_event(payload, "email_opened")
    if padding:
        event["data"]["custom_attributes"]["padding"] = "x" * padding
    return QueuedEvent(
        queue="cior:queue:0", shard=0, entry_id=f"1713484800000-{event_id}",
        event_id=event_id, event_type="email_opened",
        identities=mapping.person_identities(payload), event=event,
    )


def batch_events(batch: Batch) -> list[str]:
    """The Customer.io event ids in an encoded batch, in order."""
    decoded = json.loads(batch.encoded)
    return [e["data"]["custom_attributes"]["source_message_id"] for e in decoded["events"]]


def build(events: list[QueuedEvent], max_batch_bytes: int = MAX_BATCH_BYTES):
    return build_batches(events, environment="production", max_batch_bytes=max_batch_bytes)


def pack(batches: list[Batch]):
    return pack_requests(
        batches, max_batches=MAX_BATCHES, max_request_bytes=MAX_REQUEST_BYTES
    )


def header_size(identities: dict[str, str]) -> int:
    head = {"environment": "production", "source_request_id": "0" * 36,
            "user_identities": identities, "events": []}
    return len(encode(head))


# -- batches ----------------------------------------------------------------------------


def test_each_batch_holds_one_person_in_arrival_order():
    events = [queued("e1", ANN), queued("e2", BOB), queued("e3", ANN), queued("e4", CY),
              queued("e5", BOB), queued("e6", ANN)]
    batches, too_large = build(events)
    assert too_large == []
    assert [batch_events(b) for b in batches] == [["e1", "e3", "e6"], ["e2", "e5"], ["e4"]]
    identities = [json.loads(b.encoded)["user_identities"] for b in batches]
    assert identities == [
        {"customer_id": "42", "email": "ann@example.com"},
        {"customer_id": "43", "email": "bob@example.com"},
        {"customer_id": "44"},
    ]
    for batch in batches:
        assert len({event.person for event in batch.events}) == 1


def test_a_batch_is_exactly_the_contract_shape_without_batch_id_or_timestamp():
    batches, _ = build([queued("e1"), queued("e2")])
    decoded = json.loads(batches[0].encoded)
    assert set(decoded) == {"environment", "source_request_id", "user_identities", "events"}
    assert decoded["environment"] == "production"
    assert decoded["source_request_id"] == batches[0].source_request_id
    assert decoded["events"] == [queued("e1").event, queued("e2").event]


def test_the_environment_is_stamped_on_every_batch():
    batches, _ = build_batches([queued("e1"), queued("e2", BOB)], environment="development",
                               max_batch_bytes=MAX_BATCH_BYTES)
    assert [json.loads(b.encoded)["environment"] for b in batches] == ["development"] * 2


def test_many_fat_events_of_one_person_are_split_into_batches_under_the_limit():
    events = [queued(f"e{n:03}", padding=10_000) for n in range(60)]  # ~600 KB
    batches, too_large = build(events)
    assert too_large == []
    assert len(batches) >= 5
    for batch in batches:
        assert len(batch.encoded) <= MAX_BATCH_BYTES
        json.loads(batch.encoded)
    assert [e for b in batches for e in batch_events(b)] == [e.event_id for e in events]


def test_batches_are_filled_close_to_the_limit():
    events = [queued(f"e{n:03}", padding=10_000) for n in range(60)]
    batches, _ = build(events)
    one_event = len(events[0].encoded) + 1
    for batch in batches[:-1]:  # each full batch had no room for one more event
        assert len(batch.encoded) + one_event > MAX_BATCH_BYTES


def test_an_event_too_large_alone_is_set_aside_and_the_rest_are_batched():
    big = queued("big", padding=MAX_BATCH_BYTES)
    events = [queued("e1"), big, queued("e2")]
    batches, too_large = build(events)
    assert too_large == [big]
    assert [batch_events(b) for b in batches] == [["e1", "e2"]]


def test_an_event_that_exactly_fills_a_batch_is_sent_and_one_byte_more_is_not():
    probe = queued("exact", padding=1)
    room = MAX_BATCH_BYTES - header_size(probe.identities) - len(probe.encoded) + 1
    exact = queued("exact", padding=room)
    batches, too_large = build([exact])
    assert too_large == []
    assert len(batches[0].encoded) == MAX_BATCH_BYTES
    over = queued("exact", padding=room + 1)
    assert build([over]) == ([], [over])


def test_the_encoded_batch_is_what_encoding_its_parts_gives():
    batches, _ = build([queued("e1"), queued("e2")])
    batch = batches[0]
    assert batch.encoded == encode(json.loads(batch.encoded))


# -- source_request_id ------------------------------------------------------------------


def test_source_request_id_is_the_same_for_the_same_events():
    first, _ = build([queued("e1"), queued("e2")])
    again, _ = build([queued("e1"), queued("e2")])
    assert first[0].source_request_id == again[0].source_request_id


def test_source_request_id_differs_for_different_events():
    ids = {
        build(events)[0][0].source_request_id
        for events in (
            [queued("e1")], [queued("e2")], [queued("e1"), queued("e2")],
            [queued("e2"), queued("e1")], [queued("e1,e2")],
        )
    }
    assert len(ids) == 5


def test_source_request_id_is_a_uuid_string():
    batch = build([queued("e1")])[0][0]
    assert len(batch.source_request_id) == 36
    assert batch.source_request_id.count("-") == 4


# -- requests ---------------------------------------------------------------------------


def test_250_small_batches_make_3_requests_of_at_most_100():
    batches, _ = build([queued(f"e{n}", (str(n), None)) for n in range(250)])
    assert len(batches) == 250
    requests = pack(batches)
    assert [len(r.batches) for r in requests] == [100, 100, 50]
    for request in requests:
        assert len(request.body) <= MAX_REQUEST_BYTES


def test_a_request_never_exceeds_256_kib():
    # Ten people with ~100 KB each: two batches fit a request, three do not.
    events = [queued(f"p{p}-e{n}", (f"p{p}", None), padding=10_000)
              for p in range(10) for n in range(10)]
    batches, too_large = build(events)
    assert too_large == []
    requests = pack(batches)
    assert len(requests) >= 5
    for request in requests:
        assert len(request.body) <= MAX_REQUEST_BYTES
        assert len(request.batches) <= MAX_BATCHES
    assert [b for r in requests for b in r.batches] == batches


def test_a_request_body_is_the_json_list_of_its_batches():
    batches, _ = build([queued("e1", ANN), queued("e2", BOB), queued("e3", ANN)])
    (request,) = pack(batches)
    body = json.loads(request.body)
    assert isinstance(body, list)
    assert body == [json.loads(batch.encoded) for batch in batches]
    assert [e.event_id for e in request.events] == ["e1", "e3", "e2"]


def test_non_ascii_text_is_sent_as_utf8():
    event = queued("e1")
    event.event["data"]["custom_attributes"]["subject"] = "Grüße ✉"
    batches, _ = build([QueuedEvent(**{**_fields(event), "event": event.event})])
    (request,) = pack(batches)
    assert "Grüße ✉".encode() in request.body
    assert json.loads(request.body)[0]["events"][0]["data"]["custom_attributes"]["subject"] == (
        "Grüße ✉"
    )


def _fields(event: QueuedEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in
            ("queue", "shard", "entry_id", "event_id", "event_type", "identities", "event")}


def test_requests_built_twice_from_the_same_input_are_byte_identical():
    def requests() -> list[bytes]:
        events = [queued(f"e{n}", (f"p{n % 7}", None), padding=n * 100) for n in range(300)]
        batches, _ = build(events)
        return [request.body for request in pack(batches)]

    assert requests() == requests()


def test_split_request_halves_and_re_encodes():
    batches, _ = build([queued(f"e{n}", (str(n), None)) for n in range(5)])
    request = make_request(batches)
    first, second = split_request(request)
    assert first.batches == batches[:2]
    assert second.batches == batches[2:]
    for half in (first, second):
        assert half.body == make_request(half.batches).body
        assert json.loads(half.body) == [json.loads(b.encoded) for b in half.batches]
    assert json.loads(first.body) + json.loads(second.body) == json.loads(request.body)


def test_split_request_of_two_batches_gives_one_each():
    batches, _ = build([queued("e1", ANN), queued("e2", BOB)])
    first, second = split_request(make_request(batches))
    assert (first.batches, second.batches) == ([batches[0]], [batches[1]])


# -- properties -------------------------------------------------------------------------


@given(
    plan=st.lists(
        st.tuples(st.integers(min_value=0, max_value=4), st.integers(min_value=0, max_value=3000)),
        max_size=60,
    ),
    max_batch_bytes=st.integers(min_value=1024, max_value=4096),
    max_request_bytes=st.integers(min_value=4098, max_value=12_000),
    max_batches=st.integers(min_value=1, max_value=5),
)
def test_any_events_are_batched_and_packed_within_the_limits_and_none_are_lost(
    plan, max_batch_bytes, max_request_bytes, max_batches
):
    events = [queued(f"e{n}", (f"p{person}", None), padding=padding)
              for n, (person, padding) in enumerate(plan)]
    batches, too_large = build(events, max_batch_bytes=max_batch_bytes)
    requests = pack_requests(batches, max_batches=max_batches,
                             max_request_bytes=max_request_bytes)
    for batch in batches:
        assert len(batch.encoded) <= max_batch_bytes
        assert len({event.person for event in batch.events}) == 1
    for request in requests:
        assert len(request.body) <= max_request_bytes
        assert 1 <= len(request.batches) <= max_batches
        json.loads(request.body)
    sent = [event.event_id for request in requests for event in request.events]
    assert sorted(sent + [e.event_id for e in too_large]) == sorted(e.event_id for e in events)
    for person in {event.person for event in events}:  # each person's order is kept
        mine = [e.event_id for e in events if e.person == person and e not in too_large]
        assert [e for e in sent if e in mine] == mine


def test_a_batch_is_byte_for_byte_what_json_dumps_writes_for_it():
    events = [queued("e-1", ("ünï", "ü@example.com")), queued("e-2", ("ünï", "ü@example.com"))]

    (batch,), _ = build(events)

    assert batch.encoded == encode({
        "environment": "production",
        "source_request_id": batch.source_request_id,
        "user_identities": events[0].identities,
        "events": [event.event for event in events],
    })
