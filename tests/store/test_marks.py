"""The packed story of a dedup mark: what support reads back, and that it stays short."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.store import marks
from app.to_mparticle import catalog

ENTRY = "1795704496123-0"
REQUEST_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "batch"))

# Redis keeps a hash compact (a listpack) while every value is at most this long.
LISTPACK_VALUE_BYTES = 64


def relayed(event_type: str, *, copies: int = 0, attempts: int = 1, after_ms: int = 1500,
            status: int = 202) -> str:
    """A relayed story as the worker's script writes it (see app/worker.py)."""
    ending = marks.relayed_ending(status, REQUEST_ID, attempts)
    head = f"r{copies or ''}"
    return (f"{head}|{event_type}|{marks.packed_entry(ENTRY)}|{marks.base36(after_ms)}"
            f"|{ending}")


def test_a_queued_story_reads_back_its_entry_and_the_time_received():
    told = marks.unpack(f"q|email_opened|{ENTRY}")

    assert told == {"status": "queued", "event": "email_opened", "queue_entry": ENTRY,
                    "received_at_ms": 1795704496123}


def test_a_relayed_story_reads_back_every_field_support_sees():
    told = marks.unpack(relayed("email_opened", copies=3, attempts=2, after_ms=86_400_000))

    assert told == {
        "status": "relayed", "event": "email_opened", "queue_entry": ENTRY,
        "received_at_ms": 1795704496123, "status_at_ms": 1795704496123 + 86_400_000,
        "mparticle_status": 202, "source_request_id": REQUEST_ID, "attempts": 2,
        "copies_received_after_first": 3,
    }


def test_a_dead_lettered_story_keeps_the_reason_as_one_letter():
    packed = f"d|email_opened|{marks.packed_entry(ENTRY)}|2s|" + marks.packed_reason(
        "no customer_id or email identifies the person")

    assert packed.endswith("|P")
    assert marks.unpack(packed)["reason"] == "no customer_id or email identifies the person"
    assert marks.unpack(packed)["status_at_ms"] == 1795704496123 + 100


def test_ignored_and_quarantined_stories_read_back():
    ignored = marks.unpack(marks.ignored("email_drafted", 1795704496123, "event type turned off"))
    quarantined = marks.unpack(marks.quarantined(1795704496123, "1795704496124-0",
                                                 "not a usable reporting webhook"))

    assert ignored == {"status": "ignored", "event": "email_drafted",
                       "received_at_ms": 1795704496123, "reason": "event type turned off"}
    assert quarantined == {"status": "quarantined", "received_at_ms": 1795704496123,
                           "dead_letter_id": "1795704496124-0",
                           "reason": "not a usable reporting webhook"}


@given(event_type=st.text(min_size=1), reason=st.text(min_size=1),
       received_ms=st.integers(min_value=0, max_value=2**45))
def test_free_text_reads_back_exactly_whatever_it_holds(event_type, reason, received_ms):
    told = marks.unpack(marks.ignored(event_type, received_ms, reason))

    assert (told["event"], told["reason"], told["received_at_ms"]) == (
        event_type, reason, received_ms)


@pytest.mark.parametrize("letter", sorted(marks.REASONS))
def test_a_reason_that_is_itself_a_letter_is_not_read_back_as_another_reason(letter):
    assert marks.unpack(marks.ignored("x", 0, letter))["reason"] == letter


@given(st.integers(min_value=-(2**50), max_value=2**50))
def test_base36_is_what_python_reads_back(number):
    assert int(marks.base36(number), 36) == number


@pytest.mark.parametrize("event_type", catalog.FEED_DEFAULTS)
def test_the_stories_of_the_feeds_event_types_fit_a_compact_hash(event_type):
    # The longest common case: copies counted, a retried request, relayed after hours.
    longest = relayed(event_type, copies=9, attempts=9, after_ms=20 * 3600 * 1000)
    queued = f"q9|{event_type}|{ENTRY}"
    suppressed = f"s9|{event_type}|{marks.base36(1795704496123)}|RPILAgUBcRhIBqSfeiIwdIYJKxTY"
    dead_lettered = (f"d9|{event_type}|{marks.packed_entry(ENTRY)}|{marks.base36(10**8)}|"
                     + marks.packed_reason("no customer_id or email identifies the person"))

    for story in (longest, queued, suppressed, dead_lettered):
        assert len(story.encode()) <= LISTPACK_VALUE_BYTES, story
