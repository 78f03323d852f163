"""Deliveries as AWS Data Firehose posts them to an HTTP endpoint, for tests."""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import time
import uuid
from typing import Any

ACCESS_KEY = "firehose-access-key-0123456789abcdef"
_clock = itertools.count(1)


def audience_message(audience_id: int, *, member: bool = True, customer_id: str | None = "p1",
                     email: str | None = None, name: str | None = None,
                     changed_at_ms: int | str | None = None) -> dict[str, Any]:
    """One mParticle audience message: a person joined (or left) one audience."""
    identities = {}
    if customer_id is not None:
        identities["CustomerId"] = customer_id
    if email is not None:
        identities["Email"] = email
    return {
        "MembershipChangedTimestamp": (changed_at_ms if changed_at_ms is not None
                                       else 1_700_000_000_000 + next(_clock)),
        "AudienceId": audience_id,
        "AudienceName": name if name is not None else f"Audience {audience_id}",
        "IsMember": member,
        "UserIdentities": identities,
    }


def record(message: Any) -> dict[str, str]:
    raw = message if isinstance(message, bytes) else json.dumps(message).encode()
    return {"data": base64.b64encode(raw).decode()}


def delivery(*messages: Any, request_id: str | None = None) -> tuple[dict[str, Any], str]:
    """A delivery's body and its request id."""
    request_id = request_id or str(uuid.uuid4())
    return {"requestId": request_id, "timestamp": int(time.time() * 1000),
            "records": [record(message) for message in messages]}, request_id


def headers(request_id: str, *, access_key: str = ACCESS_KEY,
            gzipped: bool = False) -> dict[str, str]:
    sent = {"X-Amz-Firehose-Request-Id": request_id, "X-Amz-Firehose-Access-Key": access_key,
            "Content-Type": "application/json"}
    if gzipped:
        sent["Content-Encoding"] = "gzip"
    return sent


def encode(body: dict[str, Any], *, gzipped: bool = False) -> bytes:
    raw = json.dumps(body).encode()
    return gzip.compress(raw) if gzipped else raw
