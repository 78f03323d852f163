"""Audiences from Firehose to Customer.io: the receiver, the state, the worker (real Redis,
the Customer.io stand-in)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.extension import services
from app.store.dead_letters import list_dead_letters
from tests.helpers import firehose
from tests.helpers.firehose import audience_message

URL = "/webhooks/mparticle/audiences"


@pytest.fixture
def app(make_app):
    return make_app(MPARTICLE_AUDIENCE_ACCESS_KEY=firehose.ACCESS_KEY)


def post(app: Any, *messages: Any, request_id: str | None = None, gzipped: bool = False,
         **header_options: Any) -> Any:
    body, request_id = firehose.delivery(*messages, request_id=request_id)
    return app.test_client().post(
        URL, data=firehose.encode(body, gzipped=gzipped),
        headers=firehose.headers(request_id, gzipped=gzipped, **header_options))


def relay_once(app: Any) -> None:
    services(app).build_audience_worker().run(once=True)


def memberships(customerio: Any) -> list[str]:
    return [item["attributes"]["SegmentMembership"] for item in customerio.accepted_items()]


def test_the_route_is_a_404_while_no_access_key_is_set(make_app):
    response = make_app().test_client().post(URL, json={})
    assert response.status_code == 404 and response.is_json


def test_a_wrong_access_key_is_401_in_awss_answer_format(app):
    response = post(app, audience_message(1), access_key="wrong")
    assert response.status_code == 401
    assert set(response.get_json()) == {"requestId", "timestamp", "errorMessage"}


def test_a_delivery_is_answered_as_aws_expects_with_its_request_id(app):
    response = post(app, audience_message(11036), request_id="req-1")
    assert response.status_code == 200
    assert response.get_json()["requestId"] == "req-1" and "errorMessage" not in response.get_json()


def test_an_envelope_that_is_not_json_is_400(app):
    response = app.test_client().post(URL, data=b"{nope", headers=firehose.headers("r"))
    assert response.status_code == 400 and "errorMessage" in response.get_json()


def test_a_gzipped_delivery_is_taken(app, customerio):
    assert post(app, audience_message(5), gzipped=True).status_code == 200
    relay_once(app)
    assert memberships(customerio) == ["'5'"]


def test_segment_membership_lists_every_audience_in_ascending_order(app, customerio):
    post(app, audience_message(11036), audience_message(11034), audience_message(9))
    relay_once(app)
    assert memberships(customerio)[-1] == "'9','11034','11036'"


def test_leaving_the_last_audience_sends_an_empty_membership(app, customerio):
    post(app, audience_message(7))
    post(app, audience_message(7, member=False))
    relay_once(app)
    assert memberships(customerio)[-1] == ""


def test_a_late_change_never_undoes_a_newer_one(app, customerio):
    post(app, audience_message(3, member=False, changed_at_ms=2_000))
    post(app, audience_message(3, member=True, changed_at_ms=1_000))  # older, arrives later
    relay_once(app)
    assert memberships(customerio) == [""]  # one identify: the late change applied nothing
    assert services(app).audience_store.history("id:p1")[3]["member"] is False


def test_a_retried_delivery_is_answered_200_and_applied_once(app, customerio):
    change = audience_message(21)
    first = post(app, change, request_id="same")
    again = post(app, change, request_id="same")
    relay_once(app)
    assert (first.status_code, again.status_code) == (200, 200)
    assert len(customerio.accepted_items()) == 1


def test_a_record_that_does_not_decode_is_quarantined_and_the_rest_taken(app, customerio):
    response = post(app, b"not json at all", audience_message(42))
    relay_once(app)
    assert response.status_code == 200
    (letter,) = list_dead_letters(services(app).redis, services(app).audience_keys)
    assert letter["kind"] == "quarantined"
    assert memberships(customerio) == ["'42'"]


def test_with_one_attribute_per_audience_each_is_true_or_false(make_app, customerio):
    app = make_app({"customerio": {"one_attribute_per_audience": True}},
                   MPARTICLE_AUDIENCE_ACCESS_KEY=firehose.ACCESS_KEY)
    post(app, audience_message(1, name="Big Spenders"), audience_message(2, name="Lapsed"))
    post(app, audience_message(2, member=False, name="Lapsed"))
    relay_once(app)
    last = customerio.accepted_items()[-1]["attributes"]
    assert last["In Big Spenders"] is True and last["In Lapsed"] is False


def test_a_person_in_150_audiences_gets_them_all_when_they_fit(app, customerio):
    post(app, *[audience_message(100 + n) for n in range(150)])  # 150 x "'nnn'," = 899 B
    relay_once(app)
    listed = memberships(customerio)[-1]
    assert len(listed.split(",")) == 150 and len(listed.encode()) <= 1000
    assert listed.startswith("'100','101',") and listed.endswith(",'249'")


def test_a_membership_over_1000_bytes_is_a_dead_letter_never_a_cut(app, customerio):
    # 150 audiences with ids like mParticle's (11036) take 1,199 bytes.
    post(app, *[audience_message(11_000 + n) for n in range(150)])
    relay_once(app)
    assert customerio.accepted_items() == []
    (letter,) = list_dead_letters(services(app).redis, services(app).audience_keys)
    assert "SegmentMembership over 1000 bytes" in letter["reason"]
    assert json.loads(letter["body"])["identities"] == {"customer_id": "p1"}


def test_people_are_identified_by_user_id_type_with_the_email_beside_the_id(app, customerio):
    post(app, audience_message(4, customer_id="c-9", email="c9@example.com"))
    relay_once(app)
    (item,) = customerio.accepted_items()
    assert item["identifiers"] == {"id": "c-9"} and item["attributes"]["email"] == "c9@example.com"


def test_left_then_joined_at_one_time_leaves_the_person_in(app, customerio):
    # mParticle's "Send Remove On Identity Change": a remove, then an add, one timestamp.
    post(app, audience_message(8, member=False, changed_at_ms=5_000),
         audience_message(8, member=True, changed_at_ms=5_000))
    relay_once(app)
    assert memberships(customerio)[-1] == "'8'"
    assert services(app).audience_store.history("id:p1")[8]["member"] is True


def test_support_sees_a_persons_audiences_and_their_history(app):
    post(app, audience_message(30, customer_id="ada", name="Readers"),
         audience_message(31, customer_id="ada", name="Writers"))
    post(app, audience_message(31, customer_id="ada", member=False, name="Writers"))
    relay = services(app)

    found = relay.person_audiences("ada")
    listed = app.test_cli_runner().invoke(args=["audiences", "show", "ada"])
    unknown = app.test_cli_runner().invoke(args=["audiences", "show", "nobody"])

    assert found["audiences"] == [30] and found["person"] == "id:ada"
    assert found["changes"]["31"]["member"] is False and found["changes"]["31"]["name"] == "Writers"
    assert listed.exit_code == 0 and "left" in listed.output and "Readers" in listed.output
    assert unknown.exit_code == 1


def test_the_admin_api_shows_a_persons_audiences(make_app):
    from tests.conftest import ADMIN_TOKEN

    app = make_app(MPARTICLE_AUDIENCE_ACCESS_KEY=firehose.ACCESS_KEY)
    post(app, audience_message(12, customer_id="bob"))
    client = app.test_client()

    found = client.get("/admin/audiences/bob", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    missing = client.get("/admin/audiences/zed",
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    assert found.status_code == 200 and found.get_json()["audiences"] == [12]
    assert missing.status_code == 404


def test_the_audiences_queue_counts_under_to_customerio_on_metrics(app):
    post(app, audience_message(1, customer_id="m1"), audience_message(2, customer_id="m2"))
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'cio_relay_queue_depth{direction="to_customerio"} 2.0' in text
    assert "to_customerio_audiences" not in text
