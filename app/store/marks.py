"""An event's dedup mark: its story, packed into one short string.

A mark is one field of a bucket hash (``app/store/keys.py``): the field is the event_id, the
value is the story below. Redis keeps a bucket as a compact listpack only while every
value is at most 64 bytes (``hash-max-listpack-value``); one longer value turns the
whole bucket into a hashtable, twice the bytes per field. So a story is a status
letter, the copies received after the first (absent for none), then ``|``-separated
parts in a fixed order per status::

    q  queued          q|<type>|<queue entry id>
    r  relayed         r|<type>|<entry>|<at>|<mParticle status>|<source_request_id>[|<attempts>]
    d  dead_lettered   d|<type>|<entry>|<at>|<reason>
    s  suppressed      s|<type>|<received>|<delivery_id>
    i  ignored         i|<type>|<received>|<reason>
    x  quarantined     x||<received>|<dead-letter id>|<reason>

e.g. ``q2|email_opened|1795704496123-0``: queued, two more copies answered duplicate.

* A queued story keeps the queue entry id as Redis gave it (its milliseconds are the
  time the event was received): the accept script does no arithmetic. Once the worker
  is done with the event, ``entry`` is that id with its milliseconds in base 36
  (``mwxo3cvv-0``) and ``at`` the milliseconds after the time received, base 36;
  ``received``: unix milliseconds in base 36.
* ``mParticle status``: empty for its usual 202; ``source_request_id``: its 16 bytes in
  URL-safe base64 (22 characters, not 36).
* ``reason``: one letter for the relay's own reasons (:data:`REASONS`), else the text.
* Free text (type, delivery_id, reason) is stored with ``%`` and ``|`` escaped.
* The event a suppressed event was suppressed by is not stored twice: it is the
  delivery's first-occurrence flag for the type, which outlives the mark.

The longest common story, a relayed ``email_delivered`` with copies, a retry and hours
in the queue, is 62 bytes. Scripts build and rewrite stories with the same rules, in
``scripts/story_functions.lua``.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any
from urllib.parse import unquote

STATUSES = {
    "q": "queued",
    "r": "relayed",
    "d": "dead_lettered",
    "s": "suppressed",
    "i": "ignored",
    "x": "quarantined",
}

# The relay's own reasons, one letter each. Letters stay in Redis as long as a mark
# does: never change or reuse one. A reason not listed is stored as its text.
REASONS = {
    "O": "event type turned off",
    "U": "unknown event type",
    "J": "body is not JSON",
    "N": "body is nested too deep",
    "W": "not a usable reporting webhook",
    "L": "event larger than an mParticle batch",
    "E": "queue entry is not a reporting webhook",
    "P": "no customer_id or email identifies the person",
    "R": "mParticle refused the batch",
}
_REASON_LETTERS = {text: letter for letter, text in REASONS.items()}

_PARTS = {
    "q": ("event", "queue_entry"),
    "r": ("event", "queue_entry", "status_at_ms", "mparticle_status", "source_request_id",
          "attempts"),
    "d": ("event", "queue_entry", "status_at_ms", "reason"),
    "s": ("event", "received_at_ms", "delivery_id"),
    "i": ("event", "received_at_ms", "reason"),
    "x": ("event", "received_at_ms", "dead_letter_id", "reason"),
}

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"

# mParticle's answer to nearly every request it takes: a relayed story leaves it out.
_USUAL_ANSWER = 202

def base36(number: int) -> str:
    """An integer in base 36, as the scripts write it."""
    if number < 0:
        return "-" + base36(-number)
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = _DIGITS[digit] + text
        if not number:
            return text


def escape(text: str) -> str:
    """Free text as a part of a story: ``%`` and ``|`` escaped."""
    if "%" in text or "|" in text:
        text = text.replace("%", "%25").replace("|", "%7C")
    return text


def packed_entry(entry_id: str) -> str:
    """A queue entry id with its milliseconds in base 36 (relayed, dead-lettered)."""
    ms, sequence = entry_id.split("-", 1)
    return f"{base36(int(ms))}-{sequence}"


def packed_reason(reason: str) -> str:
    """A reason as a story keeps it: a letter for the relay's own, else the text."""
    letter = _REASON_LETTERS.get(reason)
    if letter:
        return letter
    text = escape(reason)
    return f"%{ord(text):02X}" if text in REASONS else text  # never read back as a letter


def ignored(event_type: str, received_ms: int, reason: str) -> str:
    """The story of an event answered "ignored"."""
    return f"i|{escape(event_type)}|{base36(received_ms)}|{packed_reason(reason)}"


def quarantined(received_ms: int, dead_letter_id: str, reason: str) -> str:
    """The story of a payload kept as a dead letter, raw."""
    return f"x||{base36(received_ms)}|{dead_letter_id}|{packed_reason(reason)}"


def relayed_ending(mparticle_status: int, source_request_id: str, attempts: int) -> str:
    """What a relayed story says after its time: answer, batch, attempts past the first."""
    packed_id = base64.urlsafe_b64encode(bytes.fromhex(source_request_id.replace("-", "")))
    packed_id = packed_id.decode()
    answer = "" if mparticle_status == _USUAL_ANSWER else str(mparticle_status)
    ending = f"{answer}|{packed_id.rstrip('=')}"
    return f"{ending}|{attempts}" if attempts > 1 else ending


def unpack(story: str) -> dict[str, Any]:
    """A packed story as support reads it (the names the API and the CLI show)."""
    head, *parts = story.split("|")
    code, copies = head[:1], head[1:]
    told: dict[str, Any] = {"status": STATUSES.get(code, code)}
    for name, part in zip(_PARTS.get(code, ()), parts, strict=False):
        if not part:
            continue
        if name == "queue_entry":
            ms, sequence = part.split("-", 1)
            told["received_at_ms"] = int(ms, 10 if code == "q" else 36)
            told[name] = f"{told['received_at_ms']}-{sequence}"
        elif name == "received_at_ms":
            told[name] = int(part, 36)
        elif name == "status_at_ms":
            told[name] = told.get("received_at_ms", 0) + int(part, 36)
        elif name in ("mparticle_status", "attempts"):
            told[name] = int(part)
        elif name == "source_request_id":
            told[name] = str(uuid.UUID(bytes=base64.urlsafe_b64decode(part + "==")))
        elif name == "reason":
            told[name] = REASONS.get(part) or unquote(part)
        else:
            told[name] = unquote(part)
    if code == "r":
        told.setdefault("mparticle_status", _USUAL_ANSWER)
    if copies:
        told["copies_received_after_first"] = int(copies)
    return told
