"""The mParticle client against a real stand-in server on loopback, and the stand-in itself."""

from __future__ import annotations

import base64
import email.utils
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app.to_mparticle.client import (
    REGION_BASE_URLS,
    AuthError,
    BulkResult,
    MParticleClient,
    RejectedError,
    RetryableError,
    classify_status,
    credential_id,
    parse_retry_after,
    region_base_url,
)
from tests.helpers.mparticle_standin import MAX_BATCH_BYTES, MParticleStandIn, Reply

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key"
SECRET = "test-secret"
FEED_NAMESPACE = uuid.UUID("6f0e1a36-8d42-4d1e-9a64-3a1c1b0c2f11")


def make_batch(event_id: str = "01E4C4CT6YDC7Y5M7FE1GWWPQJ", **changes: Any) -> dict[str, Any]:
    """Return a batch as CONTRACT.md §5 describes it, with top-level keys changed as given."""
    batch = {
        "environment": "production",
        "source_request_id": f"req-{event_id}",
        "user_identities": {"customer_id": "42", "email": "person@example.com"},
        "events": [
            {
                "event_type": "custom_event",
                "data": {
                    "event_name": "email_opened",
                    "custom_event_type": "other",
                    "timestamp_unixtime_ms": 1_700_000_000_000,
                    "source_message_id": str(uuid.uuid5(FEED_NAMESPACE, event_id)),
                    "custom_attributes": {
                        "source_message_id": event_id,
                        "timestamp_unixtime_ms": 1_700_000_000_000,
                        "delivery_id": "RAECAAFwnUSneIa0ZXkmq8EdkAM==",
                        "machine": False,
                    },
                },
            }
        ],
    }
    batch.update(changes)
    return batch


def encode(batches: list[dict[str, Any]]) -> bytes:
    return json.dumps(batches, separators=(",", ":")).encode()


def data_of(batch: dict[str, Any]) -> dict[str, Any]:
    return batch["events"][0]["data"]


@pytest.fixture
def standin() -> Iterator[MParticleStandIn]:
    with MParticleStandIn(api_key=KEY, api_secret=SECRET) as server:
        yield server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as http:
        http.trust_env = False  # loopback only: no proxy from the environment
        yield http


@pytest.fixture
def mparticle_client(standin: MParticleStandIn, http: requests.Session) -> MParticleClient:
    return MParticleClient(http, standin.base_url, KEY, SECRET)


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that is bound but not listening, so connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def post_raw(
    http: requests.Session, standin: MParticleStandIn, body: bytes, **kwargs: Any
) -> requests.Response:
    kwargs.setdefault("headers", {"Content-Type": "application/json"})
    kwargs.setdefault("auth", (KEY, SECRET))
    return http.post(f"{standin.base_url}/bulkevents", data=body, timeout=5, **kwargs)


# The client: success


def test_accepted_bulk_returns_status_and_rate_limit_percent(mparticle_client, standin):
    result = mparticle_client.send_bulk(encode([make_batch()]))

    assert result == BulkResult(status=202, rate_limit_percent_used=1.0)
    assert len(standin.accepted_batches) == 1


def test_body_reaches_mparticle_byte_identical(mparticle_client, standin):
    body = json.dumps([make_batch("é-event")], ensure_ascii=False, indent=1).encode()

    mparticle_client.send_bulk(body)
    mparticle_client.send_bulk(body)

    assert [r.body for r in standin.requests] == [body, body]


def test_request_carries_basic_auth_json_content_type_and_user_agent(standin, http):
    client = MParticleClient(http, standin.base_url, KEY, SECRET, user_agent="relay-test/1")

    client.send_bulk(encode([make_batch()]))

    (request,) = standin.requests
    token = base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()
    assert request.method == "POST"
    assert request.path == "/v2/bulkevents"
    assert request.header("Authorization") == f"Basic {token}"
    assert request.header("Content-Type") == "application/json"
    assert request.header("User-Agent") == "relay-test/1"


def test_trailing_slash_of_base_url_is_ignored(standin, http):
    client = MParticleClient(http, standin.base_url + "/", KEY, SECRET)

    assert client.send_bulk(encode([make_batch()])).status == 202


def test_missing_or_garbage_rate_limit_header_is_none(mparticle_client, standin):
    standin.script(Reply(202, headers={"X-mp-rate-limit-percentage-used": "lots"}))

    assert mparticle_client.send_bulk(encode([make_batch()])).rate_limit_percent_used is None


def test_repr_never_shows_the_secret_or_the_key_only_a_hash_of_the_key(http):
    client = MParticleClient(http, "https://s2s.mparticle.com/v2", "the-key", "s3cr3t-value")

    assert "s3cr3t-value" not in repr(client)
    assert "the-key" not in repr(client)
    assert client.credential_id in repr(client)


def test_a_credential_id_is_short_stable_and_differs_per_key():
    assert credential_id("the-key") == credential_id("the-key")
    assert credential_id("the-key") != credential_id("other-key")
    assert len(credential_id("the-key")) == 12
    assert "the-key" not in credential_id("the-key")


# The client: errors


def test_wrong_secret_is_an_auth_error_from_the_standins_401(standin, http):
    client = MParticleClient(http, standin.base_url, KEY, "wrong-secret")

    with pytest.raises(AuthError) as caught:
        client.send_bulk(encode([make_batch()]))

    assert caught.value.status == 401
    assert "AUTHENTICATION_ERROR" in caught.value.body
    assert standin.accepted_batches == []


def test_scripted_403_is_an_auth_error(mparticle_client, standin):
    standin.script(Reply(403, body='{"errors": [{"code": "FORBIDDEN"}]}'))

    with pytest.raises(AuthError) as caught:
        mparticle_client.send_bulk(encode([make_batch()]))

    assert caught.value.status == 403
    assert "FORBIDDEN" in caught.value.body


def test_429_with_retry_after_is_retryable_after_that_many_seconds(mparticle_client, standin):
    standin.script(Reply(429, headers={"Retry-After": "7"}))

    with pytest.raises(RetryableError) as caught:
        mparticle_client.send_bulk(encode([make_batch()]))

    assert caught.value.status == 429
    assert caught.value.retry_after == 7.0


def test_429_without_retry_after_leaves_the_wait_to_the_caller(mparticle_client, standin):
    standin.script(Reply(429))

    with pytest.raises(RetryableError) as caught:
        mparticle_client.send_bulk(encode([make_batch()]))

    assert caught.value.retry_after is None


def test_a_429_tells_how_much_of_the_rate_limit_is_used(mparticle_client, standin):
    standin.script(
        Reply(429, headers={"Retry-After": "2", "X-mp-rate-limit-percentage-used": "100"})
    )

    with pytest.raises(RetryableError) as caught:
        mparticle_client.send_bulk(encode([make_batch()]))

    assert caught.value.rate_limit_percent_used == 100.0


@pytest.mark.parametrize("value", ["soon", "-5", "1.5", "Fri, 99 Foo 2024 00:00:00 GMT"])
def test_a_429_with_an_unreadable_retry_after_leaves_the_wait_to_the_caller(
    mparticle_client, standin, value
):
    standin.script(Reply(429, headers={"Retry-After": value}))

    with pytest.raises(RetryableError) as caught:
        mparticle_client.send_bulk(encode([make_batch()]))

    assert caught.value.status == 429
    assert caught.value.retry_after is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_are_retryable(mparticle_client, standin, status):
    standin.script(Reply(status, body="try later"))

    with pytest.raises(RetryableError) as caught:
        mparticle_client.send_bulk(encode([make_batch()]))

    assert caught.value.status == status
    assert caught.value.body == "try later"
    assert standin.accepted_batches == []


@pytest.mark.parametrize("status", [404, 405, 415, 301, 302, 307])
def test_unexpected_statuses_keep_the_data_as_retryable(mparticle_client, standin, status):
    standin.script(Reply(status, headers={"Location": "http://127.0.0.1:9/elsewhere"}))

    with pytest.raises(RetryableError) as caught:
        mparticle_client.send_bulk(encode([make_batch()]))

    assert caught.value.status == status
    assert len(standin.requests) == 1  # the redirect was not followed


def test_wrong_path_is_retryable_not_a_rejection(standin, http):
    client = MParticleClient(http, standin.base_url.removesuffix("/v2") + "/v1", KEY, SECRET)

    with pytest.raises(RetryableError) as caught:
        client.send_bulk(encode([make_batch()]))

    assert caught.value.status == 404


def test_400_is_a_rejection_carrying_mparticles_body(mparticle_client, standin):
    bad = make_batch(batch_id="nope")

    with pytest.raises(RejectedError) as caught:
        mparticle_client.send_bulk(encode([bad]))

    assert caught.value.status == 400
    assert "batch[0].batch_id" in json.loads(caught.value.body)["errors"][0]["message"]


@pytest.mark.parametrize("status", [413, 422])
def test_too_large_and_unprocessable_are_rejections(mparticle_client, standin, status):
    standin.script(Reply(status))

    with pytest.raises(RejectedError):
        mparticle_client.send_bulk(encode([make_batch()]))


def test_long_error_body_is_truncated(mparticle_client, standin):
    standin.script(Reply(500, body="x" * 10_000))

    with pytest.raises(RetryableError) as caught:
        mparticle_client.send_bulk(encode([make_batch()]))

    assert caught.value.body == "x" * 2000


def test_answer_slower_than_the_read_timeout_is_retryable(standin, http):
    client = MParticleClient(http, standin.base_url, KEY, SECRET, read_timeout=0.2)
    standin.script(Reply(202, delay=1.0))

    with pytest.raises(RetryableError) as caught:
        client.send_bulk(encode([make_batch()]))

    assert caught.value.status is None
    assert "in time" in caught.value.reason
    # The stand-in still accepted it: exactly the case the relay's source_message_id exists for.
    assert len(standin.accepted_batches) == 1


def test_refused_connection_is_retryable(http, refusing_port):
    client = MParticleClient(http, f"http://127.0.0.1:{refusing_port}/v2", KEY, SECRET)

    with pytest.raises(RetryableError) as caught:
        client.send_bulk(b"[]")

    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, requests.ConnectionError)


def test_malformed_base_url_is_retryable_not_a_crash(http):
    client = MParticleClient(http, "not a url", KEY, SECRET)

    with pytest.raises(RetryableError):
        client.send_bulk(b"[]")


# The client: checking credentials


def test_check_credentials_is_ok_with_the_right_key_and_secret(mparticle_client, standin):
    assert mparticle_client.check_credentials() == "ok"

    (request,) = standin.requests
    assert request.body == b"[]"
    assert standin.accepted_batches == []


def test_check_credentials_is_ok_when_the_empty_bulk_is_refused_as_content(
    mparticle_client, standin
):
    standin.script(Reply(400))

    assert mparticle_client.check_credentials() == "ok"


def test_check_credentials_with_a_wrong_secret_is_an_auth_error(standin, http):
    client = MParticleClient(http, standin.base_url, KEY, "wrong-secret")

    with pytest.raises(AuthError):
        client.check_credentials()


@pytest.mark.parametrize("status", [413, 422, 429, 503])
def test_check_credentials_is_inconclusive_on_other_answers(mparticle_client, standin, status):
    standin.script(Reply(status, headers={"Retry-After": "3"}))

    with pytest.raises(RetryableError) as caught:
        mparticle_client.check_credentials()

    assert caught.value.status == status
    assert caught.value.retry_after == 3.0


# Pure helpers


@pytest.mark.parametrize(
    ("region", "url"),
    [
        ("us1", "https://s2s.mparticle.com/v2"),
        ("us2", "https://s2s.us2.mparticle.com/v2"),
        ("eu1", "https://s2s.eu1.mparticle.com/v2"),
        ("au1", "https://s2s.au1.mparticle.com/v2"),
    ],
)
def test_each_region_has_its_events_api_host(region, url):
    assert region_base_url(region) == url


def test_unknown_region_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="us1, us2, eu1, au1"):
        region_base_url("ap9")

    assert set(REGION_BASE_URLS) == {"us1", "us2", "eu1", "au1"}


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (200, None),
        (202, None),
        (400, RejectedError),
        (413, RejectedError),
        (422, RejectedError),
        (401, AuthError),
        (403, AuthError),
        (408, RetryableError),
        (429, RetryableError),
        (500, RetryableError),
        (404, RetryableError),
        (302, RetryableError),
        (100, RetryableError),
    ],
)
def test_each_status_is_classified(status, error):
    assert classify_status(status) is error


def test_retry_after_in_seconds_is_parsed():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after("0") == 0.0


def test_retry_after_as_an_http_date_is_the_time_until_then():
    now = 1_700_000_000.0
    later = email.utils.formatdate(now + 30, usegmt=True)

    assert parse_retry_after(later, now=now) == 30.0


def test_retry_after_date_in_the_past_means_now():
    now = 1_700_000_000.0

    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "7 seconds", "NaN", "∞"])
def test_unusable_retry_after_is_ignored(value):
    assert parse_retry_after(value) is None


# The stand-in's own checks, so that tests relying on it can trust it


def test_standin_in_an_outage_answers_every_request_alike_until_reset(standin, http):
    standin.fail_for(60, Reply(503))
    body = encode([make_batch("a")])

    statuses = [post_raw(http, standin, body).status_code for _ in range(3)]
    standin.reset()
    after = post_raw(http, standin, body).status_code

    assert (statuses, after) == ([503, 503, 503], 202)
    assert standin.accepted_batches == [make_batch("a")]


def test_standin_answering_slowly_still_records_what_it_took(standin, http):
    standin.answer_slowly(0.05)

    response = post_raw(http, standin, encode([make_batch("a")]))

    assert response.status_code == 202
    assert standin.accepted_batches == [make_batch("a")]


def test_standin_accepts_a_valid_bulk_and_records_its_events(standin, http):
    batches = [make_batch("a"), make_batch("b")]

    response = post_raw(http, standin, encode(batches))

    assert response.status_code == 202
    assert response.content == b""
    assert standin.accepted_batches == batches
    assert standin.source_message_ids() == [data_of(b)["source_message_id"] for b in batches]
    assert standin.wait_for_events(2, timeout=0)


def test_standin_accepts_a_batch_with_email_only(standin, http):
    batch = make_batch(user_identities={"email": "person@example.com"})

    assert post_raw(http, standin, encode([batch])).status_code == 202


def test_standin_keeps_duplicate_source_message_ids_so_tests_can_count_them(standin, http):
    post_raw(http, standin, encode([make_batch("same")]))
    post_raw(http, standin, encode([make_batch("same")]))

    assert len(standin.source_message_ids()) == 2
    assert len(set(standin.source_message_ids())) == 1


def test_standin_accepts_an_empty_bulk(standin, http):
    assert post_raw(http, standin, b"[]").status_code == 202
    assert standin.accepted_batches == []


def _breaks(batch: dict[str, Any], change: str) -> None:
    data = data_of(batch)
    match change:
        case "batch_id":
            batch["batch_id"] = "b-1"
        case "batch_timestamp":
            batch["timestamp_unixtime_ms"] = 1
        case "environment":
            batch["environment"] = "staging"
        case "no_identity":
            batch["user_identities"] = {"other_id_1": "x"}
        case "null_email":
            batch["user_identities"] = {"customer_id": "42", "email": None}
        case "no_events":
            batch["events"] = []
        case "uuid4":
            data["source_message_id"] = str(uuid.uuid4())
        case "not_a_uuid":
            data["source_message_id"] = "01E4C4CT6YDC7Y5M7FE1GWWPQJ"
        case "event_type":
            batch["events"][0]["event_type"] = "screen_view"
        case "custom_event_type":
            data["custom_event_type"] = "navigation"
        case "timestamp_str":
            data["timestamp_unixtime_ms"] = "1700000000000"
        case "attribute_list":
            data["custom_attributes"]["recipients"] = [{"device_id": "d"}]
        case "attribute_null":
            data["custom_attributes"]["recipient"] = None
        case "long_value":
            data["custom_attributes"]["subject"] = "s" * 4097
        case "long_name":
            data["custom_attributes"]["n" * 257] = 1


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ("batch_id", "batch[1].batch_id"),
        ("batch_timestamp", "batch[1].timestamp_unixtime_ms"),
        ("environment", "batch[1].environment"),
        ("no_identity", "batch[1].user_identities"),
        ("null_email", "batch[1].user_identities.email"),
        ("no_events", "batch[1].events"),
        ("uuid4", "batch[1].events[0].data.source_message_id: not a UUIDv5"),
        ("not_a_uuid", "batch[1].events[0].data.source_message_id: not a UUIDv5"),
        ("event_type", "batch[1].events[0].event_type"),
        ("custom_event_type", "batch[1].events[0].data.custom_event_type"),
        ("timestamp_str", "batch[1].events[0].data.timestamp_unixtime_ms"),
        ("attribute_list", "batch[1].events[0].data.custom_attributes.recipients"),
        ("attribute_null", "batch[1].events[0].data.custom_attributes.recipient"),
        ("long_value", "batch[1].events[0].data.custom_attributes.subject"),
        ("long_name", "batch[1].events[0].data.custom_attributes: name"),
    ],
)
def test_standin_refuses_a_batch_that_breaks_the_contract_naming_where(
    standin, http, change, where
):
    bad = make_batch("bad")
    _breaks(bad, change)

    response = post_raw(http, standin, encode([make_batch("good"), bad]))

    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["message"].startswith(where)
    assert standin.accepted_batches == []
    assert standin.requests[0].status == 400


def test_standin_refuses_more_than_100_batches(standin, http):
    batches = [make_batch(str(i)) for i in range(101)]

    response = post_raw(http, standin, encode(batches))

    assert response.status_code == 400
    assert "101 batches" in response.text


def test_standin_accepts_exactly_100_batches(standin, http):
    batches = [make_batch(str(i)) for i in range(100)]

    assert post_raw(http, standin, encode(batches)).status_code == 202
    assert len(standin.accepted_events()) == 100


def test_standin_refuses_a_batch_over_128_kb(standin, http):
    batch = make_batch()
    attributes = data_of(batch)["custom_attributes"]
    for i in range(MAX_BATCH_BYTES // 4000 + 1):
        attributes[f"filler_{i}"] = "f" * 4000

    response = post_raw(http, standin, encode([batch]))

    assert response.status_code == 400
    assert "batch[0]:" in response.text
    assert "over 131072" in response.text


def test_standin_refuses_a_body_over_256_kb(standin, http):
    response = post_raw(http, standin, b"[" + b" " * (256 * 1024) + b"]")

    assert response.status_code == 400
    assert "over 262144" in response.text


@pytest.mark.parametrize("body", [b"{}", b"not json", b"[NaN]", b"\xff"])
def test_standin_refuses_a_body_that_is_not_a_json_array(standin, http, body):
    assert post_raw(http, standin, body).status_code == 400


def test_standin_refuses_a_body_that_is_not_declared_json(standin, http):
    response = post_raw(
        http, standin, encode([make_batch()]), headers={"Content-Type": "text/plain"}
    )

    assert response.status_code == 415


def test_standin_answers_404_elsewhere_and_405_to_other_methods(standin, http):
    elsewhere = http.post(f"{standin.base_url}/events", data=b"[]", timeout=5)
    wrong_method = http.get(f"{standin.base_url}/bulkevents", timeout=5)

    assert elsewhere.status_code == 404
    assert wrong_method.status_code == 405
    assert [(r.method, r.status) for r in standin.requests] == [("POST", 404), ("GET", 405)]


def test_standin_serves_scripted_replies_in_order_then_validates_again(mparticle_client, standin):
    standin.script(Reply(503), Reply(429, headers={"Retry-After": "1"}))

    with pytest.raises(RetryableError):
        mparticle_client.send_bulk(encode([make_batch()]))
    with pytest.raises(RetryableError):
        mparticle_client.send_bulk(encode([make_batch()]))
    mparticle_client.send_bulk(encode([make_batch()]))

    assert [r.status for r in standin.requests] == [503, 429, 202]
    assert len(standin.accepted_batches) == 1


def test_standin_validates_a_scripted_202(mparticle_client, standin):
    standin.script(Reply(202))

    with pytest.raises(RejectedError):
        mparticle_client.send_bulk(encode([make_batch(batch_id="x")]))


def test_standin_refuses_the_batches_a_test_picks_naming_their_index(mparticle_client, standin):
    standin.reject_batches_where(lambda batch: batch["source_request_id"] == "req-poison")
    batches = [make_batch("ok-1"), make_batch("poison"), make_batch("ok-2")]

    with pytest.raises(RejectedError) as caught:
        mparticle_client.send_bulk(encode(batches))
    mparticle_client.send_bulk(encode([batches[0], batches[2]]))

    assert "batch[1]" in caught.value.body
    assert standin.accepted_batches == [batches[0], batches[2]]


def test_standin_reset_forgets_records_scripts_and_rules(mparticle_client, standin):
    mparticle_client.send_bulk(encode([make_batch()]))
    standin.script(Reply(500))
    standin.reject_batches_where(lambda batch: True)

    standin.reset()

    assert standin.requests == []
    assert standin.accepted_batches == []
    assert mparticle_client.send_bulk(encode([make_batch()])).status == 202


def test_wait_for_events_gives_up_when_too_few_arrive(mparticle_client, standin):
    mparticle_client.send_bulk(encode([make_batch()]))

    assert standin.wait_for_events(1, timeout=0)
    assert not standin.wait_for_events(2, timeout=0.05)


def test_standin_stops_cleanly_with_a_reply_still_delayed(http):
    standin = MParticleStandIn().start()
    client = MParticleClient(http, standin.base_url, "test-key", "test-secret", read_timeout=0.1)
    standin.script(Reply(500, delay=30.0))
    with pytest.raises(RetryableError):
        client.send_bulk(b"[]")

    standin.stop()

    assert len(standin.requests) == 1


def test_standin_runs_standalone_quietly_until_sigterm(http):
    with socket.socket() as probe:  # a free port, for the child to bind
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tests.helpers.mparticle_standin", "--port", str(port)]
    command += ["--key", "k", "--secret", "s"]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        client = MParticleClient(http, f"http://127.0.0.1:{port}/v2", "k", "s")
        for _ in range(200):
            try:
                client.check_credentials()
                break
            except RetryableError:
                time.sleep(0.05)
        assert client.send_bulk(encode([make_batch()])).status == 202
    finally:
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=10)

    assert child.returncode == 0
    assert (stdout, stderr) == (b"", b"")
