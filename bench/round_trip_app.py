"""The floor for any handler that makes one Redis round trip, for bench/run.py only.

The bare endpoint (bench/bare_app.py) plus one PING to Redis on a plain socket kept per
thread: no redis-py, no script, no work in Redis to speak of. What it loses against the
bare endpoint is what one round trip costs on this machine, whatever the handler does.
"""

import os
import socket
import threading
from urllib.parse import urlsplit

from flask import Flask, request

app = Flask(__name__)
_REDIS = urlsplit(os.environ["REDIS_URL"])
_PING = b"*1\r\n$4\r\nPING\r\n"
_local = threading.local()


def _connection() -> socket.socket:
    sock = getattr(_local, "sock", None)
    if sock is None or getattr(_local, "pid", None) != os.getpid():
        sock = socket.create_connection((_REDIS.hostname, _REDIS.port or 6379), timeout=2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _local.sock, _local.pid = sock, os.getpid()
    return sock


@app.post("/webhooks/customerio")
def read_body_and_ping():
    request.get_data()
    sock = _connection()
    sock.sendall(_PING)
    if sock.recv(64) != b"+PONG\r\n":
        raise RuntimeError("Redis did not answer PONG")
    return {"status": "queued"}, 202
