"""The Customer.io client against a real stand-in server on loopback, and the stand-in itself."""

from __future__ import annotations

import ast
import base64
import email.utils
import hashlib
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app.to_customerio.client import (
    REGION_BASE_URLS,
    AuthError,
    BatchResult,
    CustomerIOClient,
    RejectedError,
    RetryableError,
    classify_status,
    credential_id,
    parse_retry_after,
    region_base_url,
)
from app.to_customerio.dry_run import DryRunClient
from tests.helpers.customerio_standin import (
    MAX_ITEM_BYTES,
    MAX_REQUEST_BYTES,
    CustomerIOStandIn,
    Reply,
    is_ulid,
)

ROOT = Path(__file__).resolve().parents[2]
SITE_ID = "test-site"
API_KEY = "test-api-key"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
TIMESTAMP = 1_700_000_000


def make_ulid(key: str, timestamp_ms: int = TIMESTAMP * 1000) -> str:
    """A valid ULID for a test key (its time part `timestamp_ms`)."""
    value = (timestamp_ms << 80) | int.from_bytes(hashlib.sha256(key.encode()).digest()[:10])
    return "".join(CROCKFORD[(value >> (5 * (25 - i))) & 31] for i in range(26))


def identify(person: str = "42", **changes: Any) -> dict[str, Any]:
    item = {
        "type": "person",
        "identifiers": {"id": person},
        "action": "identify",
        "timestamp": TIMESTAMP,
        "attributes": {"first_name": "Ada", "email": "ada@example.com"},
    }
    item.update(changes)
    return item


def event(key: str = "e-1", person: str = "42", **changes: Any) -> dict[str, Any]:
    item = {
        "type": "person",
        "identifiers": {"id": person},
        "action": "event",
        "id": make_ulid(key),
        "name": "purchase",
        "timestamp": TIMESTAMP,
        "attributes": {"total": 9.99},
    }
    item.update(changes)
    return item


def encode(items: list[dict[str, Any]]) -> bytes:
    return json.dumps({"batch": items}, separators=(",", ":")).encode()


@pytest.fixture
def standin() -> Iterator[CustomerIOStandIn]:
    with CustomerIOStandIn(site_id=SITE_ID, api_key=API_KEY) as server:
        yield server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as http:
        http.trust_env = False  # loopback only: no proxy from the environment
        yield http


@pytest.fixture
def client(standin: CustomerIOStandIn, http: requests.Session) -> CustomerIOClient:
    return CustomerIOClient(http, standin.base_url, SITE_ID, API_KEY)


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that is bound but not listening, so connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def post_raw(
    http: requests.Session, standin: CustomerIOStandIn, body: bytes, **kwargs: Any
) -> requests.Response:
    kwargs.setdefault("headers", {"Content-Type": "application/json"})
    kwargs.setdefault("auth", (SITE_ID, API_KEY))
    return http.post(f"{standin.base_url}/api/v2/batch", data=body, timeout=5, **kwargs)


def errors_of(response: requests.Response) -> list[dict[str, Any]]:
    return response.json()["errors"]


# The client: success


def test_a_taken_batch_is_a_200_with_no_item_errors(client, standin):
    items = [identify(), event()]

    result = client.send_batch(encode(items))

    assert result == BatchResult(status=200, item_errors={})
    assert standin.accepted_items() == items


def test_the_body_reaches_customerio_byte_identical_on_every_send(client, standin):
    body = json.dumps({"batch": [event("é")]}, ensure_ascii=False, indent=1).encode()

    client.send_batch(body)
    client.send_batch(body)

    assert [r.body for r in standin.requests] == [body, body]
    # Customer.io keeps the event once: a retried request creates nothing twice.
    assert len(standin.events()) == 1
    assert standin.duplicate_event_ids_dropped == 1


def test_the_request_carries_basic_auth_json_content_type_and_user_agent(standin, http):
    client = CustomerIOClient(http, standin.base_url, SITE_ID, API_KEY, user_agent="relay-test/1")

    client.send_batch(encode([identify()]))

    (request,) = standin.requests
    token = base64.b64encode(f"{SITE_ID}:{API_KEY}".encode()).decode()
    assert request.method == "POST"
    assert request.path == "/api/v2/batch"
    assert request.header("Authorization") == f"Basic {token}"
    assert request.header("Content-Type") == "application/json"
    assert request.header("User-Agent") == "relay-test/1"
    assert request.status == 200


def test_a_trailing_slash_of_the_base_url_is_ignored(standin, http):
    client = CustomerIOClient(http, standin.base_url + "/", SITE_ID, API_KEY)

    assert client.send_batch(encode([identify()])).status == 200
    assert client.batch_url == f"{standin.base_url}/api/v2/batch"


# The client: 207, some items refused


def test_a_207_names_the_refused_items_by_index_and_the_rest_are_taken(client, standin):
    standin.reject_items_where(lambda item: item.get("name") == "poison")
    items = [event("a"), event("b", name="poison"), identify()]

    result = client.send_batch(encode(items))

    assert result.status == 207
    assert result.item_errors == {1: "refused (item): refused by the test's rule"}
    assert standin.accepted_items() == [items[0], items[2]]


def test_a_207_carries_customerios_own_reason_for_each_item(client, standin):
    items = [event("ms", timestamp=TIMESTAMP * 1000), identify(), event("bad", id="nope")]

    result = client.send_batch(encode(items))

    assert result.status == 207
    assert set(result.item_errors) == {0, 2}
    assert result.item_errors[0].startswith("invalid (timestamp): ")
    assert "milliseconds" in result.item_errors[0]
    assert result.item_errors[2] == "invalid (id): 'nope' is not a ULID"
    assert standin.accepted_items() == [items[1]]


def test_a_207_entry_with_only_a_reason_or_only_a_message_still_reads(client, standin):
    errors = [
        {"batch_index": 0, "reason": "invalid"},
        {"batch_index": 1, "message": "attribute value too long"},
        {"batch_index": 1, "reason": "required", "field": "name", "message": "blank"},
        {"batch_index": 2},
    ]
    standin.script(Reply(207, body=json.dumps({"errors": errors})))

    result = client.send_batch(encode([identify("a"), identify("b"), identify("c")]))

    assert result.item_errors == {
        0: "invalid",
        1: "attribute value too long; required (name): blank",
        2: "refused, no reason given",
    }


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not json",
        "{}",
        '{"errors": []}',
        '{"errors": "some"}',
        '{"errors": [{"reason": "invalid", "message": "which one?"}]}',
        '{"errors": [{"batch_index": 0}, {"batch_index": "1"}]}',
        '{"errors": [{"batch_index": 3, "reason": "invalid"}]}',
        '{"errors": [{"batch_index": -1, "reason": "invalid"}]}',
        '{"errors": [{"batch_index": true, "reason": "invalid"}]}',
    ],
)
def test_a_207_that_does_not_say_which_items_is_a_rejection_to_split(client, standin, body):
    standin.script(Reply(207, body=body))

    with pytest.raises(RejectedError) as caught:
        client.send_batch(encode([identify("a"), identify("b"), identify("c")]))

    assert caught.value.status == 207
    assert caught.value.body == body
    assert "Customer.io refused the request's content (207)" in str(caught.value)


def test_a_200_that_lists_item_errors_is_taken_at_its_word(client, standin):
    body = '{"errors": [{"batch_index": 0, "reason": "required", "field": "name"}]}'
    standin.script(Reply(200, body=body))

    result = client.send_batch(encode([identify()]))

    assert result == BatchResult(status=200, item_errors={0: "required (name)"})


def test_a_200_with_an_unreadable_body_is_still_done(client, standin):
    standin.script(Reply(200, body="OK"))

    assert client.send_batch(encode([identify()])) == BatchResult(200, {})


# The client: errors


def test_a_malformed_request_is_a_rejection_carrying_customerios_body(client, standin):
    with pytest.raises(RejectedError) as caught:
        client.send_batch(b'{"items": []}')

    assert caught.value.status == 400
    (error,) = json.loads(caught.value.body)["errors"]
    assert error["field"] == "batch"
    assert str(caught.value) == "Customer.io refused the request's content (400)"


def test_a_request_over_500_kb_is_a_rejection_to_split(client, standin):
    filler = "f" * 900
    items = [identify(str(i), attributes={f"a{j}": filler for j in range(30)}) for i in range(20)]
    body = encode(items)
    assert len(body) > MAX_REQUEST_BYTES

    with pytest.raises(RejectedError) as caught:
        client.send_batch(body)

    assert caught.value.status == 413
    assert standin.accepted_items() == []


def test_a_wrong_api_key_is_an_auth_error_naming_customerio(standin, http):
    client = CustomerIOClient(http, standin.base_url, SITE_ID, "wrong-key")

    with pytest.raises(AuthError) as caught:
        client.send_batch(encode([identify()]))

    assert caught.value.status == 401
    assert str(caught.value) == "Customer.io refused the credentials (401)"
    assert json.loads(caught.value.body)["errors"][0]["reason"] == "unauthorized"
    assert standin.accepted_items() == []


def test_a_403_is_an_auth_error(client, standin):
    standin.script(Reply(403, body='{"errors": [{"reason": "forbidden"}]}'))

    with pytest.raises(AuthError) as caught:
        client.send_batch(encode([identify()]))

    assert caught.value.status == 403
    assert "forbidden" in caught.value.body


def test_a_429_with_retry_after_is_retryable_after_that_many_seconds(client, standin):
    standin.script(Reply(429, headers={"Retry-After": "7"}))

    with pytest.raises(RetryableError) as caught:
        client.send_batch(encode([identify()]))

    assert caught.value.status == 429
    assert caught.value.retry_after == 7.0
    assert "Customer.io answered 429" in caught.value.reason


def test_a_429_with_an_http_date_waits_until_then(client, standin):
    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    standin.script(Reply(429, headers={"Retry-After": later}))

    with pytest.raises(RetryableError) as caught:
        client.send_batch(encode([identify()]))

    assert 100 < caught.value.retry_after <= 120


@pytest.mark.parametrize("headers", [{}, {"Retry-After": "soon"}, {"Retry-After": "1.5"}])
def test_a_429_without_a_usable_retry_after_leaves_the_wait_to_the_caller(
    client, standin, headers
):
    standin.script(Reply(429, headers=headers))

    with pytest.raises(RetryableError) as caught:
        client.send_batch(encode([identify()]))

    assert caught.value.status == 429
    assert caught.value.retry_after is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_are_retryable_and_take_nothing(client, standin, status):
    standin.script(Reply(status, headers={"Retry-After": "3"}, body="try later"))

    with pytest.raises(RetryableError) as caught:
        client.send_batch(encode([identify()]))

    assert caught.value.status == status
    assert caught.value.body == "try later"
    assert caught.value.retry_after == 3.0
    assert standin.accepted_items() == []


@pytest.mark.parametrize("status", [404, 405, 415, 422, 301, 302, 307, 308])
def test_unexpected_statuses_keep_the_data_as_retryable(client, standin, status):
    standin.script(Reply(status, headers={"Location": "https://track-eu.customer.io/api/v2/batch"}))

    with pytest.raises(RetryableError) as caught:
        client.send_batch(encode([identify()]))

    assert caught.value.status == status
    assert len(standin.requests) == 1  # a redirect is never followed


def test_a_redirect_says_where_it_pointed(client, standin):
    standin.script(Reply(301, headers={"Location": "https://track-eu.customer.io/api/v2/batch"}))

    with pytest.raises(RetryableError) as caught:
        client.send_batch(encode([identify()]))

    assert "redirecting to https://track-eu.customer.io/api/v2/batch" in caught.value.reason
    assert "region" in caught.value.reason


def test_a_wrong_path_is_retryable_not_a_rejection(standin, http):
    client = CustomerIOClient(http, standin.base_url + "/v1", SITE_ID, API_KEY)

    with pytest.raises(RetryableError) as caught:
        client.send_batch(encode([identify()]))

    assert caught.value.status == 404


def test_a_long_error_body_is_truncated(client, standin):
    standin.script(Reply(500, body="x" * 10_000))

    with pytest.raises(RetryableError) as caught:
        client.send_batch(encode([identify()]))

    assert caught.value.body == "x" * 2000


def test_a_hang_past_the_read_timeout_is_retryable_within_the_timeout(standin, http):
    client = CustomerIOClient(http, standin.base_url, SITE_ID, API_KEY, read_timeout=0.3)
    standin.hang(10)

    started = time.monotonic()
    with pytest.raises(RetryableError) as caught:
        client.send_batch(encode([identify()]))
    elapsed = time.monotonic() - started

    assert elapsed < 2.0
    assert caught.value.status is None
    assert "Customer.io did not answer in time" in caught.value.reason
    assert isinstance(caught.value.__cause__, requests.Timeout)
    assert [r.status for r in standin.requests] == [0]
    assert standin.accepted_items() == []


def test_a_connection_closed_without_an_answer_is_retryable(standin, http):
    client = CustomerIOClient(http, standin.base_url, SITE_ID, API_KEY, read_timeout=5)
    standin.hang(0.05)

    with pytest.raises(RetryableError) as caught:
        client.send_batch(encode([identify()]))

    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, requests.ConnectionError)


def test_an_answer_after_the_read_timeout_is_retryable_and_the_retry_creates_nothing_twice(
    standin, http
):
    client = CustomerIOClient(http, standin.base_url, SITE_ID, API_KEY, read_timeout=0.2)
    standin.script(Reply(200, delay=1.0))
    body = encode([event("late")])

    with pytest.raises(RetryableError) as caught:
        client.send_batch(body)
    assert client.send_batch(body).status == 200

    assert caught.value.status is None
    # Customer.io took the first one after all; the event's ULID keeps the retry from doubling it.
    assert len(standin.events()) == 1
    assert standin.duplicate_event_ids_dropped == 1


def test_a_refused_connection_is_retryable(http, refusing_port):
    client = CustomerIOClient(http, f"http://127.0.0.1:{refusing_port}", SITE_ID, API_KEY)

    with pytest.raises(RetryableError) as caught:
        client.send_batch(encode([identify()]))

    assert caught.value.status is None
    assert "could not connect to Customer.io" in caught.value.reason
    assert isinstance(caught.value.__cause__, requests.ConnectionError)


def test_a_malformed_base_url_is_retryable_not_a_crash(http):
    client = CustomerIOClient(http, "not a url", SITE_ID, API_KEY)

    with pytest.raises(RetryableError):
        client.send_batch(encode([identify()]))
    with pytest.raises(RetryableError):
        client.check_credentials()


# The client: checking credentials (and the workspace's region)


def test_check_credentials_returns_the_region_sending_nothing(client, standin):
    assert client.check_credentials() == "us"

    (request,) = standin.requests
    token = base64.b64encode(f"{SITE_ID}:{API_KEY}".encode()).decode()
    assert (request.method, request.path, request.body) == ("GET", "/api/v1/accounts/region", b"")
    assert request.header("Authorization") == f"Basic {token}"
    assert request.header("Content-Type") is None
    assert standin.accepted_items() == []


def test_check_credentials_names_an_eu_workspace(client, standin):
    standin.set_region("eu", environment_id=77)

    assert client.check_credentials() == "eu"


def test_check_credentials_reads_the_region_from_the_url_when_it_is_missing(client, standin):
    standin.script_region(Reply(200, body='{"url": "https://track-eu.customer.io"}'))

    assert client.check_credentials() == "eu"


@pytest.mark.parametrize("body", ["", "[]", "{}", '{"region": ""}', '{"url": "https://x.io"}'])
def test_check_credentials_with_an_answer_naming_no_region_is_inconclusive(
    client, standin, body
):
    standin.script_region(Reply(200, body=body))

    with pytest.raises(RetryableError) as caught:
        client.check_credentials()

    assert "names no region" in caught.value.reason


def test_check_credentials_with_a_wrong_key_is_an_auth_error(standin, http):
    client = CustomerIOClient(http, standin.base_url, SITE_ID, "wrong-key")

    with pytest.raises(AuthError) as caught:
        client.check_credentials()

    assert caught.value.status == 401


def test_check_credentials_with_a_403_is_an_auth_error(client, standin):
    standin.script_region(Reply(403))

    with pytest.raises(AuthError):
        client.check_credentials()


@pytest.mark.parametrize("status", [400, 404, 429, 500, 503, 302])
def test_check_credentials_is_inconclusive_on_other_answers(client, standin, status):
    standin.script_region(Reply(status, headers={"Retry-After": "3", "Location": "/elsewhere"}))

    with pytest.raises(RetryableError) as caught:
        client.check_credentials()

    assert caught.value.status == status
    assert caught.value.retry_after == 3.0
    assert len(standin.requests) == 1


def test_check_credentials_hanging_past_the_read_timeout_is_inconclusive(standin, http):
    client = CustomerIOClient(http, standin.base_url, SITE_ID, API_KEY, read_timeout=0.2)
    standin.hang(10)

    with pytest.raises(RetryableError) as caught:
        client.check_credentials()

    assert "in time" in caught.value.reason


# The client's names: credential id, repr, regions, statuses


def test_repr_never_shows_the_key_only_a_hash_of_the_credential(http):
    client = CustomerIOClient(http, "https://track.customer.io", "site-123", "s3cr3t-key")

    assert "s3cr3t-key" not in repr(client)
    assert client.credential_id in repr(client)
    assert client.credential_id == credential_id("site-123", "s3cr3t-key")


def test_a_credential_id_is_twelve_hex_stable_and_differs_per_site_and_key():
    name = credential_id("site", "key")

    assert name == credential_id("site", "key")
    assert len(name) == 12
    assert int(name, 16) >= 0
    assert name != credential_id("site", "other-key")
    assert name != credential_id("other-site", "key")
    assert credential_id("ab", "c") != credential_id("a", "bc")
    assert "key" not in name


@pytest.mark.parametrize(
    ("region", "url"),
    [("us", "https://track.customer.io"), ("eu", "https://track-eu.customer.io")],
)
def test_each_region_has_its_track_api_host(region, url):
    assert region_base_url(region) == url


def test_an_unknown_region_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="us, eu"):
        region_base_url("au")

    assert set(REGION_BASE_URLS) == {"us", "eu"}


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (200, None),
        (207, None),
        (400, RejectedError),
        (413, RejectedError),
        (401, AuthError),
        (403, AuthError),
        (408, RetryableError),
        (422, RetryableError),
        (429, RetryableError),
        (500, RetryableError),
        (404, RetryableError),
        (302, RetryableError),
        (100, RetryableError),
    ],
)
def test_each_status_is_classified(status, error):
    assert classify_status(status) is error


def test_the_errors_are_the_delivery_policys_words():
    from app.relay import outcomes

    assert issubclass(RejectedError, outcomes.RejectedError)
    assert issubclass(AuthError, outcomes.AuthError)
    assert RetryableError is outcomes.RetryableError


def test_retry_after_reads_seconds_and_dates_and_ignores_the_rest():
    now = 1_700_000_000.0

    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0
    for value in (None, "", "soon", "-5", "1.5", "NaN", "٣"):
        assert parse_retry_after(value) is None


def test_the_client_and_dry_run_import_no_other_direction():
    for name in ("client.py", "dry_run.py"):
        tree = ast.parse((ROOT / "app" / "to_customerio" / name).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert not {m for m in imported if m and m.startswith("app.to_mparticle")}, name


# The dry run


def test_the_dry_run_logs_the_batch_it_would_send_and_says_it_was_taken(caplog):
    body = encode([identify(attributes={"note": "n" * 5000})])

    with caplog.at_level(logging.INFO, logger="app.to_customerio.dry_run"):
        result = DryRunClient().send_batch(body)

    assert result == BatchResult(status=200, item_errors={})
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert message.startswith("dry run: would POST /api/v2/batch {")
    assert message == "dry run: would POST /api/v2/batch " + body.decode()[:4000]


def test_the_dry_run_checks_nothing():
    assert DryRunClient().check_credentials() == "ok (dry run: nothing is sent)"


# The stand-in's own checks, so that tests relying on it can trust it


def test_standin_takes_every_item_the_relay_sends_and_records_them_per_person(standin, http):
    items = [
        identify("42"),
        event("e-1", "42"),
        event("s-1", "42", action="screen", name="Home"),
        {"type": "person", "identifiers": {"email": "b@example.com"}, "action": "add_device",
         "device": {"token": "tok", "platform": "ios", "last_used": TIMESTAMP}},
        {"type": "person", "identifiers": {"cio_id": "a3000001"}, "action": "delete_device",
         "device": {"token": "tok"}},
        identify("42", attributes={"unsubscribed": True}),
    ]

    response = post_raw(http, standin, encode(items))

    assert response.status_code == 200
    assert response.json() == {}
    assert standin.accepted_items() == items
    assert standin.items_by_person() == {
        ("id", "42"): [items[0], items[1], items[2], items[5]],
        ("email", "b@example.com"): [items[3]],
        ("cio_id", "a3000001"): [items[4]],
    }
    assert standin.events() == [items[1], items[2]]
    assert standin.wait_for_items(6, timeout=0)
    assert not standin.wait_for_items(7, timeout=0.01)


def test_standin_takes_items_exactly_at_the_limits(standin, http):
    name = "é" * 50  # 100 bytes of UTF-8
    attributes = {f"{i:03d}": "v" for i in range(299)} | {"n" * 150: "x" * 1000}

    response = post_raw(http, standin, encode([event(name=name), identify(attributes=attributes)]))

    assert response.status_code == 200


def _broken(change: str) -> dict[str, Any]:
    match change:
        case "ms_timestamp":
            return event(timestamp=TIMESTAMP * 1000)
        case "float_timestamp":
            return event(timestamp=TIMESTAMP + 0.5)
        case "string_timestamp":
            return event(timestamp=str(TIMESTAMP))
        case "no_timestamp":
            item = event()
            del item["timestamp"]
            return item
        case "identify_ms_timestamp":
            return identify(timestamp=TIMESTAMP * 1000)
        case "two_identifiers":
            return identify(identifiers={"id": "42", "email": "a@example.com"})
        case "no_identifiers":
            return identify(identifiers={})
        case "phone_identifier":
            return identify(identifiers={"phone": "+14155552671"})
        case "number_id":
            return identify(identifiers={"id": 42})
        case "cio_prefix":
            return identify(identifiers={"cio_id": "cio_a3000001"})
        case "ulid_short":
            return event(id=make_ulid("x")[:25])
        case "ulid_letter_u":
            return event(id="U" + make_ulid("x")[1:])
        case "ulid_overflow":
            return event(id="8" + make_ulid("x")[1:])
        case "ulid_missing":
            item = event()
            del item["id"]
            return item
        case "uuid_id":
            return event(id="6f0e1a36-8d42-4d1e-9a64-3a1c1b0c2f11")
        case "long_name":
            return event(name="é" * 50 + "x")
        case "blank_name":
            return event(name="")
        case "object_type":
            return identify(type="object")
        case "unknown_action":
            return identify(action="add_relationships")
        case "long_attribute_name":
            return identify(attributes={"n" * 151: 1})
        case "long_attribute_value":
            return identify(attributes={"bio": "é" * 501})
        case "too_many_attributes":
            return identify(attributes={f"a{i}": i for i in range(301)})
        case "attributes_list":
            return event(attributes=["a"])
        case "device_platform":
            return {"type": "person", "identifiers": {"id": "42"}, "action": "add_device",
                    "device": {"token": "t", "platform": "web"}}
        case "device_no_token":
            return {"type": "person", "identifiers": {"id": "42"}, "action": "delete_device",
                    "device": {}}
        case "device_ms_last_used":
            return {"type": "person", "identifiers": {"id": "42"}, "action": "add_device",
                    "device": {"token": "t", "platform": "android", "last_used": 10**12}}
        case "oversized":
            return identify(attributes={f"a{i}": "v" * 900 for i in range(40)})
        case "not_an_object":
            return ["identify"]  # type: ignore[return-value]
    raise AssertionError(change)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("ms_timestamp", "timestamp"),
        ("float_timestamp", "timestamp"),
        ("string_timestamp", "timestamp"),
        ("no_timestamp", "timestamp"),
        ("identify_ms_timestamp", "timestamp"),
        ("two_identifiers", "identifiers"),
        ("no_identifiers", "identifiers"),
        ("phone_identifier", "identifiers"),
        ("number_id", "identifiers.id"),
        ("cio_prefix", "identifiers.cio_id"),
        ("ulid_short", "id"),
        ("ulid_letter_u", "id"),
        ("ulid_overflow", "id"),
        ("ulid_missing", "id"),
        ("uuid_id", "id"),
        ("long_name", "name"),
        ("blank_name", "name"),
        ("object_type", "type"),
        ("unknown_action", "action"),
        ("long_attribute_name", "attributes"),
        ("long_attribute_value", "attributes.bio"),
        ("too_many_attributes", "attributes"),
        ("attributes_list", "attributes"),
        ("device_platform", "device.platform"),
        ("device_no_token", "device.token"),
        ("device_ms_last_used", "device.last_used"),
        ("oversized", "item"),
        ("not_an_object", "item"),
    ],
)
def test_standin_refuses_a_bad_item_by_index_and_takes_the_others(standin, http, change, field):
    good = [identify("1"), event("ok-1", "1")]
    bad = _broken(change)

    response = post_raw(http, standin, encode([good[0], bad, good[1]]))

    assert response.status_code == 207
    (error,) = errors_of(response)
    assert (error["batch_index"], error["field"]) == (1, field)
    assert error["reason"] and error["message"]
    assert standin.accepted_items() == good


def test_standin_says_why_a_millisecond_timestamp_is_refused(standin, http):
    response = post_raw(http, standin, encode([event(timestamp=1_700_000_000_123)]))

    (error,) = errors_of(response)
    assert "looks like milliseconds" in error["message"]


def test_standin_refuses_an_item_over_32_kb_as_too_large(standin, http):
    item = _broken("oversized")
    assert len(json.dumps(item)) > MAX_ITEM_BYTES

    (error,) = errors_of(post_raw(http, standin, encode([item])))

    assert error["reason"] == "too_large"
    assert f"over {MAX_ITEM_BYTES}" in error["message"]


def test_standin_accepts_a_lowercase_ulid_as_customerio_reads_them_case_blind(standin, http):
    assert is_ulid(make_ulid("x").lower())
    assert post_raw(http, standin, encode([event(id=make_ulid("x").lower())])).status_code == 200


def test_standin_refuses_a_request_over_500_kb_as_a_whole(standin, http):
    response = post_raw(http, standin, b'{"batch": [' + b" " * MAX_REQUEST_BYTES + b"]}")

    assert response.status_code == 413
    assert f"over {MAX_REQUEST_BYTES}" in response.text
    assert standin.requests[0].status == 413


@pytest.mark.parametrize(
    "body",
    [b"not json", b"\xff", b"[]", b"{}", b'{"batch": {}}', b'{"batch": []}', b'{"batch": [NaN]}'],
)
def test_standin_refuses_a_malformed_request_as_a_whole_with_400(standin, http, body):
    response = post_raw(http, standin, body)

    assert response.status_code == 400
    (error,) = errors_of(response)
    assert "batch_index" not in error
    assert error["message"]


def test_standin_refuses_a_body_not_declared_json(standin, http):
    response = post_raw(
        http, standin, encode([identify()]), headers={"Content-Type": "text/plain"}
    )

    assert response.status_code == 415


@pytest.mark.parametrize("auth", [None, (SITE_ID, "wrong"), ("other-site", API_KEY)])
def test_standin_refuses_missing_or_wrong_credentials_with_a_json_401(standin, http, auth):
    response = post_raw(http, standin, encode([identify()]), auth=auth)
    region = http.get(f"{standin.base_url}/api/v1/accounts/region", auth=auth, timeout=5)

    assert (response.status_code, region.status_code) == (401, 401)
    assert errors_of(response)[0]["reason"] == "unauthorized"
    assert standin.accepted_items() == []


def test_standin_region_answer_has_customerios_shape(standin, http):
    response = http.get(
        f"{standin.base_url}/api/v1/accounts/region", auth=(SITE_ID, API_KEY), timeout=5
    )

    assert response.status_code == 200
    assert response.json() == {
        "url": "https://track.customer.io", "region": "us", "environment_id": 1,
    }


def test_standin_answers_404_elsewhere_and_405_to_other_methods(standin, http):
    elsewhere = http.post(f"{standin.base_url}/api/v1/batch", data=b"{}", timeout=5)
    get_batch = http.get(f"{standin.base_url}/api/v2/batch", timeout=5)
    post_region = http.post(f"{standin.base_url}/api/v1/accounts/region", data=b"", timeout=5)

    assert [elsewhere.status_code, get_batch.status_code, post_region.status_code] == [
        404, 405, 405,
    ]
    assert [(r.method, r.status) for r in standin.requests] == [
        ("POST", 404), ("GET", 405), ("POST", 405),
    ]


def test_standin_drops_an_event_whose_id_it_already_took_and_counts_it(standin, http):
    first = event("same")
    again = event("same", name="purchase_again")  # same id: Customer.io keeps the first

    first_response = post_raw(http, standin, encode([first, again]))
    second_response = post_raw(http, standin, encode([event("same"), event("other")]))

    assert (first_response.status_code, second_response.status_code) == (200, 200)
    assert standin.events() == [first, event("other")]
    assert standin.duplicate_event_ids_dropped == 2


def test_standin_keeps_every_identify_since_identifies_have_no_id(standin, http):
    post_raw(http, standin, encode([identify(), identify()]))

    assert len(standin.accepted_items()) == 2
    assert standin.duplicate_event_ids_dropped == 0


def test_standin_serves_scripted_replies_in_order_then_validates_again(client, standin):
    standin.script(Reply(503), Reply(429, headers={"Retry-After": "1"}))

    with pytest.raises(RetryableError):
        client.send_batch(encode([identify()]))
    with pytest.raises(RetryableError):
        client.send_batch(encode([identify()]))
    client.send_batch(encode([identify()]))

    assert [r.status for r in standin.requests] == [503, 429, 200]
    assert len(standin.accepted_items()) == 1


def test_standin_validates_a_scripted_200(client, standin):
    standin.script(Reply(200, headers={"X-Test": "1"}))

    result = client.send_batch(encode([identify(identifiers={"id": "1", "email": "a@b.c"})]))

    assert result.status == 207
    assert standin.accepted_items() == []


def test_standin_in_an_outage_answers_every_endpoint_alike_until_it_ends(client, standin):
    standin.fail_for(60, Reply(503))

    with pytest.raises(RetryableError):
        client.send_batch(encode([identify()]))
    with pytest.raises(RetryableError):
        client.check_credentials()
    standin.fail_for(0, Reply(503))

    assert client.send_batch(encode([identify()])).status == 200
    assert client.check_credentials() == "us"
    assert [r.status for r in standin.requests] == [503, 503, 200, 200]


def test_standin_answering_slowly_still_takes_the_items(standin, http):
    standin.answer_slowly(0.05)

    started = time.monotonic()
    response = post_raw(http, standin, encode([identify()]))

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.05
    assert len(standin.accepted_items()) == 1


def test_standin_reset_forgets_records_scripts_rules_and_hangs(client, standin):
    client.send_batch(encode([event("a")]))
    standin.script(Reply(500))
    standin.script_region(Reply(500))
    standin.reject_items_where(lambda item: True)
    standin.hang(30)

    standin.reset()

    assert standin.requests == []
    assert standin.accepted_items() == []
    assert client.send_batch(encode([event("a")])) == BatchResult(200, {})
    assert standin.duplicate_event_ids_dropped == 0
    assert client.check_credentials() == "us"


def test_standin_stops_cleanly_with_a_request_hanging(http):
    standin = CustomerIOStandIn().start()
    client = CustomerIOClient(http, standin.base_url, "test-site", "test-api-key",
                              read_timeout=0.1)
    standin.hang(30)
    with pytest.raises(RetryableError):
        client.send_batch(encode([identify()]))

    started = time.monotonic()
    standin.stop()

    assert time.monotonic() - started < 5
    assert len(standin.requests) == 1


def test_standin_runs_standalone_quietly_until_sigterm(http):
    with socket.socket() as probe:  # a free port, for the child to bind
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tests.helpers.customerio_standin", "--port", str(port)]
    command += ["--site-id", "s", "--api-key", "k", "--region", "eu"]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        client = CustomerIOClient(http, f"http://127.0.0.1:{port}", "s", "k")
        for _ in range(200):
            try:
                region = client.check_credentials()
                break
            except RetryableError:
                time.sleep(0.05)
        assert region == "eu"
        assert client.send_batch(encode([identify()])).status == 200
    finally:
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=10)

    assert child.returncode == 0
    assert (stdout, stderr) == (b"", b"")
