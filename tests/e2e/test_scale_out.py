"""Scale out on one Redis: two web processes and two workers, as an operator grows them.

Both webs take the same stream (Customer.io's retries may land on either), both workers
read the same consumer group. Each accepted event must reach mParticle once, each
person's events in the order they were accepted, and a toggle changed through one web
must be obeyed by the other.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from app.to_mparticle import catalog, mapping
from tests.conftest import ADMIN_TOKEN
from tests.e2e.test_procfile_processes import _deployment, admin_get, post
from tests.helpers.mparticle_standin import MParticleStandIn
from tests.helpers.processes import Deployment
from tests.helpers.webhooks import webhook

pytestmark = pytest.mark.e2e

SCALE_OUT = {
    "relay": {"poll_interval_seconds": 0.02, "read_count": 50},
    "redis": {"toggle_refresh_seconds": 0.3},
    "logging": {"format": "json", "level": "INFO"},
}
PEOPLE = 24
EVENTS_PER_PERSON = 12


@pytest.fixture
def two_of_each(
    tmp_path: Path, redis_url: str, redis: Any, mparticle: MParticleStandIn
) -> Any:
    """Web A + worker A and web B + worker B: two deployments sharing one Redis."""
    sides = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        sides.append(_deployment(workdir, redis_url, mparticle, sections=SCALE_OUT))
    try:
        for side in sides:
            side.start("web")
            side.start("worker")
        for side in sides:
            side.wait_until_healthy()
        yield sides
    finally:
        for side in sides:
            side.stop_all()


def _person_stream(person: int) -> list[dict[str, Any]]:
    names = itertools.islice(itertools.cycle(catalog.FEED_DEFAULTS), person,
                             person + EVENTS_PER_PERSON)
    return [
        webhook(catalog.CATALOG[name].object_type, catalog.CATALOG[name].metric,
                customer_id=f"p{person}", email=f"p{person}@example.com",
                delivery_id=f"so-{person}-{n}")
        for n, name in enumerate(names)
    ]


def test_two_webs_and_two_workers_relay_each_event_once_in_order_per_person(
    two_of_each: list[Deployment], mparticle: MParticleStandIn
):
    web_a, web_b = two_of_each
    accepted: dict[str, list[str]] = {}  # person -> event_ids in the order they were accepted
    answers: Counter[tuple[int, str]] = Counter()
    lock = threading.Lock()

    def send_person(person: int) -> None:
        order = []
        for n, payload in enumerate(_person_stream(person)):
            # The same event to both webs at once: Customer.io's retry racing the first try.
            with ThreadPoolExecutor(max_workers=2) as pair:
                replies = list(pair.map(post, (web_a, web_b), (payload, payload)))
            statuses = sorted((r.status_code, r.json()["status"]) for r in replies)
            assert statuses == [(200, "duplicate"), (202, "queued")], statuses
            order.append(payload["event_id"])
            if n % 4 == 3:  # a later occurrence of the same type for the delivery
                again = webhook(payload["object_type"], payload["metric"], customer_id=f"p{person}",
                                delivery_id=payload["data"]["delivery_id"])
                reply = post(web_b if n % 8 == 3 else web_a, again)
                with lock:
                    answers[(reply.status_code, reply.json()["status"])] += 1
        with lock:
            accepted[f"p{person}"] = order
            answers[(202, "queued")] += len(order)

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(send_person, range(PEOPLE)))

    total = PEOPLE * EVENTS_PER_PERSON
    assert answers == {(202, "queued"): total, (200, "suppressed"): PEOPLE * 3}, answers
    assert mparticle.wait_for_events(total, timeout=40), len(mparticle.source_message_ids())
    time.sleep(0.5)  # anything sent twice would arrive now

    sent = mparticle.source_message_ids()
    assert len(sent) == len(set(sent)), "an event reached mParticle twice"
    every = {event_id for order in accepted.values() for event_id in order}
    assert set(sent) == {mapping.source_message_id(event_id) for event_id in every}
    arrived: dict[str, list[str]] = defaultdict(list)
    for batch, event in mparticle.accepted_events():
        arrived[batch["user_identities"]["customer_id"]].append(
            event["data"]["custom_attributes"]["source_message_id"])
    assert arrived == accepted, "a person's events reached mParticle out of order"
    # Both workers took part (one consumer group, two consumers).
    relayed_by = [sum("relayed" in line for line in side.processes[1].output().splitlines())
                  for side in two_of_each]
    assert all(relayed_by), relayed_by
    assert admin_get(web_b, "/admin/queue").json()["length"] == 0


def test_a_toggle_changed_through_one_web_is_obeyed_by_the_other(
    two_of_each: list[Deployment], mparticle: MParticleStandIn
):
    web_a, web_b = two_of_each
    refresh = SCALE_OUT["redis"]["toggle_refresh_seconds"]
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    # Web B has read the overrides already (the file's default: sms_clicked on).
    assert post(web_b, webhook("sms", "clicked", delivery_id="t-0")).status_code == 202
    off = requests.put(f"{web_a.url}/admin/events", json={"events": {"sms_clicked": False}},
                       headers=headers, timeout=5)
    assert off.status_code == 200, off.text
    time.sleep(refresh * 2)
    # Every gunicorn worker of web B re-reads on its first request after the refresh time.
    for n in range(6):
        reply = post(web_b, webhook("sms", "clicked", delivery_id=f"t-off-{n}"))
        assert (reply.status_code, reply.json().get("reason")) == (200, "event type turned off")

    on = requests.put(f"{web_b.url}/admin/events", json={"events": {"sms_clicked": True}},
                      headers=headers, timeout=5)
    assert on.status_code == 200, on.text
    time.sleep(refresh * 2)
    back = [post(web_a, webhook("sms", "clicked", delivery_id=f"t-on-{n}")) for n in range(4)]
    assert [reply.status_code for reply in back] == [202] * 4
    assert mparticle.wait_for_events(5, timeout=20)
    listed = {row["name"]: row for row in admin_get(web_b, "/admin/events").json()["events"]}
    assert listed["sms_clicked"]["enabled"] is True
