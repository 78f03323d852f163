"""The delivery policy on its own: answers in, actions out (no Redis, no HTTP)."""

from __future__ import annotations

import pytest

from app.relay.outcomes import AuthError, RejectedError, RetryableError
from app.relay.policy import Action, DeliveryPolicy


def policy(schedule=(5, 300), jitter=0.0, threshold=80.0, longest=2.0) -> DeliveryPolicy:
    return DeliveryPolicy(
        retry_schedule_seconds=tuple(schedule), retry_jitter_ratio=jitter,
        slow_down_at_rate_limit_percent=threshold, slow_down_max_seconds=longest,
    )


def test_credentials_refused_stop_sending():
    decision = policy().after_error(AuthError(401), attempt=1, batches=3)
    assert decision.action is Action.STOP


def test_refused_content_splits_a_request_of_several_batches():
    assert policy().after_error(RejectedError(400), 1, batches=2).action is Action.SPLIT


def test_refused_content_dead_letters_a_single_batch():
    assert policy().after_error(RejectedError(400), 1, batches=1).action is Action.DEAD_LETTER


def test_an_outage_retries_after_the_schedules_step_the_last_repeating():
    waits = [policy().after_error(RetryableError("503", status=503), attempt, 1)
             for attempt in (1, 2, 3, 50)]
    assert [(d.action, d.wait_seconds, d.reason) for d in waits] == [
        (Action.RETRY, 5, "unavailable"), (Action.RETRY, 300, "unavailable"),
        (Action.RETRY, 300, "unavailable"), (Action.RETRY, 300, "unavailable"),
    ]


def test_a_timeout_without_a_status_is_retried():
    decision = policy().after_error(RetryableError("no answer in time"), 1, 1)
    assert (decision.action, decision.reason) == (Action.RETRY, "unavailable")


def test_a_429_waits_its_retry_after_capped_at_the_largest_step():
    ask = [policy().after_error(RetryableError("429", status=429, retry_after=after), 1, 1)
           for after in (42.0, 86_400.0)]
    assert [(d.wait_seconds, d.reason) for d in ask] == [(42.0, "throttled"), (300, "throttled")]


def test_a_429_without_retry_after_backs_off_with_full_jitter_under_a_ceiling():
    waits = [policy().after_error(RetryableError("429", status=429), 3, 1).wait_seconds
             for _ in range(300)]
    assert all(0 <= wait <= 20 for wait in waits)
    assert min(waits) < 4 and max(waits) > 16


def test_jitter_spreads_a_step_within_its_ratio():
    waits = [policy(jitter=0.2).retry_wait(2) for _ in range(200)]
    assert all(240 <= wait <= 360 for wait in waits) and len(set(waits)) > 1


@pytest.mark.parametrize(
    ("percent", "pause"),
    [(None, 0.0), (79.9, 0.0), (80.0, 0.0), (90.0, 1.0), (100.0, 2.0), (150.0, 2.0)],
)
def test_a_taken_request_pauses_as_the_rate_limit_fills_up(percent, pause):
    decision = policy().after_answer(percent)
    assert decision.action is Action.DONE
    assert decision.wait_seconds == pytest.approx(pause)
    assert bool(decision.reason) is (pause > 0)


def test_by_default_no_wait_between_two_tries_exceeds_five_minutes():
    from app.config import DEFAULT_RETRY_SCHEDULE_SECONDS

    default = policy(schedule=DEFAULT_RETRY_SCHEDULE_SECONDS, jitter=0.2)
    waits = [default.after_error(RetryableError("503", status=503), attempt, 1).wait_seconds
             for attempt in range(1, 40) for _ in range(20)]
    throttled = [default.after_error(RetryableError("429", status=429), attempt, 1).wait_seconds
                 for attempt in range(1, 40)]
    assert max(waits + throttled) <= 300
    assert max(waits) > 250  # the last step is reached, not avoided


def test_jitter_never_takes_a_wait_past_the_largest_step():
    waits = [policy(schedule=(5, 300), jitter=0.5).retry_wait(9) for _ in range(200)]
    assert max(waits) == 300 and min(waits) >= 150


def test_a_destination_with_a_request_rate_keeps_every_worker_to_its_interval():
    paced = DeliveryPolicy(retry_schedule_seconds=(5,), retry_jitter_ratio=0,
                           slow_down_at_rate_limit_percent=80, slow_down_max_seconds=2,
                           min_interval_seconds=0.01)
    assert (paced.after_answer(None).wait_seconds, paced.after_answer(None).reason) == (
        0.01, "requests per second")
    assert paced.after_answer(95.0).wait_seconds == pytest.approx(1.5)  # the longer pause
