"""mParticle batch -> Customer.io Track API v2 batch items.

Pure functions: no Flask, no Redis, no I/O. What mParticle's own Customer.io integration
does (shared/seeds 001, 002), as items of ``POST /api/v2/batch``:

- **Who** (``person_of``): ``customer_id`` and ``email`` from ``user_identities`` under
  ``user_id_type``; a value starting with ``cio_`` is a ``cio_id``.
- **identify** first, when there is anything to set or an event of the batch is
  forwarded; then one item per forwarded event, in the order given.
- ``custom_event`` -> ``event``, ``screen_view`` -> ``screen``, ``opt_out`` -> an
  identify with ``unsubscribed``, ``push_registration`` -> ``add_device`` /
  ``delete_device``, ``commerce_event`` (when turned on) -> an event named after its
  product action. Everything else is ignored, and so are echoes of the other direction.

Where the contract is silent (each is tested):

- Attribute values: strings are cut to 1000 bytes of UTF-8; lists are joined with ","
  (nulls left out; numbers and booleans as their JSON text) and then cut; numbers and
  booleans stay JSON scalars, and a number whose text is over 1000 bytes is dropped (a
  cut number would be a different number); an object becomes its compact JSON text and
  is dropped when that is over the limit; ``null`` (mParticle's user tags) and
  non-finite numbers are dropped: Customer.io has no tags, and ``null`` or ``""`` would
  read as deleting the attribute.
- The identifiers ``id``, ``email`` and ``cio_id`` are never taken from user
  attributes (one of them could re-identify or merge people); ``email`` comes from
  the email identity only.
- When over 300 attributes: the names, ``email``, ``mparticle_id`` and ``created_at``
  are always kept; the others in the batch's order until 300.
- A deletion (``deleted_user_attributes``) wins over a value set in the same batch.
- ``push_registration``: ``device_info.platform`` ``iOS`` / ``tvOS`` -> ``ios``,
  ``Android`` -> ``android`` (case-insensitive); any other or no platform: from the
  token's shape (64 hex digits, an APNs token -> ``ios``; else ``android``), because
  every forwarded event gets its item (see ``classify``). Customer.io knows only these
  two. An unregistration needs no platform.
- No usable time (neither the event's nor the batch's ``timestamp_unixtime_ms``): the
  item has no ``timestamp`` (Customer.io uses the time it receives it; for a device,
  no ``last_used``) and the event's ULID has the time 0.
- Lone surrogates (JSON may escape one) become "?", so every item encodes to UTF-8.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app.to_customerio.schema import event_problem, millis
from app.to_customerio.ulid import ulid

USER_ID_TYPES = ("prefer_customer_id", "customer_id", "email")

# Customer.io's limits (Track API v2): bytes of UTF-8.
MAX_EVENT_NAME_BYTES = 100
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_ATTRIBUTES = 300
# Longest idempotency key used as it is; a longer one is replaced by its SHA-256 (keys
# become parts of Redis keys and log lines).
MAX_IDEMPOTENCY_KEY = 200
# How deep event attributes may nest before a value is dropped (keeps the copy bounded).
MAX_ATTRIBUTE_DEPTH = 32

CIO_ID_PREFIX = "cio_"
# mParticle's reserved user attributes (matched case-insensitively) -> Customer.io's names.
RESERVED_ATTRIBUTES = {
    "$firstname": "first_name",
    "$lastname": "last_name",
    "$mobile": "phone",
    "$age": "age",
    "$gender": "gender",
    "$address": "address",
    "$city": "city",
    "$state": "state",
    "$zip": "zip",
    "$country": "country",
}
NAME_ATTRIBUTES = frozenset({"first_name", "last_name"})
# Customer.io reads these as identifiers: never set from a user attribute.
IDENTIFIER_ATTRIBUTES = frozenset({"id", "email", "cio_id"})
# device_info.platform (lower case) -> the platform Customer.io pushes to.
DEVICE_PLATFORMS = {"ios": "ios", "tvos": "ios", "android": "android"}
_APNS_TOKEN = re.compile(r"[0-9a-fA-F]{64}")
# A commerce event's attributes, from its product_action (after its custom attributes).
COMMERCE_ATTRIBUTES = ("transaction_id", "total_amount", "tax_amount", "shipping_amount")
# How long an event type may be when quoted in an "ignored" reason.
MAX_REASON_TYPE = 64

_DROP = object()


@dataclass(frozen=True)
class MappingOptions:
    """The ``[customerio]`` settings the mapping obeys, and the echo guard's names."""

    user_id_type: str = "prefer_customer_id"
    include_user_attributes: bool = True
    send_created_at: bool = False
    forward_screen_views: bool = True
    forward_commerce_events: bool = False
    # Every Customer.io event type the catalog knows, in both naming styles
    # ("email_opened" and "Email Opened"): custom events so named are echoes.
    known_event_names: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.user_id_type not in USER_ID_TYPES:
            raise ValueError(
                f"user_id_type must be one of {', '.join(USER_ID_TYPES)}: {self.user_id_type!r}"
            )
        if not isinstance(self.known_event_names, frozenset):
            object.__setattr__(self, "known_event_names", frozenset(self.known_event_names))


@dataclass(frozen=True)
class Person:
    """Whom a batch is about, as Customer.io identifies them."""

    identifiers: dict[str, str]  # exactly one of {"id": …}, {"email": …}, {"cio_id": …}
    email: str | None  # carried as an attribute when identified by id, else None
    routing_key: str  # stable per person: their items stay in order


# --- who --------------------------------------------------------------------------


def person_of(batch: dict[str, Any], options: MappingOptions) -> Person | None:
    """The person a batch is about, or None when it has no usable identity."""
    customer_id = _identity(batch, "customer_id")
    email = _identity(batch, "email")
    if options.user_id_type == "customer_id":
        candidates = [("id", customer_id)]
    elif options.user_id_type == "email":
        candidates = [("email", email)]
    else:
        candidates = [("id", customer_id), ("email", email)]
    for kind, value in candidates:
        if value is None:
            continue
        if value.startswith(CIO_ID_PREFIX):
            cio_id = value[len(CIO_ID_PREFIX):]
            if cio_id:
                return Person({"cio_id": cio_id}, None, f"cio_id:{cio_id}")
            continue  # "cio_" and nothing after it names no one
        if kind == "id":
            beside = email if email and not email.startswith(CIO_ID_PREFIX) else None
            return Person({"id": value}, beside, f"id:{value}")
        # Customer.io matches emails regardless of case: so do the queue's shards.
        return Person({"email": value}, None, f"email:{value.lower()}")
    return None


def _identity(batch: dict[str, Any], identity_type: str) -> str | None:
    """The first usable value of one identity type (either shape of user_identities)."""
    identities = batch.get("user_identities")
    if isinstance(identities, dict):
        pairs: Iterable[tuple[Any, Any]] = identities.items()
    elif isinstance(identities, list):
        pairs = (
            (entry.get("identity_type"), entry.get("identity"))
            for entry in identities
            if isinstance(entry, dict)
        )
    else:
        return None
    for kind, value in pairs:
        if not isinstance(kind, str) or kind.lower() != identity_type:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.strip():
            return _utf8(value.strip())
    return None


# --- which events -----------------------------------------------------------------


def idempotency_key(batch: dict[str, Any], event: dict[str, Any]) -> str:
    """The key an event is deduplicated on: mParticle's own ids, else a hash of its content.

    ``data.source_message_id``, else ``data.event_id``, else SHA-256 of
    (``mpid``, ``event_type``, ``timestamp_unixtime_ms``, name), in hex (32 characters).
    """
    data = _data(event)
    for candidate in (data.get("source_message_id"), data.get("event_id")):
        if isinstance(candidate, int) and not isinstance(candidate, bool):
            candidate = str(candidate)
        if isinstance(candidate, str) and candidate.strip():
            key = _utf8(candidate.strip())
            if len(key) > MAX_IDEMPOTENCY_KEY:
                return hashlib.sha256(key.encode("utf-8")).hexdigest()
            return key
    name = _raw_name(event)
    content = [
        batch.get("mpid"),
        event.get("event_type"),
        _event_millis(batch, event),
        name if isinstance(name, str) else None,
    ]
    text = json.dumps(content, separators=(",", ":"))  # ASCII: lone surrogates escaped
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:32]


def classify(event: dict[str, Any], options: MappingOptions) -> tuple[str, str | None]:
    """Whether an event is forwarded: ("forward", None) or ("ignored", reason).

    ``items_for_batch`` gives exactly one item to every event forwarded here, so callers
    can pair each item after the identify with its event.
    """
    problem = event_problem(event)
    if problem is not None:
        return "ignored", problem
    event_type: str = event["event_type"]
    data = _data(event)
    if event_type == "custom_event":
        attributes = data.get("custom_attributes")
        if (
            data["event_name"].strip() in options.known_event_names
            and isinstance(attributes, dict)
            and "source_message_id" in attributes
        ):
            return "ignored", "echo"
        return "forward", None
    if event_type == "screen_view":
        if not options.forward_screen_views:
            return "ignored", "screen views are not forwarded"
        return "forward", None
    if event_type == "opt_out":
        if data.get("is_opted_out") is not True:
            return "ignored", "opt_out with is_opted_out false"
        return "forward", None
    if event_type == "push_registration":
        register = data.get("register")
        if register is False:
            return "forward", None
        if register is not True:
            return "ignored", "push_registration without register true or false"
        return "forward", None
    if event_type == "commerce_event":
        if not options.forward_commerce_events:
            return "ignored", "commerce events are not forwarded"
        if _product_action_name(data) is None:
            return "ignored", "commerce_event without product_action.action"
        return "forward", None
    return "ignored", f"event type not forwarded: {event_type[:MAX_REASON_TYPE]}"


def device_platform(batch: dict[str, Any], token: str) -> str:
    """Customer.io's platform ("ios" or "android") for a device token of this batch.

    From ``device_info.platform`` (iOS and tvOS: APNs; Android: FCM); without one of
    those, from the token's shape: an APNs token is 64 hex digits, anything else is
    taken for FCM's.
    """
    device_info = batch.get("device_info")
    platform = device_info.get("platform") if isinstance(device_info, dict) else None
    if isinstance(platform, str) and platform.lower() in DEVICE_PLATFORMS:
        return DEVICE_PLATFORMS[platform.lower()]
    return "ios" if _APNS_TOKEN.fullmatch(token) else "android"


# --- the items --------------------------------------------------------------------


def items_for_batch(
    batch: dict[str, Any], events: list[dict[str, Any]], options: MappingOptions
) -> list[dict[str, Any]]:
    """The Customer.io v2 batch items for one mParticle batch, in order.

    The identify first, when there is anything to set or one of ``events`` is
    forwarded; then one item per forwarded event of ``events`` (the events the caller
    accepted, in their order). ``[]`` when there is no person or nothing to send.
    """
    person = person_of(batch, options)
    if person is None:
        return []
    forwarded = [event for event in events if classify(event, options)[0] == "forward"]
    names, others, system = _identify_parts(batch, options, person)
    if not (names or others or system or forwarded):
        return []
    mpid = batch.get("mpid")
    if isinstance(mpid, int) and not isinstance(mpid, bool):
        system["mparticle_id"] = str(mpid)
    others = {name: value for name, value in others.items() if name not in system}
    room = max(MAX_ATTRIBUTES - len(names) - len(system), 0)
    kept = dict(list(others.items())[:room])
    identify: dict[str, Any] = {
        "type": "person",
        "identifiers": dict(person.identifiers),
        "action": "identify",
    }
    batch_ms = millis(batch.get("timestamp_unixtime_ms"))
    if batch_ms is not None:
        identify["timestamp"] = batch_ms // 1000
    identify["attributes"] = {**names, **kept, **system}
    items = [identify]
    for event in forwarded:
        items.append(_event_item(batch, event, person))
    return items


def _identify_parts(
    batch: dict[str, Any], options: MappingOptions, person: Person
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The identify's attributes in three parts: the names, other user attributes, ours."""
    names: dict[str, Any] = {}
    others: dict[str, Any] = {}
    user_attributes = batch.get("user_attributes")
    deleted = batch.get("deleted_user_attributes")
    changes = list(user_attributes.items()) if isinstance(user_attributes, dict) else []
    # A deletion comes after the values, so it wins over a value set in the same batch.
    if isinstance(deleted, list):
        changes += [(raw_name, "") for raw_name in deleted]
    for raw_name, raw_value in changes:
        name = _attribute_name(raw_name)
        if name is None:
            continue
        is_name = name in NAME_ATTRIBUTES and raw_name.lower() in RESERVED_ATTRIBUTES
        if not (is_name or options.include_user_attributes):
            continue
        value = _attribute_value(raw_value)
        if value is not _DROP:
            (names if is_name else others)[name] = value
    others = {name: value for name, value in others.items() if name not in names}
    system: dict[str, Any] = {}
    if person.email is not None:
        system["email"] = person.email
    if options.send_created_at:
        created_at = _created_at(batch)
        if created_at is not None:
            system["created_at"] = created_at
    return names, others, system


def _attribute_name(raw_name: Any) -> str | None:
    """Customer.io's name for a user attribute, or None when it is not sent."""
    if not isinstance(raw_name, str):
        return None
    name = RESERVED_ATTRIBUTES.get(raw_name.lower(), raw_name)
    name = _utf8(name)
    if not name or name in IDENTIFIER_ATTRIBUTES:
        return None
    if len(name.encode("utf-8")) > MAX_ATTRIBUTE_NAME_BYTES:
        return None
    return name


def _attribute_value(value: Any) -> Any:
    """A user attribute's value as Customer.io gets it, or _DROP to leave it out."""
    if value is None or isinstance(value, bool):
        return _DROP if value is None else value
    if isinstance(value, int):
        # Over ~3400 bits a number has over 1000 digits: not even turned into text.
        if value.bit_length() > 3400 or len(str(value)) > MAX_ATTRIBUTE_VALUE_BYTES:
            return _DROP
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _DROP
    if isinstance(value, str):
        return cut_utf8(_utf8(value), MAX_ATTRIBUTE_VALUE_BYTES)
    if isinstance(value, list):
        texts = (_list_item_text(item) for item in value)
        return cut_utf8(",".join(text for text in texts if text is not None),
                        MAX_ATTRIBUTE_VALUE_BYTES)
    if isinstance(value, dict):
        text = _json_text(value)
        if text is None or len(text.encode("utf-8")) > MAX_ATTRIBUTE_VALUE_BYTES:
            return _DROP
        return text
    return _DROP


def _list_item_text(item: Any) -> str | None:
    if item is None:
        return None
    if isinstance(item, str):
        return _utf8(item)
    if isinstance(item, float) and not math.isfinite(item):
        return None
    if isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > 3400:
        return None
    return _json_text(item)


def _json_text(value: Any) -> str | None:
    """Compact JSON text of a value, or None when it has none (NaN, too deep, …)."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return None
    return _utf8(text)


def _created_at(batch: dict[str, Any]) -> int | None:
    """The earliest identity's time in seconds (mParticle's "user created at")."""
    identities = batch.get("user_identities")
    if not isinstance(identities, list):
        return None
    times = [
        ms
        for entry in identities
        if isinstance(entry, dict)
        and (ms := millis(entry.get("timestamp_unixtime_ms"))) is not None
    ]
    return min(times) // 1000 if times else None


def _event_item(batch: dict[str, Any], event: dict[str, Any], person: Person) -> dict[str, Any]:
    """The one item of a forwarded event."""
    event_type = event["event_type"]
    data = _data(event)
    event_ms = _event_millis(batch, event)
    item: dict[str, Any] = {"type": "person", "identifiers": dict(person.identifiers)}
    if event_type == "opt_out":
        item["action"] = "identify"
        _set_timestamp(item, event_ms)
        item["attributes"] = {"unsubscribed": True}
        return item
    if event_type == "push_registration":
        token = _utf8(data["registration_token"].strip())
        if data.get("register") is False:
            item["action"] = "delete_device"
            item["device"] = {"token": token}
            return item
        item["action"] = "add_device"
        device: dict[str, Any] = {"token": token, "platform": device_platform(batch, token)}
        if event_ms is not None:
            device["last_used"] = event_ms // 1000
        item["device"] = device
        return item
    attributes = _event_attributes(data.get("custom_attributes"))
    if event_type == "custom_event":
        action, raw_name = "event", data["event_name"]
    elif event_type == "screen_view":
        action, raw_name = "screen", data["screen_name"]
    else:  # commerce_event
        action, raw_name = "event", _product_action_name(data)
        attributes.update(_commerce_attributes(data))
    item["action"] = action
    item["id"] = ulid(event_ms if event_ms is not None else 0, idempotency_key(batch, event))
    item["name"] = event_name(raw_name)
    _set_timestamp(item, event_ms)
    item["attributes"] = attributes
    return item


def _set_timestamp(item: dict[str, Any], event_ms: int | None) -> None:
    if event_ms is not None:
        item["timestamp"] = event_ms // 1000


def _commerce_attributes(data: dict[str, Any]) -> dict[str, Any]:
    """A commerce event's totals, transaction id and currency, as event attributes."""
    product_action = data.get("product_action")
    attributes: dict[str, Any] = {}
    sources = [(name, product_action.get(name)) for name in COMMERCE_ATTRIBUTES]
    sources.append(("currency_code", data.get("currency_code")))
    for name, value in sources:
        safe = _json_safe(value, 0)
        if safe is not _DROP and safe is not None:
            attributes[name] = safe
    return attributes


def _product_action_name(data: dict[str, Any]) -> str | None:
    product_action = data.get("product_action")
    action = product_action.get("action") if isinstance(product_action, dict) else None
    return action if isinstance(action, str) and action.strip() else None


def _event_attributes(custom_attributes: Any) -> dict[str, Any]:
    """An event's custom attributes as JSON Customer.io can take (UTF-8, finite numbers)."""
    if not isinstance(custom_attributes, dict):
        return {}
    safe = _json_safe(custom_attributes, 0)
    return safe if isinstance(safe, dict) else {}


def _json_safe(value: Any, depth: int) -> Any:
    """A copy of a JSON value that encodes: "?" for lone surrogates, no NaN or infinity."""
    if isinstance(value, str):
        return _utf8(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _DROP
    if depth >= MAX_ATTRIBUTE_DEPTH:
        return _DROP
    if isinstance(value, list):
        items = (_json_safe(item, depth + 1) for item in value)
        return [item for item in items if item is not _DROP]
    if isinstance(value, dict):
        copied = {}
        for name, item in value.items():
            safe = _json_safe(item, depth + 1)
            if isinstance(name, str) and safe is not _DROP:
                copied[_utf8(name)] = safe
        return copied
    return _DROP


# --- names and text ---------------------------------------------------------------


def event_name(raw: str) -> str:
    """An event name as mParticle's integration sends it, within Customer.io's 100 bytes.

    Leading and trailing spaces trimmed, every space replaced by "_", then cut to 100
    bytes of UTF-8, never inside a character.
    """
    return cut_utf8(_utf8(raw).strip().replace(" ", "_"), MAX_EVENT_NAME_BYTES)


def cut_utf8(text: str, limit: int) -> str:
    """The longest start of ``text`` within ``limit`` bytes of UTF-8, whole characters only."""
    if len(text) * 4 <= limit:
        return text
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    # A cut inside a character leaves an incomplete sequence at the end only: drop it.
    return encoded[:limit].decode("utf-8", "ignore")


def _utf8(text: str) -> str:
    """The text with any lone surrogate replaced by "?", so it encodes to UTF-8."""
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


def _data(event: dict[str, Any]) -> dict[str, Any]:
    data = event.get("data")
    return data if isinstance(data, dict) else {}


def _raw_name(event: dict[str, Any]) -> Any:
    """What names an event, as it came: for the hash of an event without mParticle's ids."""
    data = _data(event)
    event_type = event.get("event_type")
    if event_type == "custom_event":
        return data.get("event_name")
    if event_type == "screen_view":
        return data.get("screen_name")
    if event_type == "push_registration":
        return data.get("registration_token")
    if event_type == "commerce_event":
        return _product_action_name(data)
    return None


def _event_millis(batch: dict[str, Any], event: dict[str, Any]) -> int | None:
    """The event's own millisecond time, else the batch's, else None."""
    event_ms = millis(_data(event).get("timestamp_unixtime_ms"))
    return event_ms if event_ms is not None else millis(batch.get("timestamp_unixtime_ms"))
