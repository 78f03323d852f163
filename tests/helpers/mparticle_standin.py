"""A real HTTP server on loopback that stands in for mParticle's Events API.

Tests send to it over real sockets, so the relay's client, timeouts and retries are exercised
exactly as in production, without mocking `requests`. It checks every bulk request against the
contract (CONTRACT.md §5) the way mParticle would refuse a bad one, records what it accepted, and
can be scripted to fail (429, 5xx, hanging past a timeout, refusing one batch).

It uses only the standard library, so it also runs as a separate process for end-to-end tests:

    python -m tests.helpers.mparticle_standin --port 8099 --key K --secret S

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
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)

BULK_PATH = "/v2/bulkevents"

# The limits of CONTRACT.md §5.
MAX_BODY_BYTES = 256 * 1024
MAX_BATCH_BYTES = 128 * 1024
MAX_BATCHES = 100
MAX_ATTRIBUTE_NAME_CHARS = 256
MAX_ATTRIBUTE_VALUE_CHARS = 4096
ENVIRONMENTS = frozenset({"production", "development"})
FORBIDDEN_BATCH_KEYS = ("batch_id", "timestamp_unixtime_ms", "timestamp")

RATE_LIMIT_HEADER = "X-mp-rate-limit-percentage-used"


class ContractViolation(ValueError):
    """A bulk request breaks the contract; the message says where, e.g. `batch[3].events`."""


@dataclass(frozen=True)
class Reply:
    """A scripted answer to one bulk request.

    `delay` is slept after the request is recorded and before it is answered, to simulate an
    answer that arrives after the client has given up.
    """

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    delay: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request the stand-in received, and the status it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def header(self, name: str) -> str | None:
        """Return a header's value, whatever the case of its name."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


BatchPredicate = Callable[[dict[str, Any]], bool]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def validate_bulk(body: bytes) -> list[dict[str, Any]]:
    """Return the batches of a bulk request body, or raise ContractViolation naming the problem."""
    if len(body) > MAX_BODY_BYTES:
        raise ContractViolation(f"body: {len(body)} bytes, over {MAX_BODY_BYTES}")
    try:
        batches = json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ContractViolation(f"body: not JSON ({exc})") from None
    if not isinstance(batches, list):
        raise ContractViolation("body: not a JSON array of batches")
    if len(batches) > MAX_BATCHES:
        raise ContractViolation(f"body: {len(batches)} batches, over {MAX_BATCHES}")
    for index, batch in enumerate(batches):
        validate_batch(batch, f"batch[{index}]")
    return batches


def validate_batch(batch: Any, where: str = "batch") -> None:
    """Raise ContractViolation unless `batch` is one batch as CONTRACT.md §5 describes it."""
    if not isinstance(batch, dict):
        raise ContractViolation(f"{where}: not an object")
    size = len(json.dumps(batch, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_BATCH_BYTES:
        raise ContractViolation(f"{where}: {size} bytes, over {MAX_BATCH_BYTES}")
    for key in FORBIDDEN_BATCH_KEYS:
        if key in batch:
            raise ContractViolation(f"{where}.{key}: must not be sent")
    if batch.get("environment") not in ENVIRONMENTS:
        raise ContractViolation(f"{where}.environment: not one of {sorted(ENVIRONMENTS)}")
    if not _is_text(batch.get("source_request_id")):
        raise ContractViolation(f"{where}.source_request_id: not a non-empty string")
    _validate_identities(batch.get("user_identities"), f"{where}.user_identities")
    events = batch.get("events")
    if not isinstance(events, list) or not events:
        raise ContractViolation(f"{where}.events: not a non-empty list")
    for index, event in enumerate(events):
        _validate_event(event, f"{where}.events[{index}]")


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _validate_identities(identities: Any, where: str) -> None:
    if not isinstance(identities, dict):
        raise ContractViolation(f"{where}: not an object")
    present = [key for key in ("customer_id", "email") if key in identities]
    if not present:
        raise ContractViolation(f"{where}: neither customer_id nor email")
    for key in present:
        if not _is_text(identities[key]):
            raise ContractViolation(f"{where}.{key}: not a non-empty string")


def _validate_event(event: Any, where: str) -> None:
    if not isinstance(event, dict):
        raise ContractViolation(f"{where}: not an object")
    if event.get("event_type") != "custom_event":
        raise ContractViolation(f"{where}.event_type: not custom_event")
    data = event.get("data")
    if not isinstance(data, dict):
        raise ContractViolation(f"{where}.data: not an object")
    where = f"{where}.data"
    if not _is_text(data.get("event_name")):
        raise ContractViolation(f"{where}.event_name: not a non-empty string")
    if data.get("custom_event_type") != "other":
        raise ContractViolation(f"{where}.custom_event_type: not other")
    timestamp = data.get("timestamp_unixtime_ms")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise ContractViolation(f"{where}.timestamp_unixtime_ms: not an integer")
    if not _is_uuid5(data.get("source_message_id")):
        raise ContractViolation(f"{where}.source_message_id: not a UUIDv5")
    _validate_attributes(data.get("custom_attributes"), f"{where}.custom_attributes")


def _is_uuid5(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return uuid.UUID(value).version == 5
    except ValueError:
        return False


def _validate_attributes(attributes: Any, where: str) -> None:
    if not isinstance(attributes, dict):
        raise ContractViolation(f"{where}: not an object")
    for name, value in attributes.items():
        if len(name) > MAX_ATTRIBUTE_NAME_CHARS:
            raise ContractViolation(
                f"{where}: name {name[:40]!r}… over {MAX_ATTRIBUTE_NAME_CHARS} characters"
            )
        if isinstance(value, str):
            if len(value) > MAX_ATTRIBUTE_VALUE_CHARS:
                raise ContractViolation(
                    f"{where}.{name}: over {MAX_ATTRIBUTE_VALUE_CHARS} characters"
                )
        elif not isinstance(value, int | float):  # bool is an int
            raise ContractViolation(f"{where}.{name}: not a scalar ({type(value).__name__})")


def _cut(connection: socket.socket) -> None:
    # A handler of an idle keep-alive connection blocks in a read; this ends the read.
    with contextlib.suppress(OSError):  # already closed by the client
        connection.shutdown(socket.SHUT_RDWR)


def _error_body(code: str, message: str) -> str:
    return json.dumps({"errors": [{"code": code, "message": message}]})


class MParticleStandIn:
    """Serve `POST /v2/bulkevents` on loopback as mParticle would, and record what arrives."""

    def __init__(
        self,
        api_key: str = "test-key",
        api_secret: str = "test-secret",  # noqa: S107 - a stand-in's test credentials.
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self._address = (host, port)
        token = base64.b64encode(f"{api_key}:{api_secret}".encode()).decode("ascii")
        self._expected_authorization = f"Basic {token}"
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._accepted_batches: list[dict[str, Any]] = []
        self._script: deque[Reply] = deque()
        self._reject_predicate: BatchPredicate | None = None
        self._outage: tuple[float, Reply] | None = None  # (monotonic end, reply)
        self._delay = 0.0
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle

    def start(self) -> MParticleStandIn:
        """Bind the port and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("the mParticle stand-in is already running")
        self._stopping.clear()
        self._server = _Server(self._address, _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            # shutdown() waits up to one poll interval; the default 0.5 s adds up over a suite.
            kwargs={"poll_interval": 0.01},
            name="mparticle-standin",
            daemon=True,
        )
        self._thread.start()
        logger.debug("mParticle stand-in serving at %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections and wait for every handler thread."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in a scripted delay
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            _cut(connection)
        server.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> MParticleStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the mParticle stand-in is not running")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """The Events API base URL to give the relay, e.g. `http://127.0.0.1:PORT/v2`."""
        if self._server is None:
            raise RuntimeError("the mParticle stand-in is not running")
        host = self._server.server_address[0]
        return f"http://{host}:{self.port}/v2"

    # Scripting

    def script(self, *replies: Reply) -> None:
        """Answer the next bulk requests with these replies, in order, before any other check."""
        with self._lock:
            self._script.extend(replies)

    def fail_for(self, seconds: float, reply: Reply) -> None:
        """Answer every bulk request with `reply` for the next `seconds` (an outage)."""
        with self._lock:
            self._outage = (time.monotonic() + seconds, reply)

    def answer_slowly(self, seconds: float) -> None:
        """Delay every answer the script does not decide by `seconds` (0: answer at once)."""
        with self._lock:
            self._delay = seconds

    def reject_batches_where(self, predicate: BatchPredicate | None) -> None:
        """Refuse (400) every otherwise valid request holding a batch the predicate matches."""
        with self._lock:
            self._reject_predicate = predicate

    def reset(self) -> None:
        """Forget every recorded request, scripted reply and rejection rule."""
        with self._lock:
            self._requests.clear()
            self._accepted_batches.clear()
            self._script.clear()
            self._reject_predicate = None
            self._outage = None
            self._delay = 0.0
            self._changed.notify_all()

    # Records

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, whatever it was answered."""
        with self._lock:
            return list(self._requests)

    @property
    def accepted_batches(self) -> list[dict[str, Any]]:
        """The batches of every request answered 202, in the order they arrived."""
        with self._lock:
            return list(self._accepted_batches)

    def accepted_events(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Return (batch, event) for every accepted event."""
        return [(batch, event) for batch in self.accepted_batches for event in batch["events"]]

    def source_message_ids(self) -> list[str]:
        """Return the `source_message_id` of every accepted event, duplicates kept."""
        return [event["data"]["source_message_id"] for _, event in self.accepted_events()]

    def wait_for_events(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least `n` events were accepted; False if the timeout passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._accepted_event_count() >= n, timeout)

    def _accepted_event_count(self) -> int:
        return sum(len(batch["events"]) for batch in self._accepted_batches)

    # Serving (called by handler threads)

    def _track(self, connection: socket.socket, *, open_: bool) -> None:
        with self._lock:
            if not open_:
                self._connections.discard(connection)
                return
            self._connections.add(connection)
            if self._stopping.is_set():  # accepted while stop() was cutting connections
                _cut(connection)

    def _answer_bulk(self, headers: dict[str, str], body: bytes) -> Reply:
        """Decide the answer to a bulk request and record it; the caller sends it."""
        with self._lock:
            scripted = self._script.popleft() if self._script else None
            predicate = self._reject_predicate
            delay = self._delay
            if scripted is None and self._outage is not None:
                until, outage_reply = self._outage
                if time.monotonic() < until:
                    scripted = outage_reply
                else:
                    self._outage = None
        if scripted is None and delay > 0:
            scripted = Reply(202, delay=delay)
        if scripted is not None and scripted.status != 202:
            self._record("POST", BULK_PATH, headers, body, scripted.status)
            return scripted
        reply, batches = self._check(headers, body, predicate)
        if scripted is not None and reply.status == 202:
            reply = Reply(202, {**reply.headers, **scripted.headers}, scripted.body, scripted.delay)
        self._record("POST", BULK_PATH, headers, body, reply.status, batches)
        return reply

    def _check(
        self, headers: dict[str, str], body: bytes, predicate: BatchPredicate | None
    ) -> tuple[Reply, list[dict[str, Any]]]:
        json_headers = {"Content-Type": "application/json"}
        headers = {name.lower(): value for name, value in headers.items()}
        authorization = headers.get("authorization", "")
        if not hmac.compare_digest(authorization.encode(), self._expected_authorization.encode()):
            message = "missing or wrong HTTP Basic credentials"
            return Reply(401, json_headers, _error_body("AUTHENTICATION_ERROR", message)), []
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            message = f"Content-Type {media_type or 'missing'}, not application/json"
            return Reply(415, json_headers, _error_body("UNSUPPORTED_MEDIA_TYPE", message)), []
        try:
            batches = validate_bulk(body)
            for index, batch in enumerate(batches):
                if predicate is not None and predicate(batch):
                    raise ContractViolation(f"batch[{index}]: refused by the test's rule")
        except ContractViolation as exc:
            return Reply(400, json_headers, _error_body("VALIDATION_ERROR", str(exc))), []
        return Reply(202, {RATE_LIMIT_HEADER: "1"}), batches

    def _record(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        status: int,
        batches: list[dict[str, Any]] | None = None,
    ) -> None:
        request = RecordedRequest(method, path, headers, body, status)
        with self._changed:
            self._requests.append(request)
            if status == 202 and batches:
                self._accepted_batches.extend(batches)
            self._changed.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Join handler threads on server_close(), so a stopped stand-in leaves nothing running.
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: type, standin: MParticleStandIn):
        self.standin = standin
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            # A client that timed out and hung up is part of the tests, not an error.
            logger.debug("mParticle stand-in: %s hung up", client_address)
        else:  # e.g. a test's rejection predicate that raised: make it visible
            logger.exception("mParticle stand-in failed on a request from %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API and requests' pool use it
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
            logger.debug("mParticle stand-in: %s", format % args)

    def do_POST(self) -> None:
        self._handle()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_POST

    def _handle(self) -> None:
        body = self._read_body()
        if body is None:
            return
        reply = self._route(body)
        if reply.delay > 0 and self.server.standin._stopping.wait(reply.delay):
            self.close_connection = True  # stopping: no answer, as when a server goes away
            return
        self._send(reply)

    def _route(self, body: bytes) -> Reply:
        standin = self.server.standin
        headers = dict(self.headers.items())
        path = self.path.split("?", 1)[0]
        if path == BULK_PATH and self.command == "POST":
            return standin._answer_bulk(headers, body)
        if path != BULK_PATH:
            reply = Reply(
                404,
                {"Content-Type": "application/json"},
                _error_body("NOT_FOUND", f"no resource at {path}"),
            )
        else:
            reply = Reply(
                405,
                {"Content-Type": "application/json", "Allow": "POST"},
                _error_body("METHOD_NOT_ALLOWED", f"{self.command} is not allowed"),
            )
        standin._record(self.command, path, headers, body, reply.status)
        return reply

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding") or self.command in ("POST", "PUT", "PATCH"):
                # Chunked bodies are not needed by the relay; refuse rather than misread them.
                self.close_connection = True
                self._send(
                    Reply(
                        411,
                        {"Content-Type": "application/json"},
                        _error_body("LENGTH_REQUIRED", "send a Content-Length"),
                    )
                )
                return None
            return b""
        try:
            size = int(length)
            if size < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            self._send(Reply(400, {}, _error_body("BAD_REQUEST", "bad Content-Length")))
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
    parser.add_argument("--key", default="test-key")
    parser.add_argument("--secret", default="test-secret")
    args = parser.parse_args(argv)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before the server threads start, so they inherit the mask and only sigwait sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with MParticleStandIn(args.key, args.secret, args.host, args.port):
        signal.sigwait(stop_signals)


if __name__ == "__main__":
    main()
