"""Deterministic ULIDs: the ``id`` of every event item sent to Customer.io.

Customer.io deduplicates events on their ULID ``id``. Its 48-bit time part is the
event's own millisecond timestamp and its 80 random bits are the first 80 bits of
SHA-256 of the event's idempotency key, without a salt: the same mParticle event gets
the same id from any relay, on every retry, so a re-sent request creates nothing twice.
"""

from __future__ import annotations

import hashlib

# Crockford's base32: no I, L, O or U.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID_LENGTH = 26
MAX_TIMESTAMP_MS = 2**48 - 1
_DECODE = {char: index for index, char in enumerate(ALPHABET)}


def ulid(timestamp_ms: int, key: str) -> str:
    """The ULID of an event at ``timestamp_ms`` with idempotency key ``key``."""
    if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int):
        raise TypeError("timestamp_ms must be an int")
    if not 0 <= timestamp_ms <= MAX_TIMESTAMP_MS:
        raise ValueError(f"timestamp_ms out of the ULID's 48-bit range: {timestamp_ms}")
    # surrogatepass: a key with a lone surrogate still hashes, and to its own value.
    random_part = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:10]
    value = (timestamp_ms << 80) | int.from_bytes(random_part, "big")
    chars = []
    for _ in range(ULID_LENGTH):
        chars.append(ALPHABET[value & 0x1F])
        value >>= 5
    return "".join(reversed(chars))


def ulid_timestamp_ms(value: str) -> int:
    """The millisecond time a ULID carries (its first 10 characters)."""
    if len(value) != ULID_LENGTH:
        raise ValueError(f"a ULID has {ULID_LENGTH} characters")
    number = 0
    for char in value.upper():
        if char not in _DECODE:
            raise ValueError(f"not a Crockford base32 character: {char!r}")
        number = (number << 5) | _DECODE[char]
    if number >> 128:
        raise ValueError("a ULID holds 128 bits")
    return number >> 80


def story_id(key: str) -> str:
    """The name an event's dedup mark and story go by: its ULID's 16 random characters.

    They depend on the idempotency key alone, so the story is found from the key
    mParticle sent (computed again) or from the ULID Customer.io shows (its last 16
    characters): one field in Redis serves both lookups.
    """
    return ulid(0, key)[ULID_LENGTH - 16:]


def story_id_of_ulid(value: str) -> str | None:
    """The story id inside a ULID Customer.io shows, or None when it is not a ULID."""
    text = value.strip().upper()
    if len(text) != ULID_LENGTH or any(char not in _DECODE for char in text):
        return None
    return text[ULID_LENGTH - 16:]
