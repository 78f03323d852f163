"""POST /webhooks/customerio under random and near-valid input (hypothesis), on the real Redis.

Whatever arrives (payloads with fields of the wrong type, missing, huge, odd Unicode or
nested junk; bodies that are not UTF-8, not JSON, not objects or have duplicated keys;
headers missing, garbled or stale), the endpoint never answers 5xx, every 2xx is one of
the contract's outcomes, and afterwards Redis is consistent: every queue entry is a
webhook we answered "queued", and every key but the streams and toggles has a TTL.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.json_body import MAX_JSON_DEPTH, encode_answer, parse_json
from app.services import services
from app.store import queue_entry
from tests.helpers import strategies
from tests.helpers.webhooks import SIGNING_KEY, signed_headers, webhook

URL = "/webhooks/customerio"
OUTCOMES_2XX = {"queued", "duplicate", "suppressed", "ignored", "quarantined"}
FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Any JSON value, nested a few levels: what a confused or hostile sender could put anywhere.
json_scalars = strategies.json_scalars()
json_values = strategies.json_values(json_scalars)
# Values near the envelope's limits, of the right type and not.
edge_values = st.sampled_from([
    "", "x", "x" * 64, "x" * 65, "x" * 128, "x" * 129, "x" * 200, "x" * 201, "y" * 20_000,
    "é" * 200, "😀" * 50, "\ud800", "a\udcffb", "\x00", "email", "opened",
    0, -1, 999_999_999, 1_000_000_000, 9_999_999_999, 10_000_000_000, 2**63, 2**64 + 1,
    1_700_000_000.0, 1_700_000_000.5, 1e999, -1e999, True, False, None, [], {}, [1], {"a": 1},
])
event_types = st.sampled_from([
    ("email", "opened"), ("email", "sent"), ("email", "clicked"), ("push", "opened"),
    ("sms", "delivered"), ("email", "drafted"), ("email", "teleported"), ("customer", "x"),
])
FIELDS = ("event_id", "object_type", "metric", "timestamp", "data")


@st.composite
def near_valid_payloads(draw: st.DrawFn) -> Any:
    """A realistic webhook with a few fields changed, removed or added."""
    object_type, metric = draw(event_types)
    payload: dict[str, Any] = webhook(
        object_type, metric,
        delivery_id=draw(st.sampled_from(["d-1", "d-2", None, "ünï-d"])),
        customer_id=draw(st.sampled_from(["42", "43", None])),
    )
    if draw(st.booleans()):  # a copy of an earlier event: duplicate or suppressed
        payload["event_id"] = draw(st.sampled_from(["01FUZZ-A", "01FUZZ-B"]))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["set", "edge", "drop", "data", "extra", "bulky"]))
        field = draw(st.sampled_from(FIELDS))
        if action == "set":
            payload[field] = draw(json_values)
        elif action == "edge":
            payload[field] = draw(edge_values)
        elif action == "drop":
            payload.pop(field, None)
        elif action == "data" and isinstance(payload.get("data"), dict):
            key = draw(st.sampled_from(["identifiers", "recipients", "delivery_id", "recipient",
                                        "customer_id", "href", "junk"]))
            payload["data"][key] = draw(json_values | edge_values)
        elif action == "extra":
            payload[draw(st.text(max_size=10))] = draw(json_values)
        elif action == "bulky" and isinstance(payload.get("data"), dict):
            payload["data"]["content"] = draw(st.text(max_size=200))
            payload["data"]["headers"] = {"X-Mailer": "customer.io"}
    return payload


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Bytes on the wire: valid JSON of many kinds, and things that are not."""
    kind = draw(st.sampled_from([
        "near-valid", "near-valid", "near-valid", "ascii-escaped", "utf16", "non-object",
        "duplicate-keys", "invalid-utf8", "truncated", "random-bytes", "deep", "constant",
    ]))
    payload = draw(near_valid_payloads())
    text = json.dumps(payload, ensure_ascii=False)
    if kind == "near-valid":
        return text.encode("utf-8", "surrogatepass")
    if kind == "ascii-escaped":
        return json.dumps(payload).encode()
    if kind == "utf16":
        return text.encode("utf-16", "surrogatepass")
    if kind == "non-object":
        return json.dumps(draw(st.lists(json_values, max_size=3) | json_scalars)).encode()
    if kind == "duplicate-keys":
        field = draw(st.sampled_from(FIELDS))
        return (text[:-1] + f', "{field}": ' + json.dumps(draw(json_values | edge_values))
                + "}").encode("utf-8", "surrogatepass")
    if kind == "invalid-utf8":
        raw = text.encode("utf-8", "surrogatepass")
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"])) \
            + raw[at:]
    if kind == "truncated":
        raw = text.encode("utf-8", "surrogatepass")
        return raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    if kind == "deep":
        return _nested_in_data(payload, draw(st.integers(30, 3000)))
    if kind == "constant":
        return text.replace('"timestamp": ', '"timestamp": NaN, "x": ', 1).encode(
            "utf-8", "surrogatepass")
    return draw(st.binary(max_size=300))


def _nested_in_data(payload: Any, depth: int) -> bytes:
    """The payload with ``data.junk`` nested ``depth`` lists deep (JSON text, so any depth)."""
    if isinstance(payload, dict) and isinstance(payload.get("data"), dict):
        payload = {**payload, "data": {**payload["data"], "junk": "__JUNK__"}}
        text = json.dumps(payload, ensure_ascii=False)
        text = text.replace('"__JUNK__"', "[" * depth + "]" * depth, 1)
    else:
        text = "[" * depth + "]" * depth
    return text.encode("utf-8", "surrogatepass")


def _latin1(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=max_size)


@st.composite
def header_sets(draw: st.DrawFn, body: bytes) -> dict[str, str]:
    """Headers as Customer.io sends them, or missing, garbled, stale or from the future."""
    kind = draw(st.sampled_from(["signed", "signed", "signed", "unsigned", "garbled-signature",
                                 "odd-timestamp", "skewed", "other-key"]))
    headers = signed_headers(body)
    if kind == "unsigned":
        headers.pop(draw(st.sampled_from(["X-CIO-Signature", "X-CIO-Timestamp"])))
    elif kind == "garbled-signature":
        headers["X-CIO-Signature"] = draw(_latin1(80))
    elif kind == "odd-timestamp":
        headers["X-CIO-Timestamp"] = draw(
            _latin1(20) | st.sampled_from(["", " 1700000000", "1e9", "-1", "9" * 30])
        )
    elif kind == "skewed":
        stamp = int(time.time()) + draw(st.sampled_from([-10_000, -301, 301, 10**6]))
        headers = signed_headers(body, timestamp=stamp)
    elif kind == "other-key":
        headers = signed_headers(body, key="not-" + SIGNING_KEY)
    headers["Content-Type"] = draw(st.sampled_from([
        "application/json", "text/plain; charset=latin-1", "application/x-www-form-urlencoded",
        "", "multipart/form-data; boundary=x",
    ]))
    if draw(st.booleans()):
        headers["X-Request-Id"] = draw(_latin1(150))
    return headers


def _check_redis_is_consistent(app: Any, queued_ids: Counter[str]) -> None:
    relay = services(app)
    redis = relay.redis
    entries = [fields for queue in relay.keys.queues() for _, fields in redis.xrange(queue)]
    assert len(entries) == sum(queued_ids.values())
    bodies_ = [json.loads(queue_entry.unpack(fields)) for fields in entries]
    assert Counter(body["event_id"] for body in bodies_) == queued_ids
    keep_forever = {relay.keys.toggles, relay.keys.toggle_changes}
    for key in redis.scan_iter(count=1000):
        if key in keep_forever or redis.type(key) == "stream":
            continue
        assert redis.ttl(key) > 0, f"{key} has no TTL"


def _check_answer(response: Any, queued_ids: Counter[str]) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json
    answer = response.get_json()
    assert isinstance(answer, dict)
    assert response.headers["X-Request-Id"]
    if 200 <= response.status_code < 300:
        assert answer["status"] in OUTCOMES_2XX
        if answer["status"] == "queued":
            assert response.status_code == 202
            queued_ids[answer["event_id"]] += 1
    else:
        assert response.status_code in (401, 413), answer
        assert set(answer) == {"error", "details"}


def test_any_body_signed_or_not_gets_a_contract_answer_and_redis_stays_consistent(
    app: Any, client: Any, redis: Any
) -> None:
    queued_ids: Counter[str] = Counter()
    answers: Counter[Any] = Counter()

    @FUZZ
    @given(data=st.data())
    def post_one(data: st.DataObject) -> None:
        body = data.draw(bodies())
        headers = data.draw(header_sets(body))
        for _ in range(data.draw(st.sampled_from([1, 1, 2]))):  # sometimes a retry
            response = client.post(URL, data=body, headers=headers)
            _check_answer(response, queued_ids)
            answers[response.get_json().get("status", response.status_code)] += 1

    post_one()
    _check_redis_is_consistent(app, queued_ids)
    # The generators reach every kind of answer, or the fuzzing proves little.
    assert {"queued", "duplicate", "quarantined", "ignored", 401} <= set(answers), answers


def test_near_valid_payloads_signed_correctly_are_never_refused(
    app: Any, client: Any, redis: Any
) -> None:
    queued_ids: Counter[str] = Counter()
    answers: Counter[str] = Counter()

    @FUZZ
    @given(payload=near_valid_payloads())
    def post_one(payload: Any) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")
        response = client.post(URL, data=body, headers=signed_headers(body))
        _check_answer(response, queued_ids)
        assert 200 <= response.status_code < 300
        answers[response.get_json()["status"]] += 1

    post_one()
    _check_redis_is_consistent(app, queued_ids)
    assert {"queued", "quarantined", "ignored"} <= set(answers)


@pytest.mark.parametrize("depth", [65, 900, 990, 1200, 100_000])
def test_deeply_nested_json_is_quarantined_not_a_500(client: Any, depth: int) -> None:
    # With message content the body is re-encoded (without it): that must not fail either.
    body = _nested_in_data(webhook("email", "sent", content="<html>"), depth)

    response = client.post(URL, data=body, headers=signed_headers(body))

    assert response.status_code == 202
    assert response.get_json()["status"] == "quarantined"


def test_json_nested_as_deep_as_allowed_is_queued(client: Any) -> None:
    # The envelope is level 1 and data level 2, so junk inside data may nest 62 more.
    body = _nested_in_data(webhook("email", "sent", content="<html>"), MAX_JSON_DEPTH - 2)

    response = client.post(URL, data=body, headers=signed_headers(body))

    assert response.get_json()["status"] == "queued"


# -- the body is read as Python's json reads it, though mostly by orjson -------------


def _as_json_reads_it(body: bytes) -> tuple[Any, ...]:
    """json.loads's answer (NaN and Infinity refused) as a flat list of (type, value), or
    that it refused. Walked without recursion: bodies nest thousands deep."""
    def refuse(name: str) -> Any:
        raise ValueError(name)

    return _reading(json.loads, body, parse_constant=refuse)


def _reading(parse: Any, body: bytes, **options: Any) -> tuple[Any, ...]:
    try:
        value = parse(body, **options)
    except (ValueError, RecursionError):
        return ("refused",)
    tokens: list[Any] = []
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            tokens.append(("dict", list(item)))
            pending.extend(item.values())
        elif isinstance(item, list):
            tokens.append(("list", len(item)))
            pending.extend(item)
        else:  # repr tells 1 from 1.0 and True, and -0.0 from 0.0
            tokens.append((type(item).__name__, repr(item)))
    return ("read", tokens)


@FUZZ
@given(body=bodies())
def test_any_body_is_read_as_pythons_json_reads_it(body: bytes) -> None:
    assert _reading(parse_json, body) == _as_json_reads_it(body)


@pytest.mark.parametrize("body", [
    b'{"a": 18446744073709551616}',  # past 64 bits: orjson would read a float
    b'{"a": 123456789012345678901234567890, "b": 1}',
    b'{"a": -9223372036854775809}',
    b'{"a": 18446744073709551615, "b": -9223372036854775808}',
    b'{"a": 1e999}', b'{"a": -1e999}', b'{"a": 1e-400}', b'{"a": NaN}', b'{"a": Infinity}',
    b'{"a": "\\ud800"}', b'{"a": "\xed\xa0\x80"}', b'\xef\xbb\xbf{"a": 1}',
    '{"a": "\u00e9"}'.encode("utf-16"), '{"a": 1}'.encode("utf-32"),
    b'{"a": 1, "a": 2}', b'{"a": -0.0, "b": -0, "c": 1.0, "d": 1E2}', b"[" * 1100 + b"]" * 1100,
])
def test_bodies_orjson_reads_otherwise_are_read_as_json_reads_them(body: bytes) -> None:
    assert _reading(parse_json, body) == _as_json_reads_it(body)


@pytest.mark.parametrize("payload", [
    {"status": "queued", "event_id": "01J", "event": "email_sent"},
    {"details": {"data": {0: ["not a string"]}}},  # marshmallow keys list items by index
    {"details": {"_body": ["bad \ud800 text"]}},
])
def test_answers_are_json_whatever_they_carry(payload: dict[str, Any]) -> None:
    assert json.loads(encode_answer(payload)) == json.loads(json.dumps(payload))
