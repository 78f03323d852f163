"""mParticle batch -> Customer.io v2 batch items (CONTRACT §6 "What reaches Customer.io")."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.to_customerio.mapping import (
    MappingOptions,
    Person,
    classify,
    event_name,
    idempotency_key,
    items_for_batch,
    person_of,
    ulid,
)
from app.to_customerio.schema import load_batch
from app.to_customerio.ulid import ALPHABET, ulid_timestamp_ms

BATCH_MS = 1_713_484_800_999
EVENT_MS = 1_713_484_795_500
MPID = -8_792_314_256_487_318_231
# The catalog's names as the caller passes them (both naming styles; this package may
# not import the other direction's catalog).
KNOWN = frozenset({"email_opened", "Email Opened", "push_clicked", "Push Link Clicked"})
DEFAULT = MappingOptions(known_event_names=KNOWN)


def identities(customer_id: str | None = "42", email: str | None = "ann@example.com",
               ) -> list[dict[str, Any]]:
    entries = []
    if customer_id is not None:
        entries.append({"identity_type": "customer_id", "identity": customer_id,
                        "timestamp_unixtime_ms": 1_600_000_000_500})
    if email is not None:
        entries.append({"identity_type": "email", "identity": email,
                        "timestamp_unixtime_ms": 1_500_000_000_999})
    return entries


def batch(**changes: Any) -> dict[str, Any]:
    """A loaded batch (load_batch's output) of one person, no attributes, no events."""
    payload: dict[str, Any] = {
        "events": [],
        "user_identities": identities(),
        "mpid": MPID,
        "timestamp_unixtime_ms": BATCH_MS,
        "device_info": {"platform": "iOS"},
    }
    payload.update(changes)
    return load_batch(payload)


def custom_event(name: str = "Added to Cart", **data: Any) -> dict[str, Any]:
    return {"event_type": "custom_event", "data": {
        "event_name": name, "timestamp_unixtime_ms": EVENT_MS, **data,
    }}


def event(event_type: str, **data: Any) -> dict[str, Any]:
    return {"event_type": event_type, "data": {"timestamp_unixtime_ms": EVENT_MS, **data}}


def items(loaded: dict[str, Any], options: MappingOptions = DEFAULT) -> list[dict[str, Any]]:
    return items_for_batch(loaded, loaded["events"], options)


def identify_attributes(loaded: dict[str, Any], options: MappingOptions = DEFAULT,
                        ) -> dict[str, Any]:
    sent = items(loaded, options)
    assert sent and sent[0]["action"] == "identify"
    return sent[0]["attributes"]


def user(attributes: dict[str, Any], options: MappingOptions = DEFAULT, **changes: Any,
         ) -> dict[str, Any]:
    """The identify's attributes for a batch identified by email only (no email beside)."""
    loaded = batch(user_attributes=attributes, user_identities=identities(None), **changes)
    sent = identify_attributes(loaded, options)
    sent.pop("mparticle_id", None)
    return sent


# --- who --------------------------------------------------------------------------


def test_prefer_customer_id_identifies_by_the_customer_id() -> None:
    person = person_of(batch(), DEFAULT)

    assert person == Person({"id": "42"}, "ann@example.com", "id:42")


def test_prefer_customer_id_falls_back_to_the_email() -> None:
    person = person_of(batch(user_identities=identities(None)), DEFAULT)

    assert person == Person({"email": "ann@example.com"}, None, "email:ann@example.com")


def test_user_id_type_customer_id_never_identifies_by_email() -> None:
    options = MappingOptions(user_id_type="customer_id")

    assert person_of(batch(user_identities=identities(None)), options) is None
    assert person_of(batch(), options) == Person({"id": "42"}, "ann@example.com", "id:42")


def test_user_id_type_email_identifies_by_email_even_beside_a_customer_id() -> None:
    options = MappingOptions(user_id_type="email")

    assert person_of(batch(), options) == Person(
        {"email": "ann@example.com"}, None, "email:ann@example.com",
    )
    assert person_of(batch(user_identities=identities(email=None)), options) is None


def test_a_batch_without_a_usable_identity_has_no_person_and_no_items() -> None:
    loaded = batch(user_identities=[{"identity_type": "other", "identity": "x"}],
                   user_attributes={"plan": "gold"}, events=[custom_event()])

    assert person_of(loaded, DEFAULT) is None
    assert items(loaded) == []


def test_blank_identities_are_not_usable() -> None:
    assert person_of(batch(user_identities=identities("  ", "")), DEFAULT) is None


def test_identities_are_trimmed() -> None:
    person = person_of(batch(user_identities=identities(" 42 ", None)), DEFAULT)

    assert person is not None and person.identifiers == {"id": "42"}


def test_the_events_api_identity_map_names_the_person_too() -> None:
    loaded = batch(user_identities={"customer_id": 42, "email": "ann@example.com"})

    assert person_of(loaded, DEFAULT) == Person({"id": "42"}, "ann@example.com", "id:42")


def test_identity_types_are_matched_regardless_of_case() -> None:
    loaded = batch(user_identities=[{"identity_type": "Customer_ID", "identity": "42"}])

    assert person_of(loaded, DEFAULT) == Person({"id": "42"}, None, "id:42")


def test_a_customer_id_starting_with_cio_is_a_cio_id() -> None:
    person = person_of(batch(user_identities=identities("cio_d9c106000001")), DEFAULT)

    assert person == Person({"cio_id": "d9c106000001"}, None, "cio_id:d9c106000001")


def test_an_email_starting_with_cio_is_a_cio_id() -> None:
    person = person_of(batch(user_identities=identities(None, "cio_d9c1")), DEFAULT)

    assert person == Person({"cio_id": "d9c1"}, None, "cio_id:d9c1")


def test_a_bare_cio_prefix_names_no_one_and_the_email_is_used() -> None:
    person = person_of(batch(user_identities=identities("cio_")), DEFAULT)

    assert person == Person({"email": "ann@example.com"}, None, "email:ann@example.com")


def test_an_email_routes_the_same_whatever_its_case() -> None:
    upper = person_of(batch(user_identities=identities(None, "Ann@Example.com")), DEFAULT)

    assert upper is not None
    assert upper.identifiers == {"email": "Ann@Example.com"}
    assert upper.routing_key == "email:ann@example.com"


def test_an_unknown_user_id_type_is_refused() -> None:
    with pytest.raises(ValueError, match="user_id_type"):
        MappingOptions(user_id_type="mpid")


# --- idempotency keys --------------------------------------------------------------


def test_the_idempotency_key_is_the_source_message_id_first() -> None:
    one = custom_event(source_message_id="e8335d31", event_id=600467778066078)

    assert idempotency_key(batch(), one) == "e8335d31"


def test_the_idempotency_key_is_the_event_id_without_a_source_message_id() -> None:
    assert idempotency_key(batch(), custom_event(event_id=-600467778066078)) == "-600467778066078"


def test_without_mparticle_ids_the_idempotency_key_hashes_the_event() -> None:
    loaded = batch()
    key = idempotency_key(loaded, custom_event())
    content = json.dumps([MPID, "custom_event", EVENT_MS, "Added to Cart"], separators=(",", ":"))

    assert key == hashlib.sha256(content.encode()).hexdigest()[:32]
    assert idempotency_key(loaded, custom_event()) == key
    assert idempotency_key(loaded, custom_event("Other")) != key
    assert idempotency_key(loaded, custom_event(timestamp_unixtime_ms=EVENT_MS + 1)) != key
    assert idempotency_key(batch(mpid=1), custom_event()) != key


def test_the_hashed_key_uses_the_batch_time_when_the_event_has_none() -> None:
    timeless = {"event_type": "custom_event", "data": {"event_name": "Added to Cart"}}
    content = json.dumps([MPID, "custom_event", BATCH_MS, "Added to Cart"], separators=(",", ":"))

    assert idempotency_key(batch(), timeless) == hashlib.sha256(content.encode()).hexdigest()[:32]


def test_an_overlong_mparticle_id_is_replaced_by_its_hash() -> None:
    long_id = "m" * 500

    assert idempotency_key(batch(), custom_event(source_message_id=long_id)) == (
        hashlib.sha256(long_id.encode()).hexdigest()
    )


# --- classify ---------------------------------------------------------------------


def test_a_custom_event_is_forwarded() -> None:
    assert classify(custom_event(), DEFAULT) == ("forward", None)


@pytest.mark.parametrize("name", ["email_opened", "Email Opened", " push_clicked "])
def test_a_catalog_event_with_a_source_message_id_is_an_echo(name: str) -> None:
    echo = custom_event(name, custom_attributes={"source_message_id": "01E4C4CT6Y"})

    assert classify(echo, DEFAULT) == ("ignored", "echo")


def test_a_catalog_event_name_without_a_source_message_id_is_not_an_echo() -> None:
    assert classify(custom_event("email_opened", custom_attributes={}), DEFAULT) == (
        "forward", None,
    )


def test_a_source_message_id_on_another_event_is_not_an_echo() -> None:
    one = custom_event("Added to Cart", custom_attributes={"source_message_id": "x"})

    assert classify(one, DEFAULT) == ("forward", None)


def test_screen_views_are_forwarded_unless_turned_off() -> None:
    screen = event("screen_view", screen_name="Home")

    assert classify(screen, DEFAULT) == ("forward", None)
    assert classify(screen, MappingOptions(forward_screen_views=False)) == (
        "ignored", "screen views are not forwarded",
    )


def test_an_opt_out_is_forwarded_only_when_opted_out() -> None:
    assert classify(event("opt_out", is_opted_out=True), DEFAULT) == ("forward", None)
    assert classify(event("opt_out", is_opted_out=False), DEFAULT) == (
        "ignored", "opt_out with is_opted_out false",
    )


def test_push_registrations_and_unregistrations_are_forwarded() -> None:
    register = event("push_registration", register=True, registration_token="t")
    unregister = event("push_registration", register=False, registration_token="t")

    assert classify(register, DEFAULT) == ("forward", None)
    assert classify(unregister, DEFAULT) == ("forward", None)


def test_a_push_registration_without_a_register_flag_is_ignored() -> None:
    assert classify(event("push_registration", registration_token="t"), DEFAULT) == (
        "ignored", "push_registration without register true or false",
    )


def test_commerce_events_are_ignored_unless_turned_on() -> None:
    purchase = event("commerce_event", product_action={"action": "purchase"})

    assert classify(purchase, DEFAULT) == ("ignored", "commerce events are not forwarded")
    assert classify(purchase, MappingOptions(forward_commerce_events=True)) == ("forward", None)


def test_a_commerce_event_without_a_product_action_is_ignored() -> None:
    impression = event("commerce_event", product_impressions=[])

    assert classify(impression, MappingOptions(forward_commerce_events=True)) == (
        "ignored", "commerce_event without product_action.action",
    )


@pytest.mark.parametrize(
    "event_type",
    ["session_start", "session_end", "crash_report", "application_state_transition",
     "first_run", "breadcrumb", "network_performance", "uninstall", "push_message"],
)
def test_every_other_event_type_is_ignored_with_its_name(event_type: str) -> None:
    assert classify(event(event_type), DEFAULT) == (
        "ignored", f"event type not forwarded: {event_type}",
    )


def test_an_unusable_event_is_ignored_with_its_problem() -> None:
    assert classify({"event_type": "screen_view", "data": {}}, DEFAULT) == (
        "ignored", "screen_view without screen_name",
    )


# --- the identify -----------------------------------------------------------------


def test_the_identify_comes_first_at_the_batch_time_in_seconds_floored() -> None:
    sent = items(batch(user_attributes={"plan": "gold"}, events=[custom_event()]))

    assert [item["action"] for item in sent] == ["identify", "event"]
    assert sent[0] == {
        "type": "person",
        "identifiers": {"id": "42"},
        "action": "identify",
        "timestamp": BATCH_MS // 1000,
        "attributes": {"plan": "gold", "email": "ann@example.com", "mparticle_id": str(MPID)},
    }


def test_mparticle_id_alone_does_not_make_a_batch_worth_an_identify() -> None:
    loaded = batch(user_identities=identities(None), events=[event("session_start")])

    assert items(loaded) == []


def test_a_forwarded_event_alone_brings_an_identify_with_the_mparticle_id() -> None:
    sent = items(batch(user_identities=identities(None), events=[custom_event()]))

    assert sent[0]["attributes"] == {"mparticle_id": str(MPID)}


def test_user_attributes_alone_make_an_identify() -> None:
    sent = items(batch(user_identities=identities(None), user_attributes={"plan": "gold"}))

    assert len(sent) == 1
    assert sent[0]["attributes"] == {"plan": "gold", "mparticle_id": str(MPID)}


def test_an_email_beside_the_id_alone_makes_an_identify() -> None:
    sent = items(batch(events=[event("session_start")]))

    assert sent == [{
        "type": "person", "identifiers": {"id": "42"}, "action": "identify",
        "timestamp": BATCH_MS // 1000,
        "attributes": {"email": "ann@example.com", "mparticle_id": str(MPID)},
    }]


def test_no_email_attribute_when_identified_by_email_or_cio_id() -> None:
    by_email = batch(user_attributes={"plan": "gold"}, user_identities=identities(None))
    by_cio_id = batch(user_attributes={"plan": "gold"},
                      user_identities=identities("cio_d9c1"))

    assert "email" not in identify_attributes(by_email)
    assert "email" not in identify_attributes(by_cio_id)


def test_without_an_mpid_the_identify_has_no_mparticle_id() -> None:
    payload = {"user_identities": identities(None), "user_attributes": {"plan": "gold"}}

    assert identify_attributes(load_batch(payload)) == {"plan": "gold"}


def test_a_batch_without_a_time_sends_an_identify_without_a_timestamp() -> None:
    payload = {"user_identities": identities(None), "user_attributes": {"plan": "gold"}}

    assert "timestamp" not in items(load_batch(payload))[0]


@pytest.mark.parametrize("include", [True, False])
@pytest.mark.parametrize("first, last", [("$FirstName", "$LastName"),
                                         ("$firstname", "$LASTNAME")])
def test_the_names_are_always_sent_whatever_their_case(include: bool, first: str, last: str,
                                                       ) -> None:
    options = MappingOptions(include_user_attributes=include)

    assert user({first: "Ann", last: "Lee"}, options) == {"first_name": "Ann", "last_name": "Lee"}


def test_without_include_user_attributes_only_names_email_id_and_created_at_are_sent() -> None:
    options = MappingOptions(include_user_attributes=False, send_created_at=True)
    loaded = batch(user_attributes={"$FirstName": "Ann", "$City": "Paris", "plan": "gold"},
                   deleted_user_attributes=["trial", "$LastName"])

    assert identify_attributes(loaded, options) == {
        "first_name": "Ann", "last_name": "", "email": "ann@example.com",
        "created_at": 1_500_000_000, "mparticle_id": str(MPID),
    }


def test_without_include_user_attributes_other_attributes_alone_send_nothing() -> None:
    options = MappingOptions(include_user_attributes=False)
    loaded = batch(user_identities=identities(None), user_attributes={"plan": "gold"},
                   deleted_user_attributes=["trial"])

    assert items(loaded, options) == []


@pytest.mark.parametrize(
    ("reserved", "name"),
    [("$Mobile", "phone"), ("$Age", "age"), ("$Gender", "gender"), ("$Address", "address"),
     ("$City", "city"), ("$State", "state"), ("$Zip", "zip"), ("$Country", "country"),
     ("$mobile", "phone"), ("$ZIP", "zip"), ("$cOuNtRy", "country")],
)
def test_reserved_attributes_take_customerio_names_whatever_their_case(reserved: str, name: str,
                                                                      ) -> None:
    assert user({reserved: "x"}) == {name: "x"}


def test_other_attribute_names_are_sent_unchanged() -> None:
    names = {"plan": 1, "Favourite Colour": 2, "$Custom": 3, "first_name": 4, "éè": 5}

    assert user(names) == names


def test_a_plain_first_name_attribute_gives_way_to_the_reserved_one() -> None:
    assert user({"first_name": "plain", "$FirstName": "Ann"}) == {"first_name": "Ann"}


def test_a_list_value_is_joined_with_commas() -> None:
    assert user({"tags": ["a", "b", 3, True, None, 1.5]}) == {"tags": "a,b,3,true,1.5"}


def test_a_value_is_cut_to_1000_bytes_never_inside_a_character() -> None:
    sent = user({"even": "é" * 600, "odd": "a" + "é" * 600, "list": ["€" * 400, "x"]})

    assert sent["even"] == "é" * 500
    assert sent["odd"] == "a" + "é" * 499  # 999 bytes: the 500th é would straddle the limit
    assert sent["list"] == "€" * 333
    assert all(len(value.encode()) <= 1000 for value in sent.values())


def test_numbers_and_booleans_stay_json_scalars() -> None:
    assert user({"age": 41, "score": 9.5, "vip": True, "optin": False}) == {
        "age": 41, "score": 9.5, "vip": True, "optin": False,
    }


def test_a_number_too_long_for_1000_bytes_is_dropped_not_cut() -> None:
    assert user({"big": 10**1000, "fits": 10**999, "plan": "gold"}) == {
        "fits": 10**999, "plan": "gold",
    }


def test_nulls_and_non_finite_numbers_are_dropped() -> None:
    assert user({"tag": None, "nan": float("nan"), "inf": float("inf"), "plan": "gold"}) == {
        "plan": "gold",
    }


def test_an_object_value_is_sent_as_its_json_text_within_the_limit() -> None:
    assert user({"address": {"city": "Paris"}, "huge": {"x": "y" * 1000}}) == {
        "address": '{"city":"Paris"}',
    }


def test_a_name_over_150_bytes_is_dropped() -> None:
    fits, over = "n" * 150, "é" * 76  # 150 and 152 bytes

    assert user({fits: 1, over: 2}) == {fits: 1}


def test_at_most_300_attributes_are_sent_and_ours_are_always_among_them() -> None:
    options = MappingOptions(send_created_at=True)
    many = {f"a{i:03}": i for i in range(400)}
    loaded = batch(user_attributes={**many, "$FirstName": "Ann", "$LastName": "Lee"})
    sent = identify_attributes(loaded, options)

    assert len(sent) == 300
    for name in ("first_name", "last_name", "email", "created_at", "mparticle_id"):
        assert name in sent
    assert [name for name in sent if name.startswith("a")] == [f"a{i:03}" for i in range(295)]


def test_deleted_user_attributes_are_set_to_empty_text() -> None:
    assert user({"plan": "gold"}, deleted_user_attributes=["trial", "$City", "$FirstName"]) == {
        "first_name": "", "plan": "gold", "trial": "", "city": "",
    }


def test_a_deletion_wins_over_a_value_set_in_the_same_batch() -> None:
    assert user({"plan": "gold"}, deleted_user_attributes=["plan"]) == {"plan": ""}


def test_identifiers_are_never_taken_from_user_attributes() -> None:
    assert user({"id": "7", "email": "other@example.com", "cio_id": "x", "plan": "gold"}) == {
        "plan": "gold",
    }


def test_our_attributes_win_over_user_attributes_of_the_same_name() -> None:
    options = MappingOptions(send_created_at=True)
    loaded = batch(user_attributes={"mparticle_id": "mine", "created_at": 1})

    assert identify_attributes(loaded, options) == {
        "email": "ann@example.com", "created_at": 1_500_000_000, "mparticle_id": str(MPID),
    }


def test_created_at_is_the_earliest_identity_time_in_seconds_when_turned_on() -> None:
    options = MappingOptions(send_created_at=True)

    assert identify_attributes(batch(), options)["created_at"] == 1_500_000_000
    assert "created_at" not in identify_attributes(batch(user_attributes={"plan": "gold"}))


def test_created_at_alone_makes_an_identify() -> None:
    options = MappingOptions(send_created_at=True)
    loaded = batch(user_identities=identities(None))

    assert items(loaded, options)[0]["attributes"] == {
        "created_at": 1_500_000_000, "mparticle_id": str(MPID),
    }


def test_the_identify_names_the_person_by_cio_id() -> None:
    loaded = batch(user_identities=identities("cio_d9c1"), user_attributes={"plan": "gold"})

    assert items(loaded)[0]["identifiers"] == {"cio_id": "d9c1"}


# --- events -----------------------------------------------------------------------


def test_a_custom_event_becomes_an_event_with_a_ulid_and_its_attributes() -> None:
    one = custom_event(" Added to Cart ", source_message_id="e8335d31",
                       custom_attributes={"sku": "A-1", "qty": "2"})
    sent = items(batch(events=[one]))

    assert sent[1] == {
        "type": "person",
        "identifiers": {"id": "42"},
        "action": "event",
        "id": ulid(EVENT_MS, "e8335d31"),
        "name": "Added_to_Cart",
        "timestamp": EVENT_MS // 1000,
        "attributes": {"sku": "A-1", "qty": "2"},
    }


def test_a_custom_event_without_custom_attributes_has_empty_attributes() -> None:
    assert items(batch(events=[custom_event()]))[1]["attributes"] == {}


def test_an_event_without_its_own_time_takes_the_batch_time() -> None:
    timeless = {"event_type": "custom_event", "data": {"event_name": "x", "event_id": 5}}
    sent = items(batch(events=[timeless]))[1]

    assert sent["timestamp"] == BATCH_MS // 1000
    assert sent["id"] == ulid(BATCH_MS, "5")


def test_an_event_without_any_time_has_no_timestamp_and_a_ulid_at_time_zero() -> None:
    payload = {"user_identities": identities(None),
               "events": [{"event_type": "custom_event", "data": {"event_name": "x",
                                                                  "event_id": 5}}]}
    sent = items(load_batch(payload))[1]

    assert "timestamp" not in sent
    assert sent["id"] == ulid(0, "5")


def test_the_same_event_gets_the_same_id_on_every_mapping() -> None:
    one = custom_event()

    assert items(batch(events=[one]))[1]["id"] == items(batch(events=[one]))[1]["id"]
    assert items(batch(events=[one]))[1]["id"] == ulid(EVENT_MS, idempotency_key(batch(), one))


def test_a_screen_view_becomes_a_screen_named_after_its_screen_name() -> None:
    screen = event("screen_view", screen_name=" Product Detail ", event_id=9,
                   custom_attributes={"sku": "A-1"})
    sent = items(batch(events=[screen]))[1]

    assert sent == {
        "type": "person", "identifiers": {"id": "42"}, "action": "screen",
        "id": ulid(EVENT_MS, "9"), "name": "Product_Detail", "timestamp": EVENT_MS // 1000,
        "attributes": {"sku": "A-1"},
    }


def test_screen_views_turned_off_send_nothing() -> None:
    options = MappingOptions(forward_screen_views=False)
    loaded = batch(user_identities=identities(None), events=[event("screen_view",
                                                                   screen_name="Home")])

    assert items(loaded, options) == []


def test_an_opt_out_is_its_own_identify_unsubscribing_at_the_event_time() -> None:
    sent = items(batch(events=[event("opt_out", is_opted_out=True)]))

    assert [item["action"] for item in sent] == ["identify", "identify"]
    assert sent[1] == {
        "type": "person", "identifiers": {"id": "42"}, "action": "identify",
        "timestamp": EVENT_MS // 1000, "attributes": {"unsubscribed": True},
    }


def test_an_opt_out_that_is_not_opted_out_sends_nothing() -> None:
    loaded = batch(user_identities=identities(None),
                   events=[event("opt_out", is_opted_out=False)])

    assert items(loaded) == []


@pytest.mark.parametrize(
    ("platform", "customerio"),
    [("iOS", "ios"), ("Android", "android"), ("tvOS", "ios"), ("android", "android")],
)
def test_a_push_registration_adds_the_device_on_its_platform(platform: str, customerio: str,
                                                            ) -> None:
    register = event("push_registration", register=True, registration_token="tok-1")
    sent = items(batch(events=[register], device_info={"platform": platform}))[1]

    assert sent == {
        "type": "person", "identifiers": {"id": "42"}, "action": "add_device",
        "device": {"token": "tok-1", "platform": customerio, "last_used": EVENT_MS // 1000},
    }


def test_a_push_unregistration_deletes_the_device() -> None:
    unregister = event("push_registration", register=False, registration_token="tok-1")
    sent = items(batch(events=[unregister], device_info={"platform": "web"}))[1]

    assert sent == {
        "type": "person", "identifiers": {"id": "42"}, "action": "delete_device",
        "device": {"token": "tok-1"},
    }


APNS_TOKEN = "9f" * 32
FCM_TOKEN = "cEFolG5uRDGPizsaUh4X4m:APA91bFsKwjW9zUaiuJMCGqa3fLRiJ8fv1riQ6U-1iI72aSFZx5"


@pytest.mark.parametrize(
    ("device_info", "token", "platform"),
    [({"platform": "web"}, APNS_TOKEN, "ios"), ({}, APNS_TOKEN.upper(), "ios"),
     (None, FCM_TOKEN, "android"), ({"platform": "roku"}, "short", "android"),
     ({"platform": "Android"}, APNS_TOKEN, "android")],
)
def test_without_an_ios_or_android_platform_the_token_shape_decides(
    device_info: Any, token: str, platform: str,
) -> None:
    register = event("push_registration", register=True, registration_token=token)
    sent = items(batch(events=[register], device_info=device_info))

    assert sent[1]["device"]["platform"] == platform


def test_a_commerce_event_is_named_after_its_product_action_with_its_totals() -> None:
    purchase = event(
        "commerce_event", event_id=11, currency_code="EUR", custom_attributes={"store": "web"},
        product_action={
            "action": "purchase", "transaction_id": "T-9", "total_amount": 42.5,
            "tax_amount": 7.1, "shipping_amount": 4.9, "products": [{"id": "A-1"}],
        },
    )
    sent = items(batch(events=[purchase]), MappingOptions(forward_commerce_events=True))[1]

    assert sent == {
        "type": "person", "identifiers": {"id": "42"}, "action": "event",
        "id": ulid(EVENT_MS, "11"), "name": "purchase", "timestamp": EVENT_MS // 1000,
        "attributes": {"store": "web", "transaction_id": "T-9", "total_amount": 42.5,
                       "tax_amount": 7.1, "shipping_amount": 4.9, "currency_code": "EUR"},
    }


def test_commerce_events_send_nothing_unless_turned_on() -> None:
    purchase = event("commerce_event", product_action={"action": "purchase"})
    loaded = batch(user_identities=identities(None), events=[purchase])

    assert items(loaded) == []


def test_an_echo_is_never_written_back() -> None:
    echo = custom_event("Email Opened", custom_attributes={"source_message_id": "01E4C4CT6Y"})
    loaded = batch(user_identities=identities(None), events=[echo])

    assert items(loaded) == []


def test_events_keep_their_order_after_the_identify() -> None:
    events = [
        custom_event("b", event_id=1),
        event("session_start"),
        event("screen_view", screen_name="a", event_id=2),
        event("opt_out", is_opted_out=True),
        custom_event("c", event_id=3),
    ]
    sent = items(batch(events=events))

    assert [(item["action"], item.get("name")) for item in sent] == [
        ("identify", None), ("event", "b"), ("screen", "a"), ("identify", None),
        ("event", "c"),
    ]


def test_only_the_events_the_caller_passes_are_sent() -> None:
    accepted, duplicate = custom_event("new", event_id=1), custom_event("old", event_id=2)
    loaded = batch(events=[duplicate, accepted])

    sent = items_for_batch(loaded, [accepted], DEFAULT)

    assert [item.get("name") for item in sent] == [None, "new"]


def test_lone_surrogates_and_non_finite_numbers_never_reach_customerio() -> None:
    one = custom_event("Bad \ud800 Name", custom_attributes={
        "text": "x\udfffy", "\ud800": 1, "nan": float("nan"), "nested": [float("inf"), "ok"],
    })
    loaded = batch(events=[one], user_attributes={"plan": "g\ud800ld"})
    sent = items(loaded)

    body = json.dumps(sent, ensure_ascii=False, allow_nan=False).encode("utf-8")
    assert body
    assert sent[1]["name"] == "Bad_?_Name"
    assert sent[1]["attributes"] == {"text": "x?y", "?": 1, "nested": ["ok"]}
    assert sent[0]["attributes"]["plan"] == "g?ld"


# --- event names ------------------------------------------------------------------


def test_an_event_name_is_trimmed_and_its_spaces_become_underscores() -> None:
    assert event_name("  Added to  Cart ") == "Added_to__Cart"


def test_an_event_name_is_cut_to_100_bytes_never_inside_a_character() -> None:
    assert event_name("a" * 150) == "a" * 100
    assert event_name("a" + "😀" * 30) == "a" + "😀" * 24  # 97 bytes: a 25th would make 101


# --- ULIDs ------------------------------------------------------------------------


def test_a_ulid_carries_the_time_then_the_key_hash() -> None:
    digest = int.from_bytes(hashlib.sha256(b"key").digest()[:10], "big")
    value = (EVENT_MS << 80) | digest
    expected = "".join(ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(26)))

    assert ulid(EVENT_MS, "key") == expected


@pytest.mark.parametrize("timestamp", [-1, 2**48])
def test_a_time_outside_48_bits_has_no_ulid(timestamp: int) -> None:
    with pytest.raises(ValueError, match="48-bit"):
        ulid(timestamp, "key")


# --- properties -------------------------------------------------------------------

# Hypothesis's text never holds a lone surrogate, but JSON can escape one: mix them in.
SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])


def any_text(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.lists(st.characters() | SURROGATES, min_size=min_size, max_size=max_size).map(
        "".join
    )


ANY_TEXT = any_text(200)


def clean(value: str) -> str:
    """What the mapping makes of a lone surrogate: "?"."""
    return value.encode("utf-8", "replace").decode("utf-8")


@settings(max_examples=200)
@given(raw=ANY_TEXT | st.text(st.sampled_from(" a é€😀\t"), max_size=150))
def test_event_names_fit_customerio_and_keep_what_fits(raw: str) -> None:
    name = event_name(raw)
    encoded = name.encode("utf-8")  # valid UTF-8: never raises

    assert len(encoded) <= 100
    assert " " not in name
    expected = clean(raw).strip().replace(" ", "_")  # a lone surrogate becomes "?"
    if len(expected.encode("utf-8")) <= 100:
        assert name == expected
    else:
        assert expected.startswith(name)
        assert len(encoded) > 96  # cut at the limit, less at most one partial character


ATTRIBUTE_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), ANY_TEXT,
    st.text(st.sampled_from("aé€😀"), min_size=200, max_size=400),
    st.lists(st.one_of(st.none(), st.integers(), ANY_TEXT, st.floats()), max_size=8),
    st.dictionaries(any_text(5), st.integers() | ANY_TEXT, max_size=3),
)
ATTRIBUTE_NAMES = st.one_of(
    any_text(160),
    st.text(st.sampled_from("né€😀"), min_size=30, max_size=60),
    st.sampled_from(["$FirstName", "$lastname", "$Mobile", "$City", "email", "id"]),
)


@settings(max_examples=150)
@given(
    attributes=st.dictionaries(ATTRIBUTE_NAMES, ATTRIBUTE_VALUES, max_size=30),
    deleted=st.lists(ATTRIBUTE_NAMES, max_size=5),
    padding=st.integers(min_value=0, max_value=400),
    include=st.booleans(),
)
def test_any_user_attributes_fit_customerio_limits(
    attributes: dict[str, Any], deleted: list[str], padding: int, include: bool,
) -> None:
    attributes = {**{f"p{i}": i for i in range(padding)}, **attributes}
    options = MappingOptions(include_user_attributes=include, send_created_at=True)
    loaded = batch(user_attributes=attributes, deleted_user_attributes=deleted)
    sent = identify_attributes(loaded, options)

    assert len(sent) <= 300
    for name, value in sent.items():
        assert len(name.encode("utf-8")) <= 150
        text = value if isinstance(value, str) else json.dumps(value, allow_nan=False)
        assert len(text.encode("utf-8")) <= 1000
    json.dumps(sent, ensure_ascii=False, allow_nan=False).encode("utf-8")


KEYS = any_text(60)
TIMES = st.integers(min_value=0, max_value=2**48 - 1)


@settings(max_examples=200)
@given(timestamp=TIMES, key=KEYS)
def test_a_ulid_is_deterministic_crockford_and_carries_its_time(timestamp: int, key: str) -> None:
    value = ulid(timestamp, key)

    assert value == ulid(timestamp, key)
    assert len(value) == 26
    assert set(value) <= set(ALPHABET)
    assert ulid_timestamp_ms(value) == timestamp


@settings(max_examples=200)
@given(timestamp=TIMES, key=KEYS, other=KEYS)
def test_different_keys_give_different_random_parts(timestamp: int, key: str, other: str) -> None:
    assume(key != other)

    assert ulid(timestamp, key)[10:] != ulid(timestamp, other)[10:]
    assert ulid(timestamp, key)[:10] == ulid(timestamp, other)[:10]


@settings(max_examples=100)
@given(earlier=TIMES, later=TIMES, key=KEYS, other=KEYS)
def test_ulids_sort_by_time(earlier: int, later: int, key: str, other: str) -> None:
    assume(earlier < later)

    assert ulid(earlier, key) < ulid(later, other)


IDENTITY_VALUES = st.one_of(
    st.none(), st.just(""), st.just("cio_"), any_text(20, min_size=1),
    any_text(10, min_size=1).map(lambda text: "cio_" + text),
)



@settings(max_examples=200)
@given(customer_id=IDENTITY_VALUES, email=IDENTITY_VALUES,
       user_id_type=st.sampled_from(["prefer_customer_id", "customer_id", "email"]))
def test_person_of_follows_the_user_id_type(customer_id: str | None, email: str | None,
                                            user_id_type: str) -> None:
    loaded = batch(user_identities=identities(customer_id, email))
    person = person_of(loaded, MappingOptions(user_id_type=user_id_type))

    def usable(value: str | None) -> str | None:
        value = clean(value.strip()) if value is not None else None
        return value if value and value != "cio_" else None

    order = {"prefer_customer_id": [("id", customer_id), ("email", email)],
             "customer_id": [("id", customer_id)], "email": [("email", email)]}[user_id_type]
    chosen = next(((kind, usable(v)) for kind, v in order if usable(v)), None)
    if chosen is None:
        assert person is None
        return
    assert person is not None
    kind, value = chosen
    assert len(person.identifiers) == 1
    if value.startswith("cio_"):
        assert person.identifiers == {"cio_id": value[4:]}
        assert person.routing_key == f"cio_id:{value[4:]}"
        assert person.email is None
    elif kind == "id":
        assert person.identifiers == {"id": value}
        assert person.routing_key == f"id:{value}"
        beside = usable(email)
        expected_email = beside if beside and not beside.startswith("cio_") else None
        assert person.email == expected_email
    else:
        assert person.identifiers == {"email": value}
        assert person.routing_key == f"email:{value.lower()}"
        assert person.email is None


EVENTS = st.one_of(
    st.builds(custom_event, st.sampled_from(["Added to Cart", "email_opened", " x "]),
              custom_attributes=st.sampled_from([{}, {"source_message_id": "m"}])),
    st.builds(event, st.just("screen_view"), screen_name=st.just("Home")),
    st.builds(event, st.just("opt_out"), is_opted_out=st.booleans()),
    st.builds(event, st.just("push_registration"), register=st.booleans() | st.none(),
              registration_token=st.sampled_from([APNS_TOKEN, FCM_TOKEN])),
    st.builds(event, st.just("commerce_event"),
              product_action=st.sampled_from([{"action": "purchase"}, {}])),
    st.builds(event, st.sampled_from(["session_start", "crash_report", "uninstall"])),
)


@settings(max_examples=150)
@given(
    events=st.lists(EVENTS, max_size=6),
    attributes=st.sampled_from([{}, {"plan": "gold"}]),
    customer_id=st.sampled_from([None, "42", "cio_d9c1"]),
    email=st.sampled_from([None, "ann@example.com"]),
    device_info=st.sampled_from([None, {"platform": "iOS"}, {"platform": "web"}]),
    options=st.builds(MappingOptions, st.sampled_from(["prefer_customer_id", "customer_id",
                                                       "email"]),
                      include_user_attributes=st.booleans(), send_created_at=st.booleans(),
                      forward_screen_views=st.booleans(),
                      forward_commerce_events=st.booleans(), known_event_names=st.just(KNOWN)),
)
def test_every_forwarded_event_gets_exactly_one_item_after_the_identify(
    events: list[dict[str, Any]], attributes: dict[str, Any], customer_id: str | None,
    email: str | None, device_info: Any, options: MappingOptions,
) -> None:
    loaded = batch(events=events, user_attributes=attributes, device_info=device_info,
                   user_identities=identities(customer_id, email))
    forwarded = [one for one in events if classify(one, options)[0] == "forward"]
    sent = items_for_batch(loaded, events, options)
    person = person_of(loaded, options)

    if person is None:
        assert sent == []
        return
    if forwarded:
        assert len(sent) == 1 + len(forwarded)
    assert len(sent) - len(forwarded) in (0, 1)
    if sent:
        assert sent[0]["action"] == "identify"
        assert sent[0]["timestamp"] == BATCH_MS // 1000
    assert sent == items_for_batch(loaded, events, options)  # deterministic
    for item in sent:
        assert item["identifiers"] == person.identifiers
