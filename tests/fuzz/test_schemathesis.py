"""Schemathesis against the live app (in process, WSGI) on the real Redis: every route of
app/openapi.yaml, each answer checked against the document.

Checks: no 5xx at all (``not_a_server_error``: Redis is up, so not even a documented
503), and a documented status code, content type, headers and body schema. Each
operation is its own test (one app, Redis flushed before and after).

Requests carry what their route needs to get past its door, so that the bodies and
parameters are what is fuzzed: the Customer.io webhook's body is signed as it is sent
(with the current time; the signature checks stay on), mParticle's Authorization,
Firehose's access key and the admin token are the configured ones, a gzip
Content-Encoding gets a gzipped body, and the console gets a live sign-in's cookie and
its CSRF token. Schemathesis's negative data still leaves a required header or the
credentials out now and then: those answers (401) must be documented too.

Budget: ``FUZZ_MAX_EXAMPLES`` (default 25) examples per operation, positive and
negative, in the examples and fuzzing phases, and a wall clock of
``FUZZ_BUDGET_SECONDS`` (default 90) for the module, past which the examples left send
nothing. Deterministic (one seed) unless ``FUZZ_RANDOM=1``;
``FUZZ_PHASES=examples,coverage,fuzzing`` adds schemathesis's boundary-value phase;
``FUZZ_REPORT=path.json`` writes the requests and answers per operation.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app import create_app
from app.to_mparticle.signature import sign
from tests.conftest import ADMIN_TOKEN
from tests.helpers.webhooks import SIGNING_KEY

DOCUMENT = Path(__file__).resolve().parents[2] / "app" / "openapi.yaml"
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))
BUDGET_SECONDS = float(os.environ.get("FUZZ_BUDGET_SECONDS", "90"))
RANDOM = os.environ.get("FUZZ_RANDOM") == "1"

MPARTICLE_AUTHORIZATION = "Bearer fuzz-mparticle-webhook-authorization"
FIREHOSE_ACCESS_KEY = "fuzz-firehose-access-key-0123456789"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]

schema = schemathesis.openapi.from_path(str(DOCUMENT))
schema.config.generation.update(modes=["positive", "negative"], max_examples=MAX_EXAMPLES,
                                deterministic=not RANDOM)
schema.config.phases.update(phases=os.environ.get("FUZZ_PHASES", "examples,fuzzing").split(","))

# When this module's first test started (not its import: collection comes long before).
_clock: dict[str, float] = {}
_sent: Counter[str] = Counter()
_statuses: dict[str, Counter[int]] = {}


@pytest.fixture
def fuzz_app(make_settings: Callable[..., Any], redis: Any) -> Iterator[Flask]:
    """The relay with every route on, on the real Redis, sending nowhere (no worker runs)."""
    app = create_app(make_settings(
        {"customerio": {"dry_run": True}, "mparticle": {"dry_run": True}},
        MPARTICLE_WEBHOOK_AUTHORIZATION=MPARTICLE_AUTHORIZATION,
        MPARTICLE_AUDIENCE_ACCESS_KEY=FIREHOSE_ACCESS_KEY,
    ), redis_client=redis)
    app.wsgi_app = _closing(app.wsgi_app)  # type: ignore[method-assign]
    yield app
    _write_report()


def _closing(wsgi_app: Callable[..., Any]) -> Callable[..., Any]:
    """Read each answer whole and close it, as a WSGI server does.

    Schemathesis's WSGI transport never closes an answer, which leaves a static file
    open (a ResourceWarning, an error under this suite's warning filter).
    """

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        answer = wsgi_app(environ, start_response)
        try:
            return [b"".join(answer)]
        finally:
            close = getattr(answer, "close", None)
            if close is not None:
                close()

    return app


@pytest.fixture
def console_session(fuzz_app: Flask) -> tuple[str, str]:
    """A live console sign-in: the session cookie's value and its forms' CSRF token."""
    client = fuzz_app.test_client()
    answer = client.post("/admin/console/login", data={
        "token": ADMIN_TOKEN, "csrf_token": _csrf_token(client, "/admin/console/login")})
    assert answer.status_code == 303, answer.get_data(as_text=True)
    # Signing in starts a fresh session: the forms' token is the new session's.
    token = _csrf_token(client, "/admin/console/events")
    cookie = client.get_cookie("session", path="/admin")
    assert cookie is not None
    return cookie.value, token


def _csrf_token(client: Any, page: str) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"',
                      client.get(page).get_data(as_text=True))
    assert match, f"no CSRF token on {page}"
    return match.group(1)


def _body_bytes(case: Any) -> bytes:
    """The body as it will be sent (JSON as the requests transport writes it)."""
    if isinstance(case.body, NotSet):
        return b""
    if isinstance(case.body, bytes):
        return case.body
    return json.dumps(case.body).encode()


def _is_json_body(case: Any) -> bool:
    return not isinstance(case.body, NotSet) and (case.media_type or "").endswith("json")


def _door(case: Any, console: tuple[str, str]) -> dict[str, Any]:
    """What this request needs to get past its route's authentication, as call kwargs."""
    path = case.path
    if path == "/webhooks/customerio":
        body = _body_bytes(case)
        stamp = str(int(time.time()))
        return {"data": body, "headers": {"X-CIO-Timestamp": stamp, "X-CIO-Signature":
                                          sign(SIGNING_KEY.encode(), stamp, body)}}
    if path == "/webhooks/mparticle":
        return {"headers": {"Authorization": MPARTICLE_AUTHORIZATION}}
    if path == "/webhooks/mparticle/audiences":
        sent: dict[str, Any] = {"headers": {"X-Amz-Firehose-Access-Key": FIREHOSE_ACCESS_KEY}}
        encoding = {name.lower(): value for name, value in (case.headers or {}).items()}
        if (str(encoding.get("content-encoding", "")).strip().lower() in ("gzip", "x-gzip")
                and _is_json_body(case)):
            sent["data"] = gzip.compress(_body_bytes(case))
        return sent
    if path.startswith("/admin/console") or path == "/admin/":
        cookie, csrf = console
        if isinstance(case.body, dict) and "csrf_token" in case.body:
            case.body["csrf_token"] = csrf
        return {"cookies": {"session": cookie}, "headers": {"X-CSRFToken": csrf}}
    if path.startswith("/admin/"):
        return {"headers": {"Authorization": f"Bearer {ADMIN_TOKEN}"}}
    return {}


@schema.parametrize()
@settings(deadline=None, derandomize=not RANDOM, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_every_answer_is_as_documented(
    case: Any, fuzz_app: Flask, console_session: tuple[str, str]
) -> None:
    started = _clock.setdefault("started", time.monotonic())
    if time.monotonic() - started > BUDGET_SECONDS:
        return  # the module's wall-clock budget is spent: the rest send nothing
    response = case.call(app=fuzz_app, **_door(case, console_session))
    label = f"{case.method} {case.path}"
    _sent[label] += 1
    _statuses.setdefault(label, Counter())[response.status_code] += 1
    case.validate_response(response, checks=CHECKS)


def _write_report() -> None:
    target = os.environ.get("FUZZ_REPORT")
    if not target:
        return
    started = _clock.get("started", time.monotonic())
    report = {"seconds": round(time.monotonic() - started, 1), "sent": sum(_sent.values()),
              "operations": {label: {"sent": count, "statuses": dict(_statuses[label])}
                             for label, count in sorted(_sent.items())}}
    Path(target).write_text(json.dumps(report, indent=2, sort_keys=True))


# -- found by hand: lone surrogates --------------------------------------------------------
# Hypothesis never generates a lone surrogate, but JSON can escape one ("\\ud800"), and
# Python's json reads it into a str that cannot be encoded as UTF-8, so it cannot be sent
# to Redis. The Customer.io webhook refuses or replaces such text everywhere; these
# answers are 500s (and mParticle and Firehose retry a 5xx). Not fixed here: each fix is
# in a file of the route's owner (named in the reason).

SURROGATE = "\\ud800"  # as it is written in the JSON text


def _mparticle_batch(extra: str = "") -> bytes:
    return ('{"user_identities": [{"identity_type": "customer_id", "identity": "42"}],'
            '"events": [{"event_type": "custom_event", "data": {"event_name": "Signed Up"}}]'
            f"{extra}}}").encode()


@pytest.mark.parametrize("field", ["message_id", "batch_id"])
def test_an_mparticle_batch_id_with_a_lone_surrogate_is_no_500(fuzz_app: Flask, field: str) -> None:
    response = fuzz_app.test_client().post(
        "/webhooks/mparticle", data=_mparticle_batch(f', "{field}": "{SURROGATE}"'),
        headers={"Authorization": MPARTICLE_AUTHORIZATION, "Content-Type": "application/json"})
    assert response.status_code < 500, response.get_json()


def test_a_firehose_request_id_with_a_lone_surrogate_is_no_500(fuzz_app: Flask) -> None:
    body = f'{{"requestId": "{SURROGATE}", "timestamp": 1700000000000, "records": []}}'
    response = fuzz_app.test_client().post(
        "/webhooks/mparticle/audiences", data=body.encode(),
        headers={"X-Amz-Firehose-Access-Key": FIREHOSE_ACCESS_KEY,
                 "Content-Type": "application/json"})
    assert response.status_code < 500, response.get_json()


def test_replaying_a_dead_letter_id_with_a_lone_surrogate_is_no_500(fuzz_app: Flask) -> None:
    response = fuzz_app.test_client().post(
        "/admin/dead-letters/replay", data=f'{{"ids": ["{SURROGATE}"]}}'.encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})
    assert response.status_code < 500, response.get_json()
