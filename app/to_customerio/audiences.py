"""mParticle audiences through AWS Data Firehose -> Customer.io identifies.

Pure functions: no Flask, no Redis, no I/O. mParticle's Amazon Kinesis Firehose audience
output puts one JSON message per membership change on a Firehose stream, which POSTs
them to the relay in AWS's HTTP endpoint delivery format. Here:

- ``parse_delivery``: the envelope (``{"requestId", "timestamp", "records": [{"data"}]}``,
  maybe gzipped) -> a ``Delivery``, or ``EnvelopeError`` (answered 400).
- ``decode_record``: one record's base64 ``data`` -> a ``Change``, or ``RecordError`` (that
  record alone is quarantined).
- ``person_for``: whom a change is about, by ``mapping.person_of`` itself, so events and
  audiences identify people alike.
- ``segment_membership`` and ``identify_item``: the identify that carries what mParticle's
  own Customer.io audience integration sets (seed 003): ``SegmentMembership`` and, when
  turned on, one ``In <audience name>`` attribute per audience.

Where the sources are silent (each is tested):

- Envelope: ``Content-Encoding`` ``gzip`` (or ``x-gzip``; any case) is gunzipped, none or
  ``identity`` read as it is, any other is an ``EnvelopeError``; what gunzips to over
  ``max_bytes`` (Firehose's 64 MiB body) is a ``DeliveryTooLargeError``, an
  ``EnvelopeError``, so a small bomb never fills the memory. An empty header request id
  counts as absent; an empty ``records`` list is a delivery of nothing (AWS's schema says
  at least one, nothing is lost by taking none). ``timestamp`` not a usable millisecond
  time (``schema.millis``): ``None``. Unknown fields and the other ``X-Amz-Firehose-*``
  headers are not read.
- Record: base64 of the standard alphabet, missing ``=`` padding added, nothing else
  tolerated (no whitespace, no URL-safe alphabet); UTF-8, a leading BOM skipped.
  ``AudienceId``: a non-negative 64-bit integer, as a JSON integer or a string of ASCII
  digits (no sign, no spaces, no fraction). ``MembershipChangedTimestamp``: milliseconds,
  as ``schema.millis`` reads them (0 to 2**48 - 1). ``IsMember``: a JSON boolean only.
  ``AudienceName`` absent, ``null`` or not text: ``""`` (a name only labels an attribute,
  and the membership change must not be lost over it). ``UserIdentities``: an object whose
  ``CustomerId`` / ``Email`` (keys in any case) are text or integers, trimmed; anything
  else, and every other identity, left out; neither usable: ``RecordError``.
- Text that JSON escapes into a lone surrogate becomes "?", so every item encodes to UTF-8.
- ``In`` attributes: none for an audience without a name (``""`` or only spaces): ``"In "``
  would lump every nameless audience into one attribute. Name over 150 bytes: dropped, as
  ``mapping`` drops long names. Two audiences of one name: ``true`` when the person is in
  either. An audience in ``member_of`` is ``true`` even if ``changed`` says it was left.
  At most 300 attributes (Customer.io's limit): the ``true`` ones first, each kind in
  ascending audience id order; also the order of the attributes, so a retried identify is
  byte-identical.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from app.to_customerio.mapping import (
    MAX_ATTRIBUTE_NAME_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES,
    MappingOptions,
    Person,
    person_of,
)
from app.to_customerio.schema import millis

__all__ = [
    "MAX_ATTRIBUTE_VALUE_BYTES",
    "MAX_DELIVERY_BYTES",
    "Change",
    "Delivery",
    "DeliveryTooLargeError",
    "EnvelopeError",
    "MembershipTooLongError",
    "RecordError",
    "decode_record",
    "identify_item",
    "parse_delivery",
    "person_for",
    "segment_membership",
]

# Firehose's largest body, before compression: the most a gzipped delivery may unpack to.
MAX_DELIVERY_BYTES = 64 * 1024 * 1024
GZIP_ENCODINGS = frozenset({"gzip", "x-gzip"})
PLAIN_ENCODINGS = frozenset({"", "identity"})
# zlib's window bits for a gzip header and trailer (16 + the largest window).
_GZIP_WBITS = 16 + zlib.MAX_WBITS
# Audience ids are positive and small; the bound keeps a 4000-digit "id" from ever being
# turned into an int (and matches what Redis and the mParticle platform API carry).
MAX_AUDIENCE_ID = 2**63 - 1
_MAX_AUDIENCE_ID_DIGITS = len(str(MAX_AUDIENCE_ID))
SEGMENT_MEMBERSHIP = "SegmentMembership"
IN_PREFIX = "In "
# mParticle's UserIdentities keys (lower case) -> the identity types person_of reads.
IDENTITY_KEYS = {"customerid": "customer_id", "email": "email"}


class EnvelopeError(ValueError):
    """The body is not a Firehose delivery (answered 400)."""


class DeliveryTooLargeError(EnvelopeError):
    """A gzipped body unpacks to more than the delivery limit."""


class RecordError(ValueError):
    """One record is not an mParticle audience message (quarantined on its own)."""


class MembershipTooLongError(ValueError):
    """SegmentMembership would be over Customer.io's 1000 bytes: never cut."""


@dataclass(frozen=True)
class Delivery:
    """One Firehose delivery: its request id, its time and its records, still in base64."""

    request_id: str  # X-Amz-Firehose-Request-Id, else the body's requestId
    timestamp_ms: int | None
    records: list[str]


@dataclass(frozen=True)
class Change:
    """One membership change: a person joined (``is_member``) or left an audience."""

    audience_id: int
    audience_name: str  # "" when mParticle sent none
    is_member: bool
    changed_at_ms: int
    identities: dict[str, str]  # "customer_id" and/or "email", trimmed, non-empty


# --- the envelope -----------------------------------------------------------------


def parse_delivery(
    body: bytes,
    header_request_id: str | None,
    content_encoding: str | None,
    *,
    max_bytes: int = MAX_DELIVERY_BYTES,
) -> Delivery:
    """Read a Firehose HTTP endpoint delivery, or raise EnvelopeError saying why."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in GZIP_ENCODINGS:
        body = _gunzip(body, max_bytes)
    elif encoding not in PLAIN_ENCODINGS:
        raise EnvelopeError(f"Content-Encoding not supported: {encoding[:32]!r}")
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError
        raise EnvelopeError(f"body is not JSON: {type(error).__name__}") from None
    if not isinstance(envelope, dict):
        raise EnvelopeError("body is not a JSON object")
    records = envelope.get("records")
    if not isinstance(records, list):
        raise EnvelopeError("body has no records list")
    data = []
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("data"), str):
            raise EnvelopeError(f"record {index} is not an object with a string data")
        data.append(record["data"])
    request_id = header_request_id or envelope.get("requestId")
    if not isinstance(request_id, str) or not request_id:
        raise EnvelopeError("no request id: neither X-Amz-Firehose-Request-Id nor requestId")
    return Delivery(request_id, millis(envelope.get("timestamp")), data)


def _gunzip(body: bytes, max_bytes: int) -> bytes:
    """The gunzipped body (every member), never more than max_bytes of it."""
    out = bytearray()
    rest = body
    while True:
        unpacker = zlib.decompressobj(_GZIP_WBITS)
        try:
            out += unpacker.decompress(rest, max_bytes - len(out) + 1)
        except zlib.error:
            raise EnvelopeError("body is not gzip") from None
        if len(out) > max_bytes:
            raise DeliveryTooLargeError(f"body unpacks to over {max_bytes} bytes")
        if not unpacker.eof:
            raise EnvelopeError("body is not gzip: it ends early")
        rest = unpacker.unused_data
        if not rest:
            return bytes(out)


# --- one record -------------------------------------------------------------------


def decode_record(data: str) -> Change:
    """Decode one record's base64 data into a Change, or raise RecordError saying why."""
    message = _message(data)
    audience_id = _audience_id(message.get("AudienceId"))
    if audience_id is None:
        raise RecordError("AudienceId is missing or not a non-negative integer")
    is_member = message.get("IsMember")
    if not isinstance(is_member, bool):
        raise RecordError("IsMember is missing or not a boolean")
    changed_at_ms = millis(message.get("MembershipChangedTimestamp"))
    if changed_at_ms is None:
        raise RecordError("MembershipChangedTimestamp is missing or not milliseconds")
    identities = _identities(message.get("UserIdentities"))
    if not identities:
        raise RecordError("UserIdentities has no usable CustomerId or Email")
    name = message.get("AudienceName")
    return Change(
        audience_id=audience_id,
        audience_name=_utf8(name) if isinstance(name, str) else "",
        is_member=is_member,
        changed_at_ms=changed_at_ms,
        identities=identities,
    )


def _message(data: Any) -> dict[str, Any]:
    """The JSON object a record carries."""
    if not isinstance(data, str):
        raise RecordError("data is not text")
    try:
        raw = base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError):  # ValueError: a character outside ASCII
        raise RecordError("data is not base64") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RecordError("data is not UTF-8") from None
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise RecordError("data is not JSON") from None
    if not isinstance(message, dict):
        raise RecordError("data is not a JSON object")
    return message


def _audience_id(value: Any) -> int | None:
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit() and len(value) <= _MAX_AUDIENCE_ID_DIGITS):
            return None
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_AUDIENCE_ID else None


def _identities(value: Any) -> dict[str, str]:
    """customer_id and email from mParticle's UserIdentities: the first usable of each."""
    if not isinstance(value, dict):
        return {}
    found: dict[str, str] = {}
    for key, identity in value.items():
        kind = IDENTITY_KEYS.get(key.lower()) if isinstance(key, str) else None
        if kind is None or kind in found:
            continue
        if isinstance(identity, int) and not isinstance(identity, bool):
            identity = str(identity)
        if isinstance(identity, str) and identity.strip():
            found[kind] = _utf8(identity.strip())
    return found


# --- who --------------------------------------------------------------------------


def person_for(change: Change, options: MappingOptions) -> Person | None:
    """The person a change is about, by mapping.person_of's rules, or None."""
    batch = {
        "user_identities": [
            {"identity_type": kind, "identity": change.identities[kind]}
            for kind in ("customer_id", "email")
            if kind in change.identities
        ]
    }
    return person_of(batch, options)


# --- the identify -----------------------------------------------------------------


def segment_membership(audience_ids: Iterable[int]) -> str:
    """The SegmentMembership value: "'9','10'", ascending, each once; "" for none."""
    text = ",".join(f"'{audience_id}'" for audience_id in sorted(set(audience_ids)))
    size = len(text.encode("utf-8"))
    if size > MAX_ATTRIBUTE_VALUE_BYTES:
        raise MembershipTooLongError(
            f"SegmentMembership is {size} bytes, over Customer.io's "
            f"{MAX_ATTRIBUTE_VALUE_BYTES}: {text.count(',') + 1} audiences"
        )
    return text


def identify_item(
    person: Person,
    member_of: Mapping[int, str],
    changed: Mapping[int, tuple[str, bool]],
    changed_at_ms: int,
    *,
    one_attribute_per_audience: bool,
) -> dict[str, Any]:
    """The identify that sets a person's audiences after a change.

    ``member_of``: audience id -> name of every audience the person is in now;
    ``changed``: audience id -> (name, is_member) of the changes applied. Raises
    MembershipTooLongError when SegmentMembership would be over 1000 bytes.
    """
    attributes: dict[str, Any] = {SEGMENT_MEMBERSHIP: segment_membership(member_of)}
    if person.email is not None:
        attributes["email"] = person.email
    if one_attribute_per_audience:
        room = MAX_ATTRIBUTES - len(attributes)
        attributes.update(_in_attributes(member_of, changed, room))
    return {
        "type": "person",
        "identifiers": dict(person.identifiers),
        "action": "identify",
        "timestamp": changed_at_ms // 1000,
        "attributes": attributes,
    }


def _in_attributes(
    member_of: Mapping[int, str], changed: Mapping[int, tuple[str, bool]], room: int
) -> dict[str, bool]:
    """The ``In <name>`` attributes: true for each audience the person is in, false if left."""
    attributes: dict[str, bool] = {}
    for audience_id in sorted(member_of):
        name = _in_name(member_of[audience_id])
        if name is not None:
            attributes[name] = True
    for audience_id in sorted(changed):
        name, is_member = changed[audience_id]
        in_name = _in_name(name)
        if is_member or audience_id in member_of or in_name is None:
            continue
        attributes.setdefault(in_name, False)  # another audience of that name holds
    return dict(list(attributes.items())[: max(room, 0)])


def _in_name(audience_name: str) -> str | None:
    """The attribute name for an audience, or None when it gets no attribute."""
    if not audience_name.strip():
        return None
    name = IN_PREFIX + _utf8(audience_name)
    if len(name.encode("utf-8")) > MAX_ATTRIBUTE_NAME_BYTES:
        return None
    return name


def _utf8(text: str) -> str:
    """The text with any lone surrogate replaced by "?", so it encodes to UTF-8."""
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")
