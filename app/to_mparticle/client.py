"""Send batches to mParticle's Events API, and say what happened in our own words.

This module is the one seam for outbound HTTP: everything the relay sends to mParticle goes through
`MParticleClient`, so the timeouts, the credentials and the user agent live in one place, and tests
point it at a real stand-in server on loopback instead of patching `requests`.

Every outcome is translated into the delivery policy's words (``app.relay.outcomes``), so the
worker decides what to do (wait, split, stop) without knowing about `requests` or status codes:
400, 413 and 422 are `RejectedError` (split to find the bad batch); 401 and 403 `AuthError`;
429, 408, 5xx, timeouts, connection errors and anything unexpected `RetryableError`.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Literal

import requests

from app.relay import outcomes
from app.relay.outcomes import (
    MAX_ERROR_BODY_CHARS,
    DeliveryError,
    RetryableError,
    parse_retry_after,
)

logger = logging.getLogger(__name__)

REGION_BASE_URLS: dict[str, str] = {
    "us1": "https://s2s.mparticle.com/v2",
    "us2": "https://s2s.us2.mparticle.com/v2",
    "eu1": "https://s2s.eu1.mparticle.com/v2",
    "au1": "https://s2s.au1.mparticle.com/v2",
}

RATE_LIMIT_HEADER = "X-mp-rate-limit-percentage-used"

REJECTED_STATUSES = frozenset({400, 413, 422})
AUTH_STATUSES = frozenset({401, 403})

# An empty bulk: mParticle checks the credentials and has nothing to ingest.
EMPTY_BULK = b"[]"



class RejectedError(outcomes.RejectedError):
    """mParticle refused the request's content: split it to isolate the bad batch."""

    def __init__(self, status: int, body: str = "") -> None:
        super().__init__(status, body, destination="mParticle")


class AuthError(outcomes.AuthError):
    """mParticle refused the credentials: stop sending and keep everything queued."""

    def __init__(self, status: int, body: str = "") -> None:
        super().__init__(status, body, destination="mParticle")


@dataclass(frozen=True)
class BulkResult:
    """mParticle accepted a bulk request."""

    status: int
    rate_limit_percent_used: float | None


def region_base_url(region: str) -> str:
    """Return the Events API base URL of an mParticle region (pod)."""
    try:
        return REGION_BASE_URLS[region]
    except KeyError:
        allowed = ", ".join(REGION_BASE_URLS)
        raise ValueError(f"unknown mParticle region {region!r}; allowed: {allowed}") from None



def credential_id(api_key: str) -> str:
    """Name an API key without revealing it: 12 hex digits of its SHA-256."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:12]


def classify_status(status: int) -> type[DeliveryError] | None:
    """Return the error a status means, or None for success (2xx)."""
    if 200 <= status < 300:
        return None
    if status in REJECTED_STATUSES:
        return RejectedError
    if status in AUTH_STATUSES:
        return AuthError
    return RetryableError


def _parse_percent(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        percent = float(value)
    except ValueError:
        return None
    return percent if math.isfinite(percent) else None


def _error_body(response: requests.Response) -> str:
    # Decode ourselves: response.text may run charset detection over a large body.
    return response.content[: MAX_ERROR_BODY_CHARS * 4].decode("utf-8", errors="replace")


def _retryable_for(response: requests.Response) -> RetryableError:
    status = response.status_code
    return RetryableError(
        f"mParticle answered {status} {response.reason or ''}".rstrip(),
        status=status,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
        body=_error_body(response),
        rate_limit_percent_used=_parse_percent(response.headers.get(RATE_LIMIT_HEADER)),
    )


def _error_for(response: requests.Response) -> DeliveryError:
    status = response.status_code
    error = classify_status(status)
    if error is RejectedError:
        return RejectedError(status, _error_body(response))
    if error is AuthError:
        return AuthError(status, _error_body(response))
    return _retryable_for(response)


class MParticleClient:
    """Post bulk requests to one mParticle feed with its server key and secret."""

    def __init__(
        self,
        session: requests.Session,
        base_url: str,
        api_key: str,
        api_secret: str,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        user_agent: str = "cio-mparticle-relay",
    ) -> None:
        self.session = session
        self.base_url = base_url.removesuffix("/")
        self.api_key = api_key
        self._api_secret = api_secret
        self.timeout = (connect_timeout, read_timeout)
        self.user_agent = user_agent

    def __repr__(self) -> str:
        return f"MParticleClient(base_url={self.base_url!r}, credential={self.credential_id})"

    @property
    def credential_id(self) -> str:
        """A short, stable name for this feed's key, safe to log and to put in a Redis key."""
        return credential_id(self.api_key)

    @property
    def bulk_url(self) -> str:
        """The Events API endpoint that takes up to 100 batches per request."""
        return f"{self.base_url}/bulkevents"

    def send_bulk(self, body: bytes) -> BulkResult:
        """Post an encoded bulk request (a JSON array of batches) and return mParticle's answer.

        The body is sent exactly as given, so a retry is byte-identical to the first attempt.
        """
        response = self._post(body)
        if classify_status(response.status_code) is not None:
            raise _error_for(response)
        result = BulkResult(
            status=response.status_code,
            rate_limit_percent_used=_parse_percent(response.headers.get(RATE_LIMIT_HEADER)),
        )
        logger.debug(
            "mParticle accepted %d bytes: %d, rate limit %s%% used",
            len(body),
            result.status,
            result.rate_limit_percent_used,
        )
        return result

    def check_credentials(self) -> Literal["ok"]:
        """Check that mParticle accepts the key and secret, sending no events.

        This mirrors the "Connect" button of Customer.io's mParticle feed: post an empty bulk.
        A 400 still means the credentials passed (the empty body itself may be refused).
        """
        response = self._post(EMPTY_BULK)
        status = response.status_code
        if 200 <= status < 300 or status == 400:
            return "ok"
        if status in AUTH_STATUSES:
            raise AuthError(status, _error_body(response))
        raise _retryable_for(response)

    def _post(self, body: bytes) -> requests.Response:
        try:
            return self.session.post(
                self.bulk_url,
                data=body,
                auth=(self.api_key, self._api_secret),
                headers={"Content-Type": "application/json", "User-Agent": self.user_agent},
                timeout=self.timeout,
                # A redirected POST becomes a GET without its body: never follow one, since a 2xx
                # after it would look like a delivery that never happened.
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            raise RetryableError(f"mParticle did not answer in time: {exc}") from exc
        except requests.ConnectionError as exc:
            raise RetryableError(f"could not connect to mParticle: {exc}") from exc
        except requests.RequestException as exc:
            # E.g. a malformed base URL: a configuration problem, so keep the events.
            raise RetryableError(f"could not send to mParticle: {exc}") from exc
