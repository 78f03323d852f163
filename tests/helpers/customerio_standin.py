"""A real HTTP server on loopback that stands in for Customer.io's Track API (v2 batch).

Tests send to it over real sockets, so the relay's client, timeouts and retries are exercised
exactly as in production, without mocking `requests`. It checks every batch request against
Customer.io's documented limits and the relay's contract (CONTRACT.md §6) the way Customer.io
would refuse a bad one, records what it took, and can be scripted to fail (429, 5xx, hanging
past a timeout, refusing chosen items with a 207).

Endpoints, as Customer.io's Track API OpenAPI document describes them:

- ``POST /api/v2/batch``, HTTP Basic ``site_id:api_key``, body ``{"batch": [items]}``: 200 ``{}``
  when every item is taken; 207 ``{"errors": [{"batch_index", "reason", "field", "message"}]}``
  listing only the refused items (the others are taken); 400 ``{"errors": [{"reason", "field",
  "message"}]}`` when the request as a whole is malformed; 401 for wrong credentials.
  Customer.io does not document its answer to a request over 500 KB: the stand-in answers 413
  (which the relay must treat as "split"), and 415 to a body not declared JSON.
- ``GET /api/v1/accounts/region``, HTTP Basic: 200 ``{"url": "https://track.customer.io",
  "region": "us", "environment_id": 1}`` (the region is configurable), 401 otherwise.

Customer.io deduplicates events by their ``id`` (a ULID): a second event with an id it already
took is dropped silently (still 200), and the stand-in counts those drops.

It uses only the standard library, so it also runs as a separate process for end-to-end tests:

    python -m tests.helpers.customerio_standin --port 8098 --site-id S --api-key K

which serves quietly until SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hmac
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)

BATCH_PATH = "/api/v2/batch"
REGION_PATH = "/api/v1/accounts/region"

# Customer.io's limits (Track API v2 and its "invalid API requests" page); KB as 1024 bytes.
MAX_REQUEST_BYTES = 500 * 1024
MAX_ITEM_BYTES = 32 * 1024
MAX_NAME_BYTES = 100
MAX_ATTRIBUTES = 300
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
# A Unix time in seconds stays below this until the year 5138; a time in milliseconds is above.
MAX_SECONDS_TIMESTAMP = 10**11

IDENTIFIER_KEYS = frozenset({"id", "email", "cio_id"})
EVENT_ACTIONS = frozenset({"event", "screen", "page"})
DEVICE_ACTIONS = frozenset({"add_device", "delete_device"})
# What the relay sends, and the other person actions Customer.io takes with no more than
# identifiers (so a test may send them).
PERSON_ACTIONS = frozenset({"identify", "delete", "suppress", "unsuppress"}) | EVENT_ACTIONS
PERSON_ACTIONS |= DEVICE_ACTIONS
DEVICE_PLATFORMS = frozenset({"ios", "android"})

REGION_URLS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}

CROCKFORD = frozenset("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
JSON_HEADERS = {"Content-Type": "application/json"}


class ItemError(ValueError):
    """One item breaks a rule; becomes an entry of a 207's ``errors``."""

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.reason = reason
        self.field = field
        self.message = message

    def entry(self, index: int) -> dict[str, Any]:
        return {"batch_index": index, "reason": self.reason, "field": self.field,
                "message": self.message}


class RequestError(ValueError):
    """The request as a whole is malformed: a 400 (or `status`) with one error, no index."""

    def __init__(self, field: str, message: str, *, status: int = 400, reason: str = "invalid"):
        super().__init__(f"{field}: {message}")
        self.status = status
        self.body = json.dumps({"errors": [{"reason": reason, "field": field,
                                            "message": message}]})


@dataclass(frozen=True)
class Reply:
    """A scripted answer to one request.

    `delay` is slept after the request is recorded and before it is answered, to simulate an
    answer that arrives after the client has given up.
    """

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    delay: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request the stand-in received, and the status it answered (0: none, it hung)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def header(self, name: str) -> str | None:
        """Return a header's value, whatever the case of its name."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


ItemPredicate = Callable[[dict[str, Any]], bool]
Person = tuple[str, str]  # ("id", "42"), ("email", "a@example.com") or ("cio_id", "...")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def is_ulid(value: Any) -> bool:
    """True for a ULID: 26 Crockford base32 characters, the first at most 7 (128 bits)."""
    return (
        isinstance(value, str)
        and len(value) == 26
        and set(value.upper()) <= CROCKFORD
        and value[0] in "01234567"
    )


def parse_batch(body: bytes) -> list[Any]:
    """Return the items of a batch request body, or raise RequestError naming the problem."""
    if len(body) > MAX_REQUEST_BYTES:
        raise RequestError(
            "batch", f"request is {len(body)} bytes, over {MAX_REQUEST_BYTES}",
            status=413, reason="too_large",
        )
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError("body", f"not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise RequestError("body", 'not a JSON object {"batch": [...]}')
    items = payload.get("batch")
    if not isinstance(items, list):
        raise RequestError("batch", "missing or not a list")
    if not items:
        raise RequestError("batch", "empty: nothing to do")
    return items


def validate_item(item: Any) -> None:
    """Raise ItemError unless `item` is one person item Customer.io (and CONTRACT §6) accepts."""
    if not isinstance(item, dict):
        raise ItemError("invalid", "item", "not an object")
    size = _size(item)
    if size > MAX_ITEM_BYTES:
        raise ItemError("too_large", "item", f"{size} bytes, over {MAX_ITEM_BYTES}")
    if item.get("type") != "person":
        raise ItemError("invalid", "type", f"{item.get('type')!r}, not 'person'")
    action = item.get("action")
    if action not in PERSON_ACTIONS:
        raise ItemError("invalid", "action", f"{action!r} is not one of {sorted(PERSON_ACTIONS)}")
    person_of(item)  # raises for identifiers that are not exactly one of id/email/cio_id
    if "timestamp" in item or action in EVENT_ACTIONS:
        _check_seconds(item.get("timestamp"), "timestamp")
    if action in EVENT_ACTIONS:
        _check_event(item)
    elif action in DEVICE_ACTIONS:
        _check_device(item.get("device"), add=action == "add_device")
    if action == "identify":
        _check_identify_attributes(item.get("attributes"))
    elif "attributes" in item and not isinstance(item["attributes"], dict):
        raise ItemError("invalid", "attributes", "not an object")


def person_of(item: dict[str, Any]) -> Person:
    """The one identifier of a person item, e.g. ("id", "42"); ItemError if not exactly one."""
    identifiers = item.get("identifiers")
    if not isinstance(identifiers, dict) or not identifiers:
        raise ItemError("required", "identifiers", "missing or not an object")
    if len(identifiers) != 1:
        names = ", ".join(sorted(identifiers))
        raise ItemError("invalid", "identifiers", f"exactly one identifier allowed, got {names}")
    ((key, value),) = identifiers.items()
    if key not in IDENTIFIER_KEYS:
        raise ItemError("invalid", "identifiers", f"{key!r} is not one of id, email, cio_id")
    if not isinstance(value, str) or not value.strip():
        raise ItemError("invalid", f"identifiers.{key}", "not a non-empty string")
    if key == "cio_id" and value.startswith("cio_"):
        raise ItemError("invalid", "identifiers.cio_id", "the cio_ prefix is not part of the id")
    return key, value


def _check_seconds(value: Any, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ItemError("invalid", where, "not an integer Unix time in seconds")
    if value < 0:
        raise ItemError("invalid", where, "negative")
    if value > MAX_SECONDS_TIMESTAMP:
        raise ItemError("invalid", where, f"{value} looks like milliseconds, not seconds")


def _check_event(item: dict[str, Any]) -> None:
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ItemError("required", "name", "event name must not be blank")
    if _utf8_len(name) > MAX_NAME_BYTES:
        raise ItemError("too_long", "name", f"event name cannot be longer than {MAX_NAME_BYTES}"
                                            " bytes")
    if not is_ulid(item.get("id")):
        raise ItemError("invalid", "id", f"{item.get('id')!r} is not a ULID")


def _check_device(device: Any, *, add: bool) -> None:
    if not isinstance(device, dict):
        raise ItemError("required", "device", "missing or not an object")
    token = device.get("token")
    if not isinstance(token, str) or not token:
        raise ItemError("required", "device.token", "not a non-empty string")
    if add:
        if device.get("platform") not in DEVICE_PLATFORMS:
            raise ItemError("invalid", "device.platform", f"{device.get('platform')!r} is not one"
                                                          " of android, ios")
        if "last_used" in device:
            _check_seconds(device["last_used"], "device.last_used")


def _check_identify_attributes(attributes: Any) -> None:
    if attributes is None:
        return
    if not isinstance(attributes, dict):
        raise ItemError("invalid", "attributes", "not an object")
    if len(attributes) > MAX_ATTRIBUTES:
        raise ItemError("too_many", "attributes",
                        f"cannot identify more than {MAX_ATTRIBUTES} attributes in one request")
    for name, value in attributes.items():
        if _utf8_len(name) > MAX_ATTRIBUTE_NAME_BYTES:
            raise ItemError("too_long", "attributes",
                            f"attribute name {name[:40]!r}… cannot be longer than"
                            f" {MAX_ATTRIBUTE_NAME_BYTES} bytes")
        size = _utf8_len(value) if isinstance(value, str) else _size(value)
        if size > MAX_ATTRIBUTE_VALUE_BYTES:
            raise ItemError("too_long", f"attributes.{name}",
                            f"value for attribute {name!r} cannot be longer than"
                            f" {MAX_ATTRIBUTE_VALUE_BYTES} bytes")


def _cut(connection: socket.socket) -> None:
    # A handler of an idle keep-alive connection blocks in a read; this ends the read.
    with contextlib.suppress(OSError):  # already closed by the client
        connection.shutdown(socket.SHUT_RDWR)


def _error_body(reason: str, message: str) -> str:
    return json.dumps({"errors": [{"reason": reason, "message": message}]})


class CustomerIOStandIn:
    """Serve the Track API's batch and region endpoints on loopback, and record what arrives."""

    def __init__(
        self,
        site_id: str = "test-site",
        api_key: str = "test-api-key",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        region: str = "us",
        environment_id: int = 1,
    ) -> None:
        self.site_id = site_id
        self.api_key = api_key
        self._address = (host, port)
        token = base64.b64encode(f"{site_id}:{api_key}".encode()).decode("ascii")
        self._expected_authorization = f"Basic {token}"
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._region = region
        self._environment_id = environment_id
        self._requests: list[RecordedRequest] = []
        self._accepted: list[dict[str, Any]] = []
        self._event_ids: set[str] = set()
        self._duplicates_dropped = 0
        self._script: deque[Reply] = deque()
        self._region_script: deque[Reply] = deque()
        self._reject_predicate: ItemPredicate | None = None
        self._outage: tuple[float, Reply] | None = None  # (monotonic end, reply)
        self._hang_seconds = 0.0
        self._delay = 0.0
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle

    def start(self) -> CustomerIOStandIn:
        """Bind the port and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("the Customer.io stand-in is already running")
        self._stopping.clear()
        self._server = _Server(self._address, _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            # shutdown() waits up to one poll interval; the default 0.5 s adds up over a suite.
            kwargs={"poll_interval": 0.01},
            name="customerio-standin",
            daemon=True,
        )
        self._thread.start()
        logger.debug("Customer.io stand-in serving at %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections and wait for every handler thread."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in a scripted delay or a hang
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            _cut(connection)
        server.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> CustomerIOStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the Customer.io stand-in is not running")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """The Track API base URL to give the relay (``CUSTOMERIO_BASE_URL``), no trailing /."""
        if self._server is None:
            raise RuntimeError("the Customer.io stand-in is not running")
        host = self._server.server_address[0]
        return f"http://{host}:{self.port}"

    # Scripting

    def script(self, *replies: Reply) -> None:
        """Answer the next batch requests with these replies, in order, before any other check.

        A scripted 200 still validates the request (and records what it takes), adding the
        reply's headers, body and delay; any other scripted status is answered as is and
        takes nothing.
        """
        with self._lock:
            self._script.extend(replies)

    def script_region(self, *replies: Reply) -> None:
        """Answer the next region requests with these replies, in order, as they are."""
        with self._lock:
            self._region_script.extend(replies)

    def fail_for(self, seconds: float, reply: Reply) -> None:
        """Answer every request (both endpoints) with `reply` for the next `seconds`."""
        with self._lock:
            self._outage = (time.monotonic() + seconds, reply)

    def hang(self, seconds: float) -> None:
        """From now on, hold every request `seconds`, then close without answering (0: stop).

        Nothing held is taken: the request is recorded with status 0.
        """
        with self._lock:
            self._hang_seconds = seconds

    def answer_slowly(self, seconds: float) -> None:
        """Delay every batch answer the script does not decide by `seconds` (0: at once)."""
        with self._lock:
            self._delay = seconds

    def reject_items_where(self, predicate: ItemPredicate | None) -> None:
        """Refuse (207, by index) every otherwise valid item the predicate matches."""
        with self._lock:
            self._reject_predicate = predicate

    def set_region(self, region: str, environment_id: int | None = None) -> None:
        """The region (and workspace id) the region endpoint names, e.g. "eu"."""
        with self._lock:
            self._region = region
            if environment_id is not None:
                self._environment_id = environment_id

    def reset(self) -> None:
        """Forget every record, scripted reply, rule, hang and outage (the region stays)."""
        with self._lock:
            self._requests.clear()
            self._accepted.clear()
            self._event_ids.clear()
            self._duplicates_dropped = 0
            self._script.clear()
            self._region_script.clear()
            self._reject_predicate = None
            self._outage = None
            self._hang_seconds = 0.0
            self._delay = 0.0
            self._changed.notify_all()

    # Records

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, whatever it was answered."""
        with self._lock:
            return list(self._requests)

    def accepted_items(self) -> list[dict[str, Any]]:
        """Every item taken (not refused, not dropped as a duplicate event), in arrival order."""
        with self._lock:
            return list(self._accepted)

    def items_by_person(self) -> dict[Person, list[dict[str, Any]]]:
        """The items taken, per person (e.g. ``("id", "42")``), each person's in order."""
        people: dict[Person, list[dict[str, Any]]] = {}
        for item in self.accepted_items():
            people.setdefault(person_of(item), []).append(item)
        return people

    def events(self) -> list[dict[str, Any]]:
        """The event, screen and page items taken, in order."""
        return [item for item in self.accepted_items() if item["action"] in EVENT_ACTIONS]

    @property
    def duplicate_event_ids_dropped(self) -> int:
        """How many events were dropped because an event with their id was already taken."""
        with self._lock:
            return self._duplicates_dropped

    def wait_for_items(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least `n` items were taken; False if the timeout passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._accepted) >= n, timeout)

    # Serving (called by handler threads)

    def _track(self, connection: socket.socket, *, open_: bool) -> None:
        with self._lock:
            if not open_:
                self._connections.discard(connection)
                return
            self._connections.add(connection)
            if self._stopping.is_set():  # accepted while stop() was cutting connections
                _cut(connection)

    def _interruption(self) -> tuple[float, Reply | None]:
        """(seconds to hang, outage reply): what overrides every endpoint right now."""
        with self._lock:
            if self._outage is not None and time.monotonic() >= self._outage[0]:
                self._outage = None
            return self._hang_seconds, self._outage[1] if self._outage else None

    def _check_auth(self, headers: dict[str, str]) -> Reply | None:
        authorization = headers.get("authorization", "")
        if hmac.compare_digest(authorization.encode(), self._expected_authorization.encode()):
            return None
        return Reply(401, JSON_HEADERS,
                     _error_body("unauthorized", "missing or wrong HTTP Basic site_id:api_key"))

    def _answer_region(self, headers: dict[str, str]) -> Reply:
        with self._lock:
            scripted = self._region_script.popleft() if self._region_script else None
            region, environment_id = self._region, self._environment_id
        if scripted is not None:
            return scripted
        refused = self._check_auth({k.lower(): v for k, v in headers.items()})
        if refused is not None:
            return refused
        url = REGION_URLS.get(region, f"https://track-{region}.customer.io")
        body = {"url": url, "region": region, "environment_id": environment_id}
        return Reply(200, JSON_HEADERS, json.dumps(body))

    def _answer_batch(self, headers: dict[str, str], body: bytes) -> tuple[Reply, list[Any]]:
        """Decide the answer to a batch request and take its items; the caller records it."""
        with self._lock:
            scripted = self._script.popleft() if self._script else None
            predicate = self._reject_predicate
            delay = self._delay
        if scripted is None and delay > 0:
            scripted = Reply(200, delay=delay)
        if scripted is not None and scripted.status != 200:
            return scripted, []
        reply, items = self._check(headers, body, predicate)
        if scripted is not None and reply.status == 200:
            reply = Reply(200, {**reply.headers, **scripted.headers}, scripted.body or reply.body,
                          scripted.delay)
        return reply, items

    def _check(
        self, headers: dict[str, str], body: bytes, predicate: ItemPredicate | None
    ) -> tuple[Reply, list[Any]]:
        headers = {name.lower(): value for name, value in headers.items()}
        refused = self._check_auth(headers)
        if refused is not None:
            return refused, []
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            message = f"Content-Type {media_type or 'missing'}, not application/json"
            return Reply(415, JSON_HEADERS, _error_body("unsupported_media_type", message)), []
        try:
            items = parse_batch(body)
        except RequestError as exc:
            return Reply(exc.status, JSON_HEADERS, exc.body), []
        errors: list[dict[str, Any]] = []
        valid: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                validate_item(item)
                if predicate is not None and predicate(item):
                    raise ItemError("refused", "item", "refused by the test's rule")
            except ItemError as exc:
                errors.append(exc.entry(index))
            else:
                valid.append(item)
        self._take(valid)
        if errors:
            return Reply(207, JSON_HEADERS, json.dumps({"errors": errors})), items
        return Reply(200, JSON_HEADERS, "{}"), items

    def _take(self, items: list[dict[str, Any]]) -> None:
        with self._changed:
            for item in items:
                event_id = item.get("id") if item["action"] in EVENT_ACTIONS else None
                if event_id is not None:
                    if event_id in self._event_ids:
                        self._duplicates_dropped += 1
                        continue
                    self._event_ids.add(event_id)
                self._accepted.append(item)
            self._changed.notify_all()

    def _record(
        self, method: str, path: str, headers: dict[str, str], body: bytes, status: int
    ) -> None:
        request = RecordedRequest(method, path, headers, body, status)
        with self._changed:
            self._requests.append(request)
            self._changed.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Join handler threads on server_close(), so a stopped stand-in leaves nothing running.
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: type, standin: CustomerIOStandIn):
        self.standin = standin
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            # A client that timed out and hung up is part of the tests, not an error.
            logger.debug("Customer.io stand-in: %s hung up", client_address)
        else:  # e.g. a test's rejection predicate that raised: make it visible
            logger.exception("Customer.io stand-in failed on a request from %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API and requests' pool use it
    # An answer's headers and body go in two writes; with Nagle on, the body waits for
    # the client's delayed ACK on loopback (about 45 ms an answer).
    disable_nagle_algorithm = True
    timeout = 60  # seconds an idle connection may hold a handler thread
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.standin._track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.standin._track(self.connection, open_=False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        # http.server writes every request to stderr; keep it in the tests' log instead.
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Customer.io stand-in: %s", format % args)

    def do_POST(self) -> None:
        self._handle()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_POST

    def _handle(self) -> None:
        body = self._read_body()
        if body is None:
            return
        standin = self.server.standin
        headers = dict(self.headers.items())
        path = self.path.split("?", 1)[0]
        hang_seconds, outage = standin._interruption()
        if hang_seconds > 0:
            standin._record(self.command, path, headers, body, 0)
            standin._stopping.wait(hang_seconds)
            self.close_connection = True  # no answer at all, as from a server that went away
            return
        reply = outage if outage is not None else self._route(headers, path, body)
        standin._record(self.command, path, headers, body, reply.status)
        if reply.delay > 0 and standin._stopping.wait(reply.delay):
            self.close_connection = True  # stopping: no answer, as when a server goes away
            return
        self._send(reply)

    def _route(self, headers: dict[str, str], path: str, body: bytes) -> Reply:
        standin = self.server.standin
        routes = {BATCH_PATH: "POST", REGION_PATH: "GET"}
        if path not in routes:
            return Reply(404, JSON_HEADERS, _error_body("not_found", f"no resource at {path}"))
        if self.command != routes[path]:
            return Reply(405, {**JSON_HEADERS, "Allow": routes[path]},
                         _error_body("method_not_allowed", f"{self.command} is not allowed"))
        if path == REGION_PATH:
            return standin._answer_region(headers)
        reply, _ = standin._answer_batch(headers, body)
        return reply

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding") or self.command in ("POST", "PUT", "PATCH"):
                # Chunked bodies are not needed by the relay; refuse rather than misread them.
                self.close_connection = True
                self._send(Reply(411, JSON_HEADERS,
                                 _error_body("length_required", "send a Content-Length")))
                return None
            return b""
        try:
            size = int(length)
            if size < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            self._send(Reply(400, JSON_HEADERS, _error_body("invalid", "bad Content-Length")))
            return None
        return self.rfile.read(size)

    def _send(self, reply: Reply) -> None:
        payload = reply.body.encode()
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


def main(argv: list[str] | None = None) -> None:
    """Serve the stand-in on a fixed port until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--site-id", default="test-site")
    parser.add_argument("--api-key", default="test-api-key")
    parser.add_argument("--region", default="us")
    args = parser.parse_args(argv)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before the server threads start, so they inherit the mask and only sigwait sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with CustomerIOStandIn(args.site_id, args.api_key, args.host, args.port, region=args.region):
        signal.sigwait(stop_signals)


if __name__ == "__main__":
    main()
