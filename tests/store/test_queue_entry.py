"""How a body is stored in a queue entry: binary deflate, read back however Redis gave it."""

from __future__ import annotations

import base64
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.store import queue_entry

BODY = ('{"event_id":"01E4C4CT6YDC7Y5M7FE1GWWPQJ","object_type":"email","metric":"opened",'
        '"timestamp":1613063089,"data":{"customer_id":"42",'
        '"delivery_id":"RPILAgUBcRhIBqSfeiIwdIYJKxTY","subject":"Héllo ✓"}}')
# BODY as the versions before binary bodies queued it: base64, field "z".
OLD_ENTRY = {"z": "Q+O6mjibOIeYRbo4m0ea+pq7uRq6h4cHBHrhDDXM0EW2zszQ2MDM2MDCEuE0VC+aGCmhB19QgKePY3"
                  "qoU3JQhqdTYXBaaqZneYpnpJd3RUgkSjR5HF6Zk5Ov8GjOZKXaWgA="}


def raw_deflate(data: bytes) -> bytes:
    """Deflate without the dictionary: inflating with it gives the same bytes."""
    packer = zlib.compressobj(wbits=-11)
    return packer.compress(data) + packer.flush()


def as_a_decoding_client_reads_it(value: bytes) -> str:
    """A binary value as a client with the relay's REDIS_DECODING gives it back."""
    return value.decode("utf-8", "surrogateescape")


def test_a_body_is_packed_to_binary_a_third_smaller_than_its_base64():
    fields = queue_entry.pack(BODY)

    assert set(fields) == {"d"}
    assert isinstance(fields["d"], bytes)
    assert fields["d"] == base64.b64decode(OLD_ENTRY["z"])  # the same deflate as before
    assert len(fields["d"]) < len(BODY.encode()) / 2


def test_a_packed_body_reads_back_from_bytes_and_from_surrogate_escaped_text():
    packed = queue_entry.pack(BODY)["d"]

    assert queue_entry.unpack({"d": packed}) == BODY
    assert queue_entry.unpack({"d": as_a_decoding_client_reads_it(packed)}) == BODY


def test_entries_queued_by_older_versions_still_read_back():
    assert queue_entry.unpack(OLD_ENTRY) == BODY
    assert queue_entry.unpack({"b": BODY}) == BODY
    assert queue_entry.unpack({"b": BODY.encode()}) == BODY


def test_a_body_that_packing_would_not_shrink_is_stored_plain():
    assert queue_entry.pack("{}") == {"b": "{}"}
    assert queue_entry.unpack({"b": "{}"}) == "{}"


@pytest.mark.parametrize(
    "fields",
    [
        {"d": b"not deflate at all"},
        {"d": as_a_decoding_client_reads_it(b"\xff\xfe not deflate")},
        {"d": queue_entry.pack(BODY)["d"][:-4]},  # cut off: inflates in part, no error
        {"d": raw_deflate(b"\xff\xfe" * 50)},  # inflates to bytes that are not UTF-8
        {"z": "bm90IGRlZmxhdGU="},
        {"z": "***"},
        {"b": as_a_decoding_client_reads_it(b'{"not": "utf-8 \xff"}')},
        {"b": b'{"not": "utf-8 \xff"}'},
    ],
    ids=["not-deflate", "not-deflate-as-text", "cut-off", "not-utf-8-inside",
         "base64-not-deflate", "not-base64", "plain-not-utf-8", "plain-bytes-not-utf-8"],
)
def test_an_entry_that_is_corrupt_is_refused_with_a_value_error(fields):
    with pytest.raises(ValueError, match="body is corrupt"):
        queue_entry.unpack(fields)


def test_an_entry_without_a_body_is_refused_with_a_key_error():
    with pytest.raises(KeyError):
        queue_entry.unpack({"body": "the wrong field"})


@pytest.mark.parametrize(
    "fields",
    [
        {"d": as_a_decoding_client_reads_it(b"\x80\xff binary, not deflate")},
        {"b": as_a_decoding_client_reads_it(b"\xff")},
        {"body": "the wrong field"},
    ],
)
def test_an_unreadable_entry_is_shown_escaped_as_valid_utf8(fields):
    shown = queue_entry.readable_body(fields)

    assert shown.encode("utf-8")  # no lone surrogate: JSON, templates and logs take it
    assert shown.startswith("{'")


def test_a_readable_entry_is_shown_as_its_json_body():
    assert queue_entry.readable_body(queue_entry.pack(BODY)) == BODY


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_body_unpacks_to_exactly_what_was_packed(body):
    fields = queue_entry.pack(body)
    read_back = {name: as_a_decoding_client_reads_it(value) if isinstance(value, bytes) else value
                 for name, value in fields.items()}

    assert queue_entry.unpack(fields) == body
    assert queue_entry.unpack(read_back) == body


def test_binary_bodies_take_a_third_of_their_size_less_of_redis_than_base64(redis):
    packed = [queue_entry.pack(BODY.replace("42", str(n)))["d"] for n in range(3000)]
    memory = {}
    # Thousands of entries: a stream is allocated in nodes of up to 4 KB.
    for field, encode in (("d", bytes), ("z", base64.b64encode)):
        pipe = redis.pipeline(transaction=False)
        for body in packed:
            pipe.xadd(f"queue-{field}", {field: encode(body)})
        pipe.execute()
        memory[field] = redis.memory_usage(f"queue-{field}", samples=0)  # every node

    saved = (memory["z"] - memory["d"]) / len(packed)
    average = sum(map(len, packed)) / len(packed)
    assert saved > average / 3 * 0.8
