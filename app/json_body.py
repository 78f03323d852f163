"""Reading a webhook's JSON body and writing JSON answers: exactly Python's json, fast.

Shared by every direction's webhook view (app-level, like errors and logs): the
body read within a limit, its JSON read, the answer written.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

# Customer.io's webhooks nest four levels deep. JSON nested far deeper is junk, and one
# nested near Python's recursion limit could be parsed here yet not by the worker (or
# not re-encoded here): it is quarantined instead.
MAX_JSON_DEPTH = 64

# A run of 19 digits may be an integer past 64 bits, which orjson reads as a float. To
# find one, every digit becomes "9" and every other byte a space (a regular expression
# took longer than json.loads itself).
_ONLY_DIGITS = bytes(0x39 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_NUMBER = b"9" * 19


class BodyTooLargeError(Exception):
    """The body is over the route's limit; it was read no further."""


def read_body(incoming: Request, limit: int) -> bytes:
    """A webhook's raw body; BodyTooLargeError past ``limit`` (read no further), chunked or not.

    Flask reads a streamed (chunked) body up to the request's maximum and stops there
    without a word, so the maximum is one byte past the limit: a body cut at the limit
    is never taken for the whole one.
    """
    incoming.max_content_length = limit + 1
    try:
        body = incoming.get_data(cache=False)
    except RequestEntityTooLarge:
        raise BodyTooLargeError(limit) from None
    if len(body) > limit:
        raise BodyTooLargeError(limit)
    return body


def too_deep(body: bytes, payload: Any) -> bool:
    """Whether the body's lists and objects nest deeper than MAX_JSON_DEPTH.

    Counting brackets is a C-speed scan that rules out deep nesting for nearly every
    body; only the rest is walked (without recursing).
    """
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return False
    pending = [(payload, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > MAX_JSON_DEPTH:
            return True
        pending.extend((child, depth + 1) for child in value)
    return False


def parse_json(body: bytes) -> Any:
    """The body's JSON exactly as Python's json reads it, most often by orjson (faster).

    orjson gives json's answer for any body it reads, except an integer past 64 bits (a
    float to orjson): a body with a run of 19 digits goes to json. So does a body orjson
    refuses, and json reads or refuses it as before: a BOM, UTF-16, lone surrogates, a
    number out of a double's range, nesting past 1,024. Both refuse NaN and Infinity.
    """
    if _LONG_NUMBER not in body.translate(_ONLY_DIGITS):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return json.loads(body, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def encode_answer(payload: dict[str, Any]) -> bytes:
    """The JSON body of an answer (orjson; the standard encoder for what it refuses)."""
    try:
        return orjson.dumps(payload)
    except TypeError:  # orjson refuses a lone surrogate, or a key that is not a str
        return json.dumps(payload, separators=(",", ":")).encode()


