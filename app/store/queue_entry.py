"""How a webhook body is stored in a queue entry: deflated against a preset dictionary.

A queued event waits in Redis until mParticle takes it: seconds normally, days while
mParticle is down, which is exactly when memory runs short. A reporting webhook is a
few hundred bytes of JSON, most of them the same field names every time, so raw
deflate primed with those names (the dictionary below) stores a typical event in about
a third of its size.

The deflated bytes are stored as they are, binary: base64 would add a third to them
(50-75 bytes an event, as Redis keeps it). Every Redis client the relay builds decodes
replies to str (``app/services.py``, ``REDIS_DECODING``) with ``surrogateescape``, so a
binary value reads back as a str whose undecodable bytes are lone surrogates (PEP 383)
and ``.encode("utf-8", "surrogateescape")`` gives back the exact bytes; a client
without decoding gives bytes; :func:`unpack` takes either. Write them back as bytes,
never as that str: redis-py packs commands with hiredis, which encodes str strictly.
Nothing read from a queue entry goes to people as it is: the worker dead-letters the
unpacked JSON (:func:`readable_body`); in ``redis-cli`` a packed body shows as escaped
bytes.

Field ``d`` holds a body packed with dictionary version 1; field ``z`` the same, in
base64 (entries written by older versions); field ``b`` plain JSON (entries written by
replay, by hand or by older versions; and any body that would not get smaller). The
dictionary must never change: a new one gets a new field name, and the old stays
readable; so do the old fields.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Mapping

PLAIN_FIELD = "b"
PACKED_FIELD = "d"
PACKED_BASE64_FIELD = "z"  # read only: what versions before binary bodies wrote

# Fragments of Customer.io reporting webhooks (field names from its OpenAPI document,
# common values), most frequent last: deflate reaches recent bytes more cheaply.
_DICTIONARY_V1 = (
    b'"tracked_response":"","inbound_event_id":"","transactional_message_id":,'
    b'"headers":{},"to":"","content":"","proxied":false,"prefetched":false,"synthetic":false,'
    b'"machine":false,"trigger_id":,"content_id":,"newsletter_id":,"broadcast_id":,'
    b'"trigger_event_id":"","parent_action_id":,"link_id":,"href":"https://",'
    b'"failure_message":"","recipients":[{"device_id":"","device_platform":"ios"}],'
    b'"object_type":"customer","metric":"subscribed","unsubscribed","converted","bounced",'
    b'"failed","dropped","undeliverable","attempted","drafted","spammed","delivered",'
    b'"object_type":"in_app","object_type":"push","object_type":"sms","metric":"sent",'
    b'"metric":"clicked","metric":"opened","object_type":"email",'
    b'"subject":"","journey_id":"01","campaign_id":,"action_id":,"delivery_id":"",'
    b'"recipient":"@example.com","email_address":"@gmail.com","customer_id":"",'
    b'"identifiers":{"id":"","email":"","cio_id":""},"data":{"action_id":'
    b',"timestamp":17,{"event_id":"01'
)

# 2 KiB window: the dictionary fits, and each packer sets up in microseconds.
_WINDOW_BITS = -11  # negative: raw deflate, no header or checksum (Redis keeps the bytes)
_LEVEL = 6
# The packer's smallest hash table: the same output for bodies this small, and half the
# set-up time (about 9 µs a body, on the webhook's hot path). Unpacking does not use it.
_MEMORY_LEVEL = 1


def pack(body: str) -> dict[str, str | bytes]:
    """The queue entry's fields for a JSON body (packed unless that would not help)."""
    raw = body.encode("utf-8")
    packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WINDOW_BITS, _MEMORY_LEVEL,
                              zlib.Z_DEFAULT_STRATEGY, _DICTIONARY_V1)
    packed = packer.compress(raw) + packer.flush()
    if len(packed) >= len(raw):
        return {PLAIN_FIELD: body}
    return {PACKED_FIELD: packed}


def unpack(fields: Mapping[str, str | bytes]) -> str:
    """The JSON body of a queue entry; KeyError if it holds none, ValueError if corrupt."""
    if PACKED_FIELD in fields:
        return _inflate(_as_bytes(fields[PACKED_FIELD]))
    if PACKED_BASE64_FIELD in fields:
        try:
            packed = base64.b64decode(fields[PACKED_BASE64_FIELD], validate=True)
        except ValueError as exc:
            raise ValueError(f"queue entry's packed body is corrupt: {exc}") from exc
        return _inflate(packed)
    return _as_text(fields[PLAIN_FIELD])


def readable_body(fields: Mapping[str, str | bytes]) -> str:
    """The entry as text for people: its body if it unpacks, else its fields, escaped."""
    try:
        return unpack(fields)
    except (KeyError, ValueError):
        # repr escapes lone surrogates and bytes: the text is valid UTF-8 whatever Redis held.
        return repr(dict(fields))


def _inflate(packed: bytes) -> str:
    try:
        unpacker = zlib.decompressobj(_WINDOW_BITS, zdict=_DICTIONARY_V1)
        raw = unpacker.decompress(packed) + unpacker.flush()
        if not unpacker.eof:  # raw deflate has no length: a cut-off body inflates in part
            raise ValueError("it ends before its last block")
        return raw.decode("utf-8")
    except (zlib.error, ValueError) as exc:
        raise ValueError(f"queue entry's packed body is corrupt: {exc}") from exc


def _as_bytes(value: str | bytes) -> bytes:
    """A binary value as Redis holds it, however the client decoded it."""
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _as_text(value: str | bytes) -> str:
    """A plain body as text; ValueError if Redis holds bytes that are not UTF-8."""
    try:
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if not value.isascii():
            value.encode("utf-8")  # a lone surrogate (a byte that is not UTF-8) raises
    except UnicodeError as exc:
        raise ValueError(f"queue entry's plain body is corrupt: {exc}") from exc
    return value
