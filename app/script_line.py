"""The webhook's one Redis call, on connections of its own: hiredis packs and parses.

A webhook makes one Redis call, always the same command: ``EVALSHA`` of the accept
script. Through redis-py it passes a pool checkout and its readiness check, the retry
wrapper, observability hooks, argument checks and response callbacks; here it is packed
by hiredis's ``pack_command`` and parsed by hiredis's ``Reader`` (the C code redis-py
itself uses for both) on a plain socket, which times out by the kernel's timers rather
than Python's poll. ``EventStore.accept`` costs 84-91 µs of CPU this way against 180-198
through redis-py (``bench/in_process.py``; README, "Performance").

Only that call takes this path, and only on a ``redis://`` or ``unix://`` client:
:func:`script_line_for` gives ``None`` for TLS, Redis Cluster and the embedded store,
and the caller keeps redis-py. Whatever this module does not handle
itself it hands to redis-py or answers as redis-py would:

- ``NOSCRIPT`` (Redis restarted, or its script cache was flushed): the call is made
  again through redis-py's ``Script``, which loads the script first;
- errors have the classes redis-py gives them (its own parser names the class of an
  error reply: ``ResponseError``, ``BusyLoadingError``…; ``ConnectionError`` and
  ``TimeoutError`` for the socket's), so callers handle both paths alike;
- as redis-py is configured here (app/services.py), a connection error is retried once,
  on a new connection (what a Redis restart leaves behind), and a timeout is not.
"""

from __future__ import annotations

import os
import socket
import struct
import weakref
from dataclasses import dataclass
from typing import Any

import hiredis
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:  # redis-py's own table of error prefixes (a private module: kept optional)
    from redis._parsers.base import BaseParser

    _error_of = BaseParser.parse_error
except ImportError:  # pragma: no cover (redis-py moved it): NOSCRIPT still recognised

    def _error_of(message: str) -> Exception:
        if message.startswith("NOSCRIPT"):
            return NoScriptError(message)
        return ResponseError(message.removeprefix("ERR "))

_READ_SIZE = 65536


@dataclass(frozen=True)
class Address:
    """Where and how to connect: the redis-py pool's own connection settings."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket's, instead of host and port
    db: int = 0
    username: str | None = None
    password: str | None = None
    timeout: float | None = None
    connect_timeout: float | None = None
    encoding: str | None = "utf-8"  # of replies; None: bytes (decode_responses=False)
    encoding_errors: str = "strict"

    def setup_commands(self) -> list[tuple[Any, ...]]:
        """What a new connection sends before its first call (as redis-py's does)."""
        commands: list[tuple[Any, ...]] = []
        if self.password:
            credentials = (self.username, self.password) if self.username else (self.password,)
            commands.append(("AUTH", *credentials))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands


class _Line:
    """One connection: a socket and the hiredis parser of its replies."""

    __slots__ = ("pid", "reader", "sock")

    def __init__(self, address: Address) -> None:
        try:
            self.sock = _connect(address)
        except TimeoutError as exc:
            raise RedisTimeoutError(f"Timeout connecting to Redis: {exc}") from exc
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to Redis: {exc}") from exc
        _set_timeout(self.sock, address.timeout)
        self.reader = (hiredis.Reader(encoding=address.encoding,
                                      errors=address.encoding_errors)
                       if address.encoding else hiredis.Reader())
        self.pid = os.getpid()
        for command in address.setup_commands():
            reply = self.exchange(hiredis.pack_command(command))
            if isinstance(reply, hiredis.ReplyError):
                self.sock.close()
                raise RedisConnectionError(f"Redis refused {command[0]}: {reply}")

    def exchange(self, command: bytes) -> Any:
        """Send one packed command and read its reply; any failure closes the line."""
        try:
            self.sock.sendall(command)
            reply = self.reader.gets()
            while reply is False:
                data = self.sock.recv(_READ_SIZE)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                self.reader.feed(data)
                reply = self.reader.gets()
            return reply
        except (TimeoutError, BlockingIOError) as exc:  # BlockingIOError: SO_RCVTIMEO's
            self.sock.close()
            raise RedisTimeoutError("Timeout reading from Redis") from exc
        except OSError as exc:
            self.sock.close()
            raise RedisConnectionError(f"Error talking to Redis: {exc}") from exc
        except hiredis.ProtocolError as exc:
            self.sock.close()
            raise RedisConnectionError(f"Redis's reply could not be read: {exc}") from exc
        except RedisConnectionError:
            self.sock.close()
            raise


def _set_timeout(sock: socket.socket, seconds: float | None) -> None:
    """Time out a send or a receive after ``seconds``: the kernel's timer, not Python's.

    With Python's ``settimeout``, every send and every receive first polls the socket:
    two system calls a round trip more than with the kernel's own timeouts (SO_SNDTIMEO,
    SO_RCVTIMEO). A call that times out then fails with EAGAIN (``BlockingIOError``)
    instead of ``TimeoutError``.
    """
    sock.settimeout(None)  # blocking: the kernel waits, up to its timeouts
    if seconds is None:
        return
    microseconds = max(1, round(seconds * 1_000_000))  # zero would mean "never time out"
    interval = struct.pack("ll", *divmod(microseconds, 1_000_000))  # a struct timeval
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)


def _connect(address: Address) -> socket.socket:
    if address.path is None:
        sock = socket.create_connection((address.host, address.port),
                                        timeout=address.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(address.connect_timeout)
        sock.connect(address.path)
    except OSError:
        sock.close()
        raise
    return sock


class ScriptLine:
    """Calls one registered redis-py ``Script`` on connections kept for it alone.

    Idle connections wait in a list (``append`` and ``pop`` need no lock under the GIL),
    so there are as many as calls ever ran at once, one per thread of a gthread worker.
    """

    def __init__(self, script: Any, address: Address) -> None:
        self._script = script
        self._address = address
        self._idle: list[_Line] = []
        weakref.finalize(self, _close_all, self._idle)

    def __call__(self, keys: list[str], args: list[Any]) -> Any:
        """``script(keys=..., args=...)``, answered as redis-py's ``Script`` would."""
        command = hiredis.pack_command(("EVALSHA", self._script.sha, len(keys), *keys, *args))
        try:
            reply = self._call(command)
        except RedisConnectionError:
            # Most likely Redis restarted: every idle connection is as dead as this one.
            self.close()
            reply = self._call(command)
        if isinstance(reply, hiredis.ReplyError):
            error = _error_of(str(reply))
            if isinstance(error, NoScriptError):
                return self._script(keys=keys, args=args)
            raise error
        return reply

    def close(self) -> None:
        """Close the idle connections (those in use close when their call fails)."""
        _close_all(self._idle)

    def _call(self, command: bytes) -> Any:
        line = self._take()
        reply = line.exchange(command)  # a failed line is closed and not given back
        self._idle.append(line)
        return reply

    def _take(self) -> _Line:
        while True:
            try:
                line = self._idle.pop()
            except IndexError:
                return _Line(self._address)
            if line.pid == os.getpid():
                return line
            line.sock.close()  # the parent's, inherited by fork: this process's copy only


def _close_all(lines: list[_Line]) -> None:
    while lines:
        lines.pop().sock.close()


def script_line_for(client: Any, script: Any) -> ScriptLine | None:
    """A line for ``script`` on a TCP or unix-socket ``redis.Redis``; None for any other."""
    if type(client) is not redis.Redis:  # the embedded store, RedisCluster, subclasses
        return None
    pool = client.connection_pool
    settings = pool.connection_kwargs
    if pool.connection_class is redis.Connection:
        where = {"host": settings.get("host", "localhost"),
                 "port": int(settings.get("port", 6379))}
    elif pool.connection_class is redis.UnixDomainSocketConnection:
        where = {"path": settings["path"]}
    else:  # TLS, tests' own classes
        return None
    timeout = settings.get("socket_timeout")
    return ScriptLine(script, Address(
        **where,
        db=int(settings.get("db") or 0),
        username=settings.get("username"),
        password=settings.get("password"),
        timeout=timeout,
        connect_timeout=settings.get("socket_connect_timeout") or timeout,
        encoding=settings.get("encoding", "utf-8") if settings.get("decode_responses") else None,
        encoding_errors=settings.get("encoding_errors", "strict"),
    ))
