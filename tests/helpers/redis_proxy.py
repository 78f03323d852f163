"""A TCP proxy on loopback in front of the real Redis, for what Redis itself won't do on cue.

It counts what clients send (one chunk per command or pipeline: the clients here send
each with one ``sendall`` of well under a segment, on loopback), and can hang (stop
passing replies back) or drop every connection, as a Redis restart does.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit


class RedisProxy:
    def __init__(self, redis_url: str) -> None:
        """In front of the Redis of ``redis_url``; :attr:`url` is the same DB through it."""
        where = urlsplit(redis_url)
        self._redis_port = where.port or 6379
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}{where.path}"
        self.sends = 0
        self.connections = 0
        self._passing_replies = threading.Event()
        self._passing_replies.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def hang(self) -> None:
        """Hold back Redis's replies (they are still read, and dropped)."""
        self._passing_replies.clear()

    def resume(self) -> None:
        self._passing_replies.set()

    def drop_connections(self) -> None:
        """Close every connection, as a Redis restart does."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()
        self.drop_connections()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._redis_port))
            with self._lock:
                self.connections += 1
                self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False),
                             daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if from_client:
                    with self._lock:
                        self.sends += 1
                elif not self._passing_replies.is_set():
                    continue
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def redis_proxy(redis_url: str) -> Iterator[RedisProxy]:
    proxy = RedisProxy(redis_url)
    try:
        yield proxy
    finally:
        proxy.close()
