"""The key layout: which buckets may hold a mark or a flag, and that it never moves."""

from __future__ import annotations

import pytest

from app.store.keys import CLOCK_SKEW_SECONDS, Generations, KeySpace

DAY = 24 * 3600
MARKS = Generations(ttl_seconds=8 * DAY, span_seconds=4 * DAY)
BOUNDARY = 5195 * MARKS.span_seconds  # a change of generation: 2026-11-23 00:00 UTC


def test_marks_and_flags_of_an_event_are_named_as_they_always_were():
    # Changing how buckets are named or picked loses every mark and flag written before:
    # these names must never change.
    keys = KeySpace()
    now = BOUNDARY + DAY

    assert keys.mark_buckets(3, "01E4C4CT6YDC7Y5M7FE1GWWPQJ", now).keys == [
        "cior:{q3}:marks:5193:1800", "cior:{q3}:marks:5194:1800", "cior:{q3}:marks:5195:1800",
    ]
    assert keys.first_buckets(3, "RPILAgUBcRhIBqSfeiIwdIYJKxTY", now).keys == [
        "cior:{q3}:first:459:1647", "cior:{q3}:first:460:1647", "cior:{q3}:first:461:1647",
    ]


@pytest.mark.parametrize(
    ("now", "generations"),
    [
        (BOUNDARY + DAY, [5193, 5194, 5195]),
        # Just after a change: Redis's clock may still be in the generation before, in
        # which the bucket of 5192 is alive a few minutes more.
        (BOUNDARY + 60, [5192, 5193, 5194, 5195]),
        # Just before one: Redis's clock may be in the next generation already.
        (BOUNDARY - 60, [5192, 5193, 5194, 5195]),
    ],
)
def test_a_lookup_reads_every_generation_that_may_be_alive_by_redis_clock(now, generations):
    assert list(MARKS.live(now)) == generations
    # Whatever Redis's time within CLOCK_SKEW_SECONDS, every bucket alive then is read.
    for redis_time in (now - CLOCK_SKEW_SECONDS, now, now + CLOCK_SKEW_SECONDS):
        alive = [g for g in range(5180, 5200) if MARKS.expires_at(g) > redis_time
                 and g <= MARKS.of(redis_time)]
        assert set(alive) <= set(generations)


def test_a_field_lives_at_least_its_ttl_and_less_than_a_generation_more():
    for written in (BOUNDARY, BOUNDARY + 1, BOUNDARY + MARKS.span_seconds - 1):
        lives = MARKS.expires_at(MARKS.of(written)) - written
        assert MARKS.ttl_seconds <= lives <= MARKS.ttl_seconds + MARKS.span_seconds


def test_buckets_spread_events_whose_ids_follow_their_person_s():
    # crc32 is linear: ids and persons sharing digits would share low bits, and half the
    # buckets of a shard would stay empty.
    keys = KeySpace()
    used = {(keys.shard_for(str(n)), keys.mark_buckets(0, f"01BENCH{n:010d}", BOUNDARY).keys[0])
            for n in range(100_000)}

    assert len(used) > 0.99 * keys.shards * keys.mark_buckets_per_shard
