"""Firehose deliveries of mParticle audience messages -> Customer.io identifies (CONTRACT §7)."""

from __future__ import annotations

import ast
import base64
import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.to_customerio import audiences
from app.to_customerio.audiences import (
    MAX_ATTRIBUTE_VALUE_BYTES,
    Change,
    Delivery,
    DeliveryTooLargeError,
    EnvelopeError,
    MembershipTooLongError,
    RecordError,
    decode_record,
    identify_item,
    parse_delivery,
    person_for,
    segment_membership,
)
from app.to_customerio.mapping import MappingOptions, Person, person_of

REQUEST_ID = "ed4acda5-034f-9f42-bba1-f29aea6d7d8f"
FIREHOSE_MS = 1_578_090_901_599
CHANGED_MS = 1_700_000_000_999
PREFER = MappingOptions()
BY_ID = Person({"id": "p.fogg138"}, "phileas@travelers.com", "id:p.fogg138")
BY_EMAIL = Person({"email": "phileas@travelers.com"}, None, "email:phileas@travelers.com")
_ABSENT = object()  # a field left out of a message or an envelope


def message(**changes: Any) -> dict[str, Any]:
    """An audience message as mParticle's Kinesis Firehose audience output sends it."""
    payload: dict[str, Any] = {
        "DeliveryStreamName": "mPTravelAudiences",
        "MembershipChangedTimestamp": str(CHANGED_MS),
        "AudienceId": 123123,
        "AudienceName": "LowEngagement",
        "IsMember": True,
        "UserIdentities": {
            "CustomerId": "p.fogg138",
            "Email": "phileas@travelers.com",
            "Other": "balloondude83",
            "FacebookId": "phileas83",
            "GoogleAdvertisingIdentifier": "phileas83",
        },
    }
    payload.update(changes)
    return {name: value for name, value in payload.items() if value is not _ABSENT}


def encoded(payload: Any) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def envelope(*records: Any, **changes: Any) -> dict[str, Any]:
    """A Firehose HTTP endpoint delivery body, AWS's example shape."""
    body: dict[str, Any] = {
        "requestId": REQUEST_ID,
        "timestamp": FIREHOSE_MS,
        "records": [{"data": data} for data in records],
    }
    body.update(changes)
    return {name: value for name, value in body.items() if value is not _ABSENT}


def raw(body: Any) -> bytes:
    return json.dumps(body).encode("utf-8")


# --- the envelope -----------------------------------------------------------------


def test_a_delivery_gives_its_request_id_its_time_and_its_records_in_order():
    first, second = encoded(message()), encoded(message(IsMember=False))

    delivery = parse_delivery(raw(envelope(first, second)), REQUEST_ID, None)

    assert delivery == Delivery(REQUEST_ID, FIREHOSE_MS, [first, second])


def test_awss_own_example_body_is_a_delivery_of_its_two_records():
    body = (b'{"requestId": "ed4acda5-034f-9f42-bba1-f29aea6d7d8f", "timestamp": 1578090901599,'
            b' "records": [{"data": "aGVsbG8="}, {"data": "aGVsbG8gd29ybGQ="}]}')

    delivery = parse_delivery(body, None, None)

    assert delivery.records == ["aGVsbG8=", "aGVsbG8gd29ybGQ="]
    assert delivery.request_id == REQUEST_ID


def test_the_header_request_id_wins_over_the_bodys():
    delivery = parse_delivery(raw(envelope(requestId="from-the-body")), "from-the-header", None)

    assert delivery.request_id == "from-the-header"


@pytest.mark.parametrize("header", [None, ""])
def test_the_bodys_request_id_is_kept_when_the_header_is_absent(header):
    delivery = parse_delivery(raw(envelope()), header, None)

    assert delivery.request_id == REQUEST_ID


def test_the_header_request_id_is_enough_when_the_body_has_none():
    delivery = parse_delivery(raw(envelope(requestId=_ABSENT)), REQUEST_ID, None)

    assert delivery.request_id == REQUEST_ID


@pytest.mark.parametrize("encoding", ["gzip", "GZIP", " gzip ", "x-gzip"])
def test_a_gzip_body_is_gunzipped_when_content_encoding_says_gzip(encoding):
    data = encoded(message())

    delivery = parse_delivery(gzip.compress(raw(envelope(data))), None, encoding)

    assert delivery.records == [data]


def test_a_gzip_body_of_several_members_is_read_whole():
    text = raw(envelope(encoded(message())))
    body = gzip.compress(text[:20]) + gzip.compress(text[20:])

    assert parse_delivery(body, None, "gzip").records == [encoded(message())]


@pytest.mark.parametrize("encoding", [None, "", "identity", "Identity"])
def test_a_body_without_content_encoding_is_read_as_it_is(encoding):
    assert parse_delivery(raw(envelope()), None, encoding).records == []


@pytest.mark.parametrize(
    "body",
    [b"", raw(envelope()), gzip.compress(raw(envelope()))[:-9], gzip.compress(raw(envelope()))
     + b"trailing"],
    ids=["empty", "not compressed", "cut short", "garbage after it"],
)
def test_a_body_that_is_not_gzip_under_content_encoding_gzip_is_an_envelope_error(body):
    with pytest.raises(EnvelopeError, match="gzip"):
        parse_delivery(body, REQUEST_ID, "gzip")


def test_a_gzip_body_that_unpacks_past_the_limit_is_too_large_and_an_envelope_error():
    body = gzip.compress(raw(envelope(encoded(message()) * 50)))

    with pytest.raises(DeliveryTooLargeError, match="over 1000 bytes"):
        parse_delivery(body, REQUEST_ID, "gzip", max_bytes=1000)
    assert issubclass(DeliveryTooLargeError, EnvelopeError)


def test_a_gzip_body_of_exactly_the_limit_is_taken():
    text = raw(envelope())

    assert parse_delivery(gzip.compress(text), None, "gzip", max_bytes=len(text)).records == []


def test_a_gzip_bomb_is_refused_without_unpacking_it_all():
    body = gzip.compress(b" " * 50_000_000 + raw(envelope()))  # about 50 KB

    with pytest.raises(DeliveryTooLargeError):
        parse_delivery(body, REQUEST_ID, "gzip", max_bytes=1_000_000)


@pytest.mark.parametrize("encoding", ["br", "deflate", "gzip, br"])
def test_a_content_encoding_firehose_does_not_use_is_an_envelope_error(encoding):
    with pytest.raises(EnvelopeError, match="Content-Encoding not supported"):
        parse_delivery(raw(envelope()), REQUEST_ID, encoding)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not JSON"),
        (b"{\"requestId\": ", "not JSON"),
        (b"\xff\xfe\xfa not text", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b"[]", "not a JSON object"),
        (b"\"records\"", "not a JSON object"),
        (b"null", "not a JSON object"),
        (raw(envelope(records=_ABSENT)), "no records list"),
        (raw(envelope(records=None)), "no records list"),
        (raw(envelope(records={"data": "aGVsbG8="})), "no records list"),
        (raw(envelope(records="aGVsbG8=")), "no records list"),
        (raw(envelope(records=["aGVsbG8="])), "record 0 is not an object"),
        (raw(envelope(records=[{"data": "aGVsbG8="}, {}])), "record 1 is not an object"),
        (raw(envelope(records=[{"data": 42}])), "record 0 is not an object with a string"),
        (raw(envelope(records=[{"data": None}])), "record 0 is not an object with a string"),
        (raw(envelope(records=[{"Data": "aGVsbG8="}])), "record 0 is not an object"),
    ],
    ids=lambda value: value[:40] if isinstance(value, str) else None,
)
def test_a_body_that_is_not_a_firehose_delivery_is_an_envelope_error(body, reason):
    with pytest.raises(EnvelopeError, match=reason):
        parse_delivery(body, REQUEST_ID, None)


@pytest.mark.parametrize("body_request_id", [_ABSENT, None, "", 42, ["r"]])
@pytest.mark.parametrize("header", [None, ""])
def test_a_delivery_without_any_request_id_is_an_envelope_error(body_request_id, header):
    with pytest.raises(EnvelopeError, match="no request id"):
        parse_delivery(raw(envelope(requestId=body_request_id)), header, None)


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [(FIREHOSE_MS, FIREHOSE_MS), (str(FIREHOSE_MS), FIREHOSE_MS), (0, 0), (_ABSENT, None),
     (None, None), ("soon", None), (True, None), (-1, None), (1.5e12, None), (2**48, None)],
)
def test_the_deliverys_time_is_its_milliseconds_else_none(timestamp, expected):
    delivery = parse_delivery(raw(envelope(timestamp=timestamp)), REQUEST_ID, None)

    assert delivery.timestamp_ms == expected


def test_an_empty_records_list_is_a_delivery_of_nothing():
    assert parse_delivery(raw(envelope()), REQUEST_ID, None).records == []


def test_unknown_envelope_fields_and_record_fields_are_ignored():
    body = envelope(commonAttributes={"env": "prod"})
    body["records"] = [{"data": "aGVsbG8=", "recordId": "1"}]

    assert parse_delivery(raw(body), None, None).records == ["aGVsbG8="]


def test_an_empty_record_is_left_to_decode_record_which_quarantines_it():
    delivery = parse_delivery(raw(envelope("")), REQUEST_ID, None)

    assert delivery.records == [""]
    with pytest.raises(RecordError, match="not JSON"):
        decode_record(delivery.records[0])


# --- one record -------------------------------------------------------------------


def test_a_member_added_message_decodes_to_a_change():
    change = decode_record(encoded(message()))

    assert change == Change(
        audience_id=123123,
        audience_name="LowEngagement",
        is_member=True,
        changed_at_ms=CHANGED_MS,
        identities={"customer_id": "p.fogg138", "email": "phileas@travelers.com"},
    )


def test_a_member_removed_message_decodes_with_is_member_false():
    assert decode_record(encoded(message(IsMember=False))).is_member is False


@pytest.mark.parametrize("audience_id", [123123, "123123", "0123123"])
def test_an_audience_id_may_be_an_integer_or_a_string_of_digits(audience_id):
    assert decode_record(encoded(message(AudienceId=audience_id))).audience_id == 123123


@pytest.mark.parametrize("changed_at", [CHANGED_MS, str(CHANGED_MS)])
def test_a_change_time_may_be_an_integer_or_a_string_of_digits(changed_at):
    change = decode_record(encoded(message(MembershipChangedTimestamp=changed_at)))

    assert change.changed_at_ms == CHANGED_MS


def test_base64_without_its_padding_is_decoded():
    data = encoded(message()).rstrip("=")
    assert not data.endswith("=")
    assert len(data) % 4  # the message's length leaves padding to drop

    assert decode_record(data) == decode_record(encoded(message()))


def test_a_utf8_byte_order_mark_before_the_json_is_skipped():
    data = base64.b64encode(b"\xef\xbb\xbf" + raw(message())).decode("ascii")

    assert decode_record(data).audience_id == 123123


def test_only_customer_id_and_email_are_kept_trimmed():
    identities = {"CustomerId": "  p.fogg138 ", "Email": "\tphileas@travelers.com\n",
                  "Other": "balloondude83", "MPID": "8675309", "customer_id": "not-this-key"}

    change = decode_record(encoded(message(UserIdentities=identities)))

    assert change.identities == {"customer_id": "p.fogg138", "email": "phileas@travelers.com"}


def test_identity_keys_are_matched_in_any_case_and_numbers_become_text():
    change = decode_record(encoded(message(UserIdentities={"customerid": 42, "EMAIL": "a@b.c"})))

    assert change.identities == {"customer_id": "42", "email": "a@b.c"}


@pytest.mark.parametrize("email", ["", "   ", None, True, ["a@b.c"], {"v": "a@b.c"}])
def test_an_unusable_identity_is_left_out_and_the_other_kept(email):
    change = decode_record(encoded(message(UserIdentities={"CustomerId": "c1", "Email": email})))

    assert change.identities == {"customer_id": "c1"}


@pytest.mark.parametrize("name", [_ABSENT, None, 42, ["LowEngagement"]])
def test_an_absent_or_unusable_audience_name_is_empty(name):
    assert decode_record(encoded(message(AudienceName=name))).audience_name == ""


def test_a_lone_surrogate_in_the_name_or_an_identity_becomes_a_question_mark():
    data = encoded('{"MembershipChangedTimestamp": 1, "AudienceId": 1, "IsMember": true,'
                   ' "AudienceName": "Fans \\ud83d", "UserIdentities": {"CustomerId": "c\\udc00"}}')

    change = decode_record(data)

    assert change.audience_name == "Fans ?"
    assert change.identities == {"customer_id": "c?"}


def test_unknown_message_fields_are_ignored():
    change = decode_record(encoded(message(AudienceDeleted=True, Extra={"nested": [1, 2]})))

    assert change.audience_id == 123123


_BAD_RECORDS = [
    ("!!!!", "not base64"),
    ("aGVsbG8gd29ybGQ", "not JSON"),  # "hello world", unpadded: base64, not JSON
    ("a", "not base64"),
    ("aGVs=bG8=", "not base64"),
    ("e30-", "not base64"),  # the URL-safe alphabet
    ("e30 ", "not base64"),
    ("ZTMw\n", "not base64"),
    ("é30=", "not base64"),
    (base64.b64encode(b"\xff\xfe{}").decode(), "not UTF-8"),
    ("", "not JSON"),
    (encoded("{\"AudienceId\": "), "not JSON"),
    (encoded("[" * 100_000), "not JSON"),
    (encoded([message()]), "not a JSON object"),
    (encoded("\"text\""), "not a JSON object"),
    (encoded(message(AudienceId=_ABSENT)), "AudienceId"),
    (encoded(message(AudienceId=None)), "AudienceId"),
    (encoded(message(AudienceId=123.0)), "AudienceId"),
    (encoded(message(AudienceId=-1)), "AudienceId"),
    (encoded(message(AudienceId="-1")), "AudienceId"),
    (encoded(message(AudienceId="12a")), "AudienceId"),
    (encoded(message(AudienceId=" 12")), "AudienceId"),
    (encoded(message(AudienceId="")), "AudienceId"),
    (encoded(message(AudienceId="١٢٣")), "AudienceId"),  # Arabic-Indic digits
    (encoded(message(AudienceId=True)), "AudienceId"),
    (encoded(message(AudienceId=2**63)), "AudienceId"),
    (encoded(message(AudienceId="9" * 4000)), "AudienceId"),
    (encoded(message(IsMember=_ABSENT)), "IsMember"),
    (encoded(message(IsMember="true")), "IsMember"),
    (encoded(message(IsMember=1)), "IsMember"),
    (encoded(message(IsMember=None)), "IsMember"),
    (encoded(message(MembershipChangedTimestamp=_ABSENT)), "MembershipChangedTimestamp"),
    (encoded(message(MembershipChangedTimestamp="yesterday")), "MembershipChangedTimestamp"),
    (encoded(message(MembershipChangedTimestamp=1.7e12)), "MembershipChangedTimestamp"),
    (encoded(message(MembershipChangedTimestamp=-1)), "MembershipChangedTimestamp"),
    (encoded(message(MembershipChangedTimestamp=True)), "MembershipChangedTimestamp"),
    (encoded(message(MembershipChangedTimestamp=2**48)), "MembershipChangedTimestamp"),
    (encoded(message(MembershipChangedTimestamp="")), "MembershipChangedTimestamp"),
    (encoded(message(UserIdentities=_ABSENT)), "UserIdentities"),
    (encoded(message(UserIdentities=[{"CustomerId": "c1"}])), "UserIdentities"),
    (encoded(message(UserIdentities={})), "UserIdentities"),
    (encoded(message(UserIdentities={"Other": "x", "MPID": "1"})), "UserIdentities"),
    (encoded(message(UserIdentities={"CustomerId": " ", "Email": ""})), "UserIdentities"),
]


@pytest.mark.parametrize(("data", "reason"), _BAD_RECORDS,
                         ids=[reason + f"-{n}" for n, (_, reason) in enumerate(_BAD_RECORDS)])
def test_a_record_that_is_not_an_audience_message_is_a_record_error(data, reason):
    with pytest.raises(RecordError, match=reason):
        decode_record(data)


def test_data_that_is_not_text_is_a_record_error():
    with pytest.raises(RecordError, match="not text"):
        decode_record(b"e30=")  # type: ignore[arg-type]


# --- who --------------------------------------------------------------------------


def change_of(**identities: str) -> Change:
    return Change(123123, "LowEngagement", True, CHANGED_MS, identities)


@pytest.mark.parametrize(
    ("user_id_type", "identities", "expected"),
    [
        ("prefer_customer_id", {"customer_id": "c1", "email": "a@b.c"},
         Person({"id": "c1"}, "a@b.c", "id:c1")),
        ("prefer_customer_id", {"email": "A@b.c"}, Person({"email": "A@b.c"}, None, "email:a@b.c")),
        ("prefer_customer_id", {"customer_id": "c1"}, Person({"id": "c1"}, None, "id:c1")),
        ("customer_id", {"customer_id": "c1", "email": "a@b.c"},
         Person({"id": "c1"}, "a@b.c", "id:c1")),
        ("customer_id", {"email": "a@b.c"}, None),
        ("email", {"customer_id": "c1", "email": "a@b.c"},
         Person({"email": "a@b.c"}, None, "email:a@b.c")),
        ("email", {"customer_id": "c1"}, None),
        ("prefer_customer_id", {"customer_id": "cio_abc", "email": "a@b.c"},
         Person({"cio_id": "abc"}, None, "cio_id:abc")),
        ("prefer_customer_id", {"customer_id": "c1", "email": "cio_abc"},
         Person({"id": "c1"}, None, "id:c1")),
        ("prefer_customer_id", {"customer_id": "cio_", "email": "a@b.c"},
         Person({"email": "a@b.c"}, None, "email:a@b.c")),
        ("email", {"email": "cio_abc"}, Person({"cio_id": "abc"}, None, "cio_id:abc")),
    ],
)
def test_a_change_is_about_the_person_user_id_type_names(user_id_type, identities, expected):
    options = MappingOptions(user_id_type=user_id_type)

    assert person_for(change_of(**identities), options) == expected


_identity_text = st.one_of(
    st.text(max_size=12), st.sampled_from(["cio_", "cio_x", " c1 ", "a@b.c", ""]))


@settings(max_examples=150)
@given(
    customer_id=st.none() | _identity_text,
    email=st.none() | _identity_text,
    user_id_type=st.sampled_from(["prefer_customer_id", "customer_id", "email"]),
)
def test_a_change_and_an_event_batch_of_the_same_identities_name_the_same_person(
    customer_id, email, user_id_type
):
    identities = {"CustomerId": customer_id, "Email": email}
    options = MappingOptions(user_id_type=user_id_type)
    batch = {"user_identities": [
        {"identity_type": kind, "identity": value}
        for kind, value in (("customer_id", customer_id), ("email", email)) if value is not None
    ]}
    try:
        change = decode_record(encoded(message(UserIdentities=identities)))
    except RecordError:
        assert person_of(batch, options) is None  # no usable identity at all
        return

    assert person_for(change, options) == person_of(batch, options)


# --- SegmentMembership ------------------------------------------------------------


def test_segment_membership_quotes_each_id_and_separates_them_with_commas():
    assert segment_membership([11036, 11034]) == "'11034','11036'"


def test_segment_membership_is_in_numeric_order_not_lexical():
    assert segment_membership([10, 9, 100, 11]) == "'9','10','11','100'"


def test_segment_membership_of_no_audience_is_empty():
    assert segment_membership([]) == ""


def test_segment_membership_lists_an_audience_once():
    assert segment_membership([7, 7, 3, 7]) == "'3','7'"


def test_segment_membership_takes_any_iterable_of_ids_such_as_a_dicts_keys():
    assert segment_membership({5: "Five", 2: "Two"}) == "'2','5'"
    assert segment_membership(n for n in (3, 1)) == "'1','3'"


def test_150_audiences_of_three_digit_ids_fit_in_899_bytes():
    text = segment_membership(range(100, 250))

    assert len(text.encode("utf-8")) == 150 * len("'123',") - 1 == 899


def test_150_audiences_of_five_digit_ids_do_not_fit_and_raise():
    # 150 * len("'11034',") - 1 = 1199 bytes
    with pytest.raises(MembershipTooLongError, match=r"1199 bytes.*: 150 audiences"):
        segment_membership(range(11_000, 11_150))


def test_125_five_digit_ids_fit_and_126_do_not():
    assert len(segment_membership(range(11_000, 11_125))) == 999
    with pytest.raises(MembershipTooLongError, match="1007 bytes"):
        segment_membership(range(11_000, 11_126))


def test_segment_membership_of_exactly_1000_bytes_fits_and_1001_raises():
    ids = [*range(11_000, 11_124), 110_000]  # 124 * len("'11000',") + len("'110000'") = 1000

    assert len(segment_membership(ids)) == MAX_ATTRIBUTE_VALUE_BYTES == 1000
    with pytest.raises(MembershipTooLongError, match="1001 bytes"):
        segment_membership([*range(11_000, 11_124), 1_100_000])


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=10**12), max_size=250))
def test_segment_membership_is_sorted_round_trips_and_never_passes_1000_bytes(ids):
    wanted = ",".join(f"'{n}'" for n in sorted(set(ids)))
    try:
        text = segment_membership(ids)
    except MembershipTooLongError:
        assert len(wanted.encode("utf-8")) > 1000
        return

    assert len(text.encode("utf-8")) <= 1000
    parsed = [int(part.strip("'")) for part in text.split(",")] if text else []
    assert parsed == sorted(parsed)
    assert set(parsed) == set(ids)
    assert len(parsed) == len(set(ids))
    assert all(re.fullmatch(r"'[0-9]+'", part) for part in text.split(",") if text)


# --- the identify -----------------------------------------------------------------


def test_an_identify_carries_every_audience_the_person_is_in_at_the_change_time():
    item = identify_item(BY_EMAIL, {11036: "Ibiza Dreamers", 11034: "Aspiring Athenians"},
                         {11036: ("Ibiza Dreamers", True)}, CHANGED_MS,
                         one_attribute_per_audience=False)

    assert item == {
        "type": "person",
        "identifiers": {"email": "phileas@travelers.com"},
        "action": "identify",
        "timestamp": 1_700_000_000,  # the change's milliseconds ÷ 1000, floored
        "attributes": {"SegmentMembership": "'11034','11036'"},
    }


def test_an_identify_by_id_carries_the_email_beside_it():
    item = identify_item(BY_ID, {1: "A"}, {1: ("A", True)}, CHANGED_MS,
                         one_attribute_per_audience=False)

    assert item["identifiers"] == {"id": "p.fogg138"}
    assert item["attributes"] == {"SegmentMembership": "'1'", "email": "phileas@travelers.com"}


def test_a_person_who_left_every_audience_gets_an_empty_segment_membership():
    item = identify_item(BY_EMAIL, {}, {7: ("Gone", False)}, CHANGED_MS,
                         one_attribute_per_audience=False)

    assert item["attributes"] == {"SegmentMembership": ""}


def test_in_attributes_are_true_for_the_audiences_the_person_is_in_and_false_for_one_left():
    item = identify_item(BY_EMAIL, {11034: "Aspiring Athenians", 11036: "Ibiza Dreamers"},
                         {11035: ("Possible Parisians", False)}, CHANGED_MS,
                         one_attribute_per_audience=True)

    assert item["attributes"] == {
        "SegmentMembership": "'11034','11036'",
        "In Aspiring Athenians": True,
        "In Ibiza Dreamers": True,
        "In Possible Parisians": False,
    }
    assert list(item["attributes"]) == ["SegmentMembership", "In Aspiring Athenians",
                                        "In Ibiza Dreamers", "In Possible Parisians"]


def test_without_one_attribute_per_audience_there_is_no_in_attribute():
    item = identify_item(BY_EMAIL, {1: "A"}, {2: ("B", False)}, CHANGED_MS,
                         one_attribute_per_audience=False)

    assert not any(name.startswith("In ") for name in item["attributes"])


def test_an_audience_the_person_is_in_is_true_even_when_changed_says_it_was_left():
    item = identify_item(BY_EMAIL, {1: "A"}, {1: ("A", False)}, CHANGED_MS,
                         one_attribute_per_audience=True)

    assert item["attributes"]["In A"] is True


def test_a_join_in_changed_that_member_of_lacks_sets_nothing():
    item = identify_item(BY_EMAIL, {}, {1: ("A", True)}, CHANGED_MS,
                         one_attribute_per_audience=True)

    assert item["attributes"] == {"SegmentMembership": ""}


def test_two_audiences_of_one_name_are_true_when_the_person_is_in_either():
    item = identify_item(BY_EMAIL, {2: "Fans"}, {1: ("Fans", False)}, CHANGED_MS,
                         one_attribute_per_audience=True)

    assert item["attributes"] == {"SegmentMembership": "'2'", "In Fans": True}


@pytest.mark.parametrize("name", ["", "   "])
def test_an_audience_without_a_name_gets_no_in_attribute(name):
    item = identify_item(BY_EMAIL, {1: name, 2: "B"}, {3: (name, False)}, CHANGED_MS,
                         one_attribute_per_audience=True)

    assert item["attributes"] == {"SegmentMembership": "'1','2'", "In B": True}


def test_an_in_attribute_name_over_150_bytes_is_dropped():
    fits, too_long = "é" * 73 + "x", "é" * 74  # "In " + 147 bytes; "In " + 148 bytes

    item = identify_item(BY_EMAIL, {1: fits, 2: too_long}, {3: (too_long, False)}, CHANGED_MS,
                         one_attribute_per_audience=True)

    assert item["attributes"] == {"SegmentMembership": "'1','2'", f"In {fits}": True}
    assert len(f"In {fits}".encode()) == 150


def test_in_attributes_stop_at_customerios_300_attributes_keeping_the_true_ones():
    member_of = {n: f"A{n}" for n in range(150)}
    changed = {n: (f"L{n}", False) for n in range(1000, 1200)}

    attributes = identify_item(BY_ID, member_of, changed, CHANGED_MS,
                               one_attribute_per_audience=True)["attributes"]

    assert len(attributes) == 300
    assert sum(value is True for value in attributes.values()) == 150
    assert "In L1147" in attributes
    assert "In L1148" not in attributes


def test_an_identify_whose_segment_membership_is_over_1000_bytes_raises():
    member_of = {n: f"A{n}" for n in range(11_000, 11_150)}

    with pytest.raises(MembershipTooLongError):
        identify_item(BY_EMAIL, member_of, {}, CHANGED_MS, one_attribute_per_audience=True)


def test_the_items_identifiers_are_a_copy_of_the_persons():
    item = identify_item(BY_ID, {}, {}, CHANGED_MS, one_attribute_per_audience=False)
    item["identifiers"]["id"] = "someone else"

    assert BY_ID.identifiers == {"id": "p.fogg138"}


def test_a_change_from_a_record_becomes_an_identify_that_encodes_to_utf8():
    change = decode_record(encoded('{"MembershipChangedTimestamp": "1700000000999",'
                                   ' "AudienceId": "11034", "AudienceName": "Fêtes \\ud800",'
                                   ' "IsMember": true, "UserIdentities": {"CustomerId": "c1"}}'))
    person = person_for(change, PREFER)
    assert person is not None

    item = identify_item(person, {change.audience_id: change.audience_name},
                         {change.audience_id: (change.audience_name, change.is_member)},
                         change.changed_at_ms, one_attribute_per_audience=True)

    assert item["attributes"] == {"SegmentMembership": "'11034'", "In Fêtes ?": True}
    assert item["timestamp"] == 1_700_000_000
    json.dumps(item, ensure_ascii=False).encode("utf-8")


# --- never anything but our errors ------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
_message_values = st.fixed_dictionaries(
    {},
    optional={
        "MembershipChangedTimestamp": _json_values | st.integers(0, 2**48).map(str),
        "AudienceId": _json_values | st.integers(0, 2**64).map(str),
        "AudienceName": _json_values,
        "IsMember": _json_values,
        "UserIdentities": _json_values | st.dictionaries(
            st.sampled_from(["CustomerId", "Email", "Other", "customerid"]),
            _json_values, max_size=3),
    },
)


@settings(max_examples=200)
@given(st.one_of(
    st.text(max_size=60),
    st.binary(max_size=60).map(lambda data: base64.b64encode(data).decode()),
    st.binary(max_size=60).map(lambda data: base64.b64encode(data).decode().rstrip("=")),
    _json_values.map(encoded),
    _message_values.map(encoded),
))
def test_decode_record_raises_nothing_but_a_record_error(data):
    try:
        change = decode_record(data)
    except RecordError:
        return
    assert isinstance(change.audience_id, int)
    assert isinstance(change.is_member, bool)
    assert change.identities
    person_for(change, PREFER)


_envelopes = st.fixed_dictionaries(
    {},
    optional={
        "requestId": _json_values,
        "timestamp": _json_values,
        "records": _json_values | st.lists(
            st.fixed_dictionaries({}, optional={"data": _json_values}), max_size=3),
    },
).map(raw)


@settings(max_examples=200)
@given(
    body=st.one_of(st.binary(max_size=200), _envelopes,
                   st.one_of(st.binary(max_size=100), _envelopes).map(gzip.compress)),
    header=st.sampled_from([None, "", REQUEST_ID]),
    encoding=st.sampled_from([None, "gzip", "identity", "br"]),
)
def test_parse_delivery_raises_nothing_but_an_envelope_error(body, header, encoding):
    try:
        delivery = parse_delivery(body, header, encoding, max_bytes=10_000)
    except EnvelopeError:
        return
    assert delivery.request_id
    assert all(isinstance(data, str) for data in delivery.records)


# --- purity -----------------------------------------------------------------------

PURE_IMPORTS = {
    "__future__", "base64", "binascii", "json", "zlib", "collections.abc", "dataclasses",
    "typing", "app.to_customerio.mapping", "app.to_customerio.schema",
}


def test_the_audience_module_imports_only_the_standard_library_and_the_pure_modules():
    tree = ast.parse(Path(audiences.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}

    assert imported <= PURE_IMPORTS
