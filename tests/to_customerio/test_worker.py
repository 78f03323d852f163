"""The mParticle → Customer.io worker against the real Redis and the Customer.io stand-in.

Batches go in as mParticle's Webhook output posts them (through the Flask client), the
worker is the one the app builds, and what Customer.io took is read off the stand-in.
"""

from __future__ import annotations

import json
from typing import Any

from app.extension import services
from app.store.dead_letters import list_dead_letters
from app.support.dead_letters import replay_dead_letters
from app.to_customerio import delivery
from tests.helpers.customerio_standin import Reply
from tests.to_customerio.conftest import AUTH, custom_event, mparticle_batch, screen_view


def send(app: Any, *batches: dict[str, Any]) -> None:
    client = app.test_client()
    for batch in batches:
        response = client.post("/webhooks/mparticle", data=json.dumps(batch), headers=AUTH,
                               content_type="application/json")
        assert response.status_code == 202, response.get_json()


def relay_once(app: Any) -> None:
    services(app).build_customerio_worker().run(once=True)


def pending(app: Any) -> int:
    relay = services(app)
    return sum(relay.redis.xlen(queue) for queue in relay.customerio_keys.queues())


def test_a_batch_reaches_customerio_as_an_identify_then_its_events_in_order(app, customerio):
    batch = mparticle_batch(custom_event("Played Song", song="x"), screen_view("Home"),
                            user_attributes={"$FirstName": "Ada", "plan": "pro"})
    send(app, batch)

    relay_once(app)

    identify, event, screen = customerio.accepted_items()
    assert identify["action"] == "identify" and identify["identifiers"] == {"id": "cust-1"}
    assert identify["attributes"]["first_name"] == "Ada"
    assert identify["attributes"]["plan"] == "pro"
    assert (event["action"], event["name"], event["attributes"]) == (
        "event", "Played_Song", {"song": "x"})
    assert (screen["action"], screen["name"]) == ("screen", "Home")
    assert pending(app) == 0


def test_a_retried_post_creates_nothing_twice_in_customerio(app, customerio):
    batch = mparticle_batch(custom_event())
    send(app, batch)
    relay_once(app)
    client = app.test_client()
    again = client.post("/webhooks/mparticle", data=json.dumps(batch), headers=AUTH,
                        content_type="application/json")
    relay_once(app)

    assert again.get_json() == {"status": "duplicate"}
    assert len(customerio.events()) == 1 and customerio.duplicate_event_ids_dropped == 0


def test_each_persons_items_keep_their_order_across_many_batches(app, customerio):
    batches = [mparticle_batch(custom_event(f"Step {n}"), customer_id=f"p{n % 3}")
               for n in range(30)]
    send(app, *batches)

    relay_once(app)

    for person, items in customerio.items_by_person().items():
        steps = [int(item["name"].split("_")[1]) for item in items if item["action"] == "event"]
        assert steps == sorted(steps) and len(steps) == 10, person
    assert pending(app) == 0


def test_a_207_dead_letters_the_refused_item_and_the_rest_is_done(app, customerio):
    customerio.reject_items_where(lambda item: item.get("name") == "Bad")
    send(app, mparticle_batch(custom_event("Good"), custom_event("Bad"), custom_event("Fine")))

    relay_once(app)

    assert [item.get("name") for item in customerio.events()] == ["Good", "Fine"]
    (letter,) = list_dead_letters(services(app).redis, services(app).customerio_keys)
    assert letter["reason"] == "Customer.io refused the item" and letter["status"] == "207"
    assert [e["data"]["event_name"] for e in json.loads(letter["body"])["events"]] == ["Bad"]
    assert pending(app) == 0


def test_a_replayed_letter_reaches_customerio_once_fixed(app, customerio):
    customerio.reject_items_where(lambda item: item.get("name") == "Bad")
    send(app, mparticle_batch(custom_event("Bad")))
    relay_once(app)
    customerio.reject_items_where(None)
    relay = services(app)

    report = replay_dead_letters(relay.redis, relay.customerio_keys,
                                 lambda body: delivery.route(relay.customerio_options, body))
    relay_once(app)

    assert len(report.replayed) == 1
    assert [item.get("name") for item in customerio.events()] == ["Bad"]


def test_a_400_is_split_until_the_bad_item_is_alone(app, customerio):
    customerio.script(Reply(400, body='{"errors":[{"reason":"invalid","message":"bad"}]}'))
    send(app, mparticle_batch(custom_event("A")), mparticle_batch(custom_event("B")))

    relay_once(app)

    # The first request (4 items) was refused once; its halves went through.
    assert sorted(item["name"] for item in customerio.events()) == ["A", "B"]
    assert pending(app) == 0


def test_refused_credentials_stop_sending_keep_everything_and_readyz_says_so(app, customerio):
    customerio.script(Reply(401))
    send(app, mparticle_batch(custom_event()))

    relay_once(app)

    assert customerio.accepted_items() == [] and pending(app) == 1
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 503 and "credentials refused" in ready.get_json()["customerio"]


def test_a_429_or_an_outage_is_retried_until_customerio_takes_it(app, customerio):
    customerio.script(Reply(429, {"Retry-After": "0"}), Reply(503), Reply(500))
    send(app, mparticle_batch(custom_event()))

    relay_once(app)

    assert len(customerio.events()) == 1 and pending(app) == 0


def test_an_event_whose_story_is_told_says_relayed(app, customerio):
    event = custom_event()
    send(app, mparticle_batch(event))
    relay_once(app)
    relay = services(app)

    story = relay.find_event(event["data"]["source_message_id"])

    assert story["status"] == "relayed" and story["event"] == "custom_event"
    assert story["direction"] == "to_customerio"
    assert story["where"] == "relayed to Customer.io"


def test_an_events_story_is_found_by_the_ulid_customerio_shows(app, customerio):
    event = custom_event()
    send(app, mparticle_batch(event))
    relay_once(app)
    (sent,) = customerio.events()

    by_ulid = services(app).find_event(sent["id"])
    by_key = services(app).find_event(event["data"]["source_message_id"])

    assert by_ulid is not None and by_key is not None
    assert by_ulid["status"] == by_key["status"] == "relayed"
    assert by_ulid["queue_entry"] == by_key["queue_entry"]
    assert services(app).find_event("01ARZ3NDEKTSV4RRFFQ69G5FAV") is None
