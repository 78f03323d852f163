"""Replays that race each other queue each dead letter once (the real Redis, threads)."""

from __future__ import annotations

import threading
from collections import Counter

from app.store import dead_letters
from app.store.keys import KeySpace
from app.support.dead_letters import replay_dead_letters
from app.to_mparticle import delivery
from tests.helpers.webhooks import encode, webhook

KEYS = KeySpace()


def write_letters(redis, count: int) -> list[str]:
    pipe = redis.pipeline(transaction=False)
    for n in range(count):
        body = encode(webhook("email", "opened", customer_id=f"person-{n}")).decode()
        dead_letters.add(pipe, KEYS, dead_letters.event_letter(
            reason="mParticle refused the batch", event_id=f"event-{n}", event_type="email_opened",
            status=400, response="", attempts=1, queue=KEYS.queue(0), entry_id=f"{n + 1}-0",
            body=body, at_ms=0,
        ), 10_000)
    return pipe.execute()


def queued_bodies(redis) -> Counter:
    return Counter(fields["b"] for queue in KEYS.queues() for _id, fields in redis.xrange(queue))


def test_two_replays_of_everything_at_once_queue_each_letter_once(redis):
    letter_ids = write_letters(redis, 300)
    reports = []
    start = threading.Barrier(2)

    def replay_all() -> None:
        start.wait()
        reports.append(replay_dead_letters(redis, KEYS, delivery.route))

    threads = [threading.Thread(target=replay_all) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    first, second = reports
    assert sorted(first.replayed + second.replayed) == sorted(letter_ids)
    assert set(first.replayed).isdisjoint(second.replayed)
    # Whatever one took, the other was told of (unless it never saw the letter at all).
    assert set(first.already_replayed) <= set(second.replayed)
    assert set(second.already_replayed) <= set(first.replayed)
    bodies = queued_bodies(redis)
    assert len(bodies) == 300 and set(bodies.values()) == {1}
    assert redis.xlen(KEYS.dead_letters) == 0


def test_a_replay_by_id_of_a_letter_another_replay_took_says_so(redis):
    (letter_id,) = write_letters(redis, 1)
    replay_dead_letters(redis, KEYS, delivery.route, [letter_id])

    report = replay_dead_letters(redis, KEYS, delivery.route, [letter_id])

    assert (report.replayed, report.already_replayed, report.not_found) == ([], [letter_id], [])
    assert sum(queued_bodies(redis).values()) == 1


def test_a_letter_claimed_by_a_replay_that_died_is_left_for_the_claim_to_expire(redis):
    (letter_id,) = write_letters(redis, 1)
    assert dead_letters.claim_for_replay(redis, KEYS, letter_id)  # a replay that crashed here

    report = replay_dead_letters(redis, KEYS, delivery.route)

    assert report.already_replayed == [letter_id]
    assert redis.xlen(KEYS.dead_letters) == 1  # kept, never lost
    assert 0 < redis.ttl(KEYS.replayed_letter(letter_id)) <= dead_letters.REPLAY_CLAIM_SECONDS
