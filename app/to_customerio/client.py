"""Send batches to Customer.io's Track API v2, and say what happened in our own words.

The one seam for outbound HTTP of the mParticle → Customer.io direction: everything the relay
sends to Customer.io goes through `CustomerIOClient`, so the timeouts, the credentials and the
user agent live in one place, and tests point it at a real stand-in server on loopback
(tests/helpers/customerio_standin.py) instead of patching `requests`.

What Customer.io answers (its Track API OpenAPI document, ``POST /api/v2/batch``):

- 200, an empty object: every item was taken.
- 207: "at least one object in the batch was invalid; all other requests are accepted", with
  ``{"errors": [{"batch_index": 0, "reason": "...", "field": "...", "message": "..."}]}``,
  ``batch_index`` the 0-based position of the failing item. Only failing items are listed.
- 400: "the entire request was malformed or invalid", ``{"errors": [{"reason", "field",
  "message"}]}`` with no index; 401: wrong credentials.

Every outcome is translated into the delivery policy's words (``app.relay.outcomes``):
a 2xx is a `BatchResult` (207's item errors by index, for the caller to dead-letter just those
items); 400 and 413 are `RejectedError` (split the request to isolate the bad item); 401 and
403 `AuthError`; 429, 408, 5xx, timeouts, connection errors, redirects and anything unexpected
`RetryableError`, with the wait a ``Retry-After`` header asks for. A 207 whose errors cannot be
tied to items is a `RejectedError` too: the caller splits until each item answers for itself,
which resends nothing twice that matters (events carry a ULID Customer.io deduplicates on, an
identify sets the same attributes again).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import requests

from app.relay import outcomes
from app.relay.outcomes import (
    MAX_ERROR_BODY_CHARS,
    DeliveryError,
    RetryableError,
    parse_retry_after,
)

__all__ = [
    "AUTH_STATUSES",
    "REGION_BASE_URLS",
    "REJECTED_STATUSES",
    "AuthError",
    "BatchResult",
    "CustomerIOClient",
    "RejectedError",
    "RetryableError",
    "classify_status",
    "credential_id",
    "parse_retry_after",
    "region_base_url",
]

logger = logging.getLogger(__name__)

DESTINATION = "Customer.io"

REGION_BASE_URLS: dict[str, str] = {
    "us": "https://track.customer.io",
    "eu": "https://track-eu.customer.io",
}

BATCH_PATH = "/api/v2/batch"
REGION_PATH = "/api/v1/accounts/region"

MULTI_STATUS = 207
REJECTED_STATUSES = frozenset({400, 413})
AUTH_STATUSES = frozenset({401, 403})



class RejectedError(outcomes.RejectedError):
    """Customer.io refused the request's content: split it to isolate the bad item."""

    def __init__(self, status: int, body: str = "") -> None:
        super().__init__(status, body, destination=DESTINATION)


class AuthError(outcomes.AuthError):
    """Customer.io refused the credentials: stop sending and keep everything queued."""

    def __init__(self, status: int, body: str = "") -> None:
        super().__init__(status, body, destination=DESTINATION)


@dataclass(frozen=True)
class BatchResult:
    """Customer.io took a batch request.

    `item_errors` maps the 0-based index of each item Customer.io refused (a 207) to its
    reason; every other item of the request was taken. Empty when all were taken.
    """

    status: int
    item_errors: dict[int, str] = field(default_factory=dict)


def region_base_url(region: str) -> str:
    """Return the Track API base URL of a Customer.io region ("us" or "eu")."""
    try:
        return REGION_BASE_URLS[region]
    except KeyError:
        allowed = ", ".join(REGION_BASE_URLS)
        raise ValueError(f"unknown Customer.io region {region!r}; allowed: {allowed}") from None



def credential_id(site_id: str, api_key: str) -> str:
    """Name a Track API credential without revealing it: 12 hex digits of a SHA-256.

    The hash covers the site id and the key (``site_id:api_key``, the Basic auth pair), so a
    rotated key is a new credential and two workspaces never share one.
    """
    return hashlib.sha256(f"{site_id}:{api_key}".encode()).hexdigest()[:12]


def classify_status(status: int) -> type[DeliveryError] | None:
    """Return the error a status means, or None when Customer.io took the request (2xx)."""
    if 200 <= status < 300:
        return None
    if status in REJECTED_STATUSES:
        return RejectedError
    if status in AUTH_STATUSES:
        return AuthError
    return RetryableError


def _error_body(response: requests.Response) -> str:
    # Decode ourselves: response.text may run charset detection over a large body.
    return response.content[: MAX_ERROR_BODY_CHARS * 4].decode("utf-8", errors="replace")


def _json_of(response: requests.Response) -> Any:
    try:
        return json.loads(response.content)
    except (UnicodeDecodeError, ValueError):
        return None


def _retryable_for(response: requests.Response) -> RetryableError:
    status = response.status_code
    reason = f"{DESTINATION} answered {status} {response.reason or ''}".rstrip()
    location = response.headers.get("Location")
    if 300 <= status < 400 and location:
        # Customer.io redirects traffic for an EU workspace sent to the US host: never follow
        # (a redirected POST loses its body), say where it pointed so the fix is obvious.
        reason += f", redirecting to {location[:200]} (is the region or base URL right?)"
    return RetryableError(
        reason,
        status=status,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
        body=_error_body(response),
    )


def _error_for(response: requests.Response) -> DeliveryError:
    status = response.status_code
    error = classify_status(status)
    if error is RejectedError:
        return RejectedError(status, _error_body(response))
    if error is AuthError:
        return AuthError(status, _error_body(response))
    return _retryable_for(response)


def _item_count(body: bytes) -> int | None:
    """How many items a request body holds, or None if it is not `{"batch": [...]}`."""
    try:
        batch = json.loads(body).get("batch")
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None
    return len(batch) if isinstance(batch, list) else None


def _describe(error: dict[str, Any]) -> str:
    """One line from an error entry: ``reason (field): message``, whichever parts it has."""
    parts = {key: error.get(key) for key in ("reason", "field", "message")}
    text = {key: str(value) for key, value in parts.items() if value not in (None, "")}
    head = text.get("reason", "")
    if "field" in text:
        head = f"{head} ({text['field']})" if head else text["field"]
    if "message" in text:
        return f"{head}: {text['message']}" if head else text["message"]
    return head or "refused, no reason given"


def _item_errors(payload: Any, items: int | None) -> tuple[dict[int, str], bool]:
    """Read Customer.io's ``errors`` by ``batch_index``.

    Returns the reasons by index, and whether every error entry named an item of the request
    (an index that is an integer, at least 0 and below the item count when known).
    """
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if not isinstance(errors, list):
        return {}, False
    found: dict[int, str] = {}
    all_placed = True
    for error in errors:
        index = error.get("batch_index") if isinstance(error, dict) else None
        if (
            not isinstance(index, int)
            or isinstance(index, bool)
            or index < 0
            or (items is not None and index >= items)
        ):
            all_placed = False
            continue
        reason = _describe(error)
        found[index] = f"{found[index]}; {reason}" if index in found else reason
    return found, all_placed


class CustomerIOClient:
    """Post batch requests to one Customer.io workspace with its Track API site id and key."""

    def __init__(
        self,
        session: requests.Session,
        base_url: str,
        site_id: str,
        api_key: str,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        user_agent: str = "cio-mparticle-relay",
    ) -> None:
        self.session = session
        self.base_url = base_url.removesuffix("/")
        self.site_id = site_id
        self._api_key = api_key
        self.timeout = (connect_timeout, read_timeout)
        self.user_agent = user_agent

    def __repr__(self) -> str:
        return f"CustomerIOClient(base_url={self.base_url!r}, credential={self.credential_id})"

    @property
    def credential_id(self) -> str:
        """A short, stable name for this credential, safe to log and to put in a Redis key."""
        return credential_id(self.site_id, self._api_key)

    @property
    def batch_url(self) -> str:
        return f"{self.base_url}{BATCH_PATH}"

    @property
    def region_url(self) -> str:
        return f"{self.base_url}{REGION_PATH}"

    def send_batch(self, body: bytes) -> BatchResult:
        """Post an encoded batch request (``{"batch": [...]}``) and return Customer.io's answer.

        The body is sent exactly as given, so a retry is byte-identical to the first attempt.
        """
        response = self._request("POST", self.batch_url, body)
        status = response.status_code
        if classify_status(status) is not None:
            raise _error_for(response)
        item_errors, all_placed = _item_errors(_json_of(response), _item_count(body))
        if status == MULTI_STATUS and not (item_errors and all_placed):
            # Some items were refused but the answer does not say which: let the caller split
            # until every item answers for itself, rather than guess.
            raise RejectedError(status, _error_body(response))
        # A 200 listing errors is taken at its word too (other senders have seen it happen).
        result = BatchResult(status=status, item_errors=item_errors)
        logger.debug(
            "Customer.io took %d bytes: %d, %d item(s) refused",
            len(body),
            status,
            len(item_errors),
        )
        return result

    def check_credentials(self) -> str:
        """Check the site id and key with Customer.io, sending nothing; return its region.

        ``GET /api/v1/accounts/region`` answers ``{"url": ..., "region": "us" | "eu",
        "environment_id": ...}`` for valid credentials, from either regional host.
        """
        response = self._request("GET", self.region_url)
        status = response.status_code
        if status in AUTH_STATUSES:
            raise AuthError(status, _error_body(response))
        if status != 200:
            raise _retryable_for(response)
        region = _region_of(_json_of(response))
        if region is None:
            raise RetryableError(
                f"{DESTINATION} accepted the credentials but its answer names no region",
                status=status,
                body=_error_body(response),
            )
        return region

    def _request(self, method: str, url: str, body: bytes | None = None) -> requests.Response:
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            return self.session.request(
                method,
                url,
                data=body,
                auth=(self.site_id, self._api_key),
                headers=headers,
                timeout=self.timeout,
                # A redirected POST becomes a GET without its body: never follow one, since a 2xx
                # after it would look like a delivery that never happened.
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            raise RetryableError(f"{DESTINATION} did not answer in time: {exc}") from exc
        except requests.ConnectionError as exc:
            raise RetryableError(f"could not connect to {DESTINATION}: {exc}") from exc
        except requests.RequestException as exc:
            # E.g. a malformed base URL: a configuration problem, so keep the items.
            raise RetryableError(f"could not send to {DESTINATION}: {exc}") from exc


def _region_of(payload: Any) -> str | None:
    """The region an accounts/region answer names: its `region`, else the one of its `url`."""
    if not isinstance(payload, dict):
        return None
    region = payload.get("region")
    if isinstance(region, str) and region.strip():
        return region.strip().lower()
    url = payload.get("url")
    if isinstance(url, str):
        for name, base in REGION_BASE_URLS.items():
            if url.removesuffix("/") == base:
                return name
    return None
