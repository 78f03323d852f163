"""Customer.io webhook signatures: HMAC-SHA256 of ``v0:<timestamp>:<body>``."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.to_mparticle.signature import (
    SignatureError,
    StaleTimestampError,
    sign,
    verify_signature,
)

KEY = b"test-signing-key"
OLD_KEY = b"old-rotated-key"
NOW = 1_713_484_800
TOLERANCE = 300
BODY = b'{"event_id":"01E4C4CT6YDC7Y5M7FE1GWWPQJ","object_type":"email","metric":"opened"}'


def verify(
    body: bytes = BODY,
    timestamp: str | None = str(NOW),
    signature: str | None = None,
    keys: tuple[bytes, ...] = (KEY,),
    now: float = NOW,
) -> None:
    if signature is None:
        signature = sign(KEY, timestamp or "0", body)
    verify_signature(body, timestamp, signature, keys, tolerance_seconds=TOLERANCE, now=now)


def test_sign_is_hex_hmac_sha256_of_v0_timestamp_and_body():
    expected = hmac.new(KEY, b"v0:" + str(NOW).encode() + b":" + BODY, hashlib.sha256).hexdigest()
    assert sign(KEY, NOW, BODY) == expected
    assert sign(KEY, str(NOW), BODY) == expected


def test_a_good_signature_is_accepted():
    verify()  # raises if refused


def test_a_signature_under_another_key_is_refused():
    signature = sign(b"someone-else", str(NOW), BODY)
    with pytest.raises(SignatureError, match="does not match"):
        verify(signature=signature)


def test_second_signing_key_is_accepted_during_rotation():
    signature = sign(KEY, str(NOW), BODY)
    verify(signature=signature, keys=(OLD_KEY, KEY))
    verify(signature=sign(OLD_KEY, str(NOW), BODY), keys=(OLD_KEY, KEY))


def test_no_configured_keys_refuses_every_request():
    with pytest.raises(SignatureError):
        verify(keys=())


@pytest.mark.parametrize("offset", [-(TOLERANCE + 1), TOLERANCE + 1, -86_400, 86_400])
def test_a_timestamp_beyond_the_tolerance_is_refused_in_the_past_and_the_future(offset):
    stamp = str(NOW + offset)
    with pytest.raises(SignatureError, match="tolerance"):
        verify(timestamp=stamp, signature=sign(KEY, stamp, BODY))


def test_a_correctly_signed_stale_timestamp_is_told_apart_with_its_age():
    stamp = str(NOW - 3600)
    with pytest.raises(StaleTimestampError) as refused:
        verify(timestamp=stamp, signature=sign(KEY, stamp, BODY))
    assert refused.value.age_seconds == 3600


def test_a_wrong_signature_on_a_stale_timestamp_is_a_wrong_signature_not_a_stale_one():
    stamp = str(NOW - 3600)
    with pytest.raises(SignatureError, match="does not match") as refused:
        verify(timestamp=stamp, signature=sign(b"someone-else", stamp, BODY))
    assert not isinstance(refused.value, StaleTimestampError)


@pytest.mark.parametrize("offset", [-TOLERANCE, TOLERANCE, 0])
def test_a_timestamp_at_the_edge_of_the_tolerance_is_accepted(offset):
    stamp = str(NOW + offset)
    verify(timestamp=stamp, signature=sign(KEY, stamp, BODY))


@pytest.mark.parametrize("timestamp", [None, ""])
def test_a_missing_timestamp_is_refused(timestamp):
    with pytest.raises(SignatureError, match="X-CIO-Timestamp"):
        verify(timestamp=timestamp, signature=sign(KEY, str(NOW), BODY))


@pytest.mark.parametrize("signature", [None, ""])
def test_a_missing_signature_is_refused(signature):
    with pytest.raises(SignatureError, match="X-CIO-Signature"):
        verify_signature(
            BODY, str(NOW), signature, (KEY,), tolerance_seconds=TOLERANCE, now=NOW
        )


def test_a_tampered_body_is_refused():
    signature = sign(KEY, str(NOW), BODY)
    with pytest.raises(SignatureError, match="does not match"):
        verify(body=BODY.replace(b"opened", b"clicked"), signature=signature)


def test_a_signature_for_another_timestamp_is_refused():
    signature = sign(KEY, str(NOW - 1), BODY)
    with pytest.raises(SignatureError, match="does not match"):
        verify(signature=signature)


@pytest.mark.parametrize(
    "timestamp",
    ["soon", "1713484800.0", "-1713484800", "0x66", "1e9", "\u00b2", "\u0661\u0667\u0661",
     "1" * 13],
)
def test_a_timestamp_that_is_not_unix_seconds_is_refused(timestamp):
    with pytest.raises(SignatureError, match="unix seconds"):
        verify_signature(BODY, timestamp, "ab" * 32, (KEY,), tolerance_seconds=TOLERANCE, now=NOW)


def test_an_upper_case_hex_signature_is_accepted():
    verify(signature=sign(KEY, str(NOW), BODY).upper())


@pytest.mark.parametrize("signature", ["\u00e9" * 64, "\u2603", "\udcff" * 64, "ab\x00cd"])
def test_a_non_ascii_signature_header_is_refused_without_crashing(signature):
    with pytest.raises(SignatureError, match="does not match"):
        verify(signature=signature)


@given(
    body=st.binary(max_size=2048),
    key=st.binary(min_size=1, max_size=64),
    timestamp=st.integers(min_value=1_000_000_000, max_value=9_999_999_999),
)
def test_any_signed_body_verifies(body, key, timestamp):
    stamp = str(timestamp)
    verify_signature(
        body, stamp, sign(key, stamp, body), (key,), tolerance_seconds=TOLERANCE, now=timestamp
    )


@given(
    body=st.binary(min_size=1, max_size=2048),
    key=st.binary(min_size=1, max_size=64),
    data=st.data(),
)
def test_flipping_any_byte_of_a_signed_body_fails_verification(body, key, data):
    stamp = str(NOW)
    signature = sign(key, stamp, body)
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1), label="index")
    flip = data.draw(st.integers(min_value=1, max_value=255), label="xor")
    tampered = bytearray(body)
    tampered[index] ^= flip
    with pytest.raises(SignatureError):
        verify_signature(
            bytes(tampered), stamp, signature, (key,), tolerance_seconds=TOLERANCE, now=NOW
        )
