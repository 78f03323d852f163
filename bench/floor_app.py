"""The floor, (f) in bench/run.py: a bare Flask view plus one redis-py round trip.

It reads the body, as bench/bare_app.py does, then makes one ``EVALSHA`` of a no-op
script through a redis-py registered ``Script`` on one client per process, built from
REDIS_URL with the relay's decoding options (``app.services.REDIS_DECODING``). That is
the least any Flask handler making one Redis round trip through the same libraries can
cost: the relay's ingest figure is this floor's CPU per webhook divided by the relay's.
"""

import os

import redis
from flask import Flask, request

from app.services import REDIS_DECODING

app = Flask(__name__)
# One client per process: gunicorn forks before the first request, and redis-py's pool
# makes its connections lazily, so no connection is shared across processes.
client = redis.Redis.from_url(os.environ["REDIS_URL"], **REDIS_DECODING)
no_op = client.register_script("return 0")


@app.post("/webhooks/customerio")
def read_body_and_evalsha():
    request.get_data()
    if no_op(keys=[], args=[]) != 0:
        raise RuntimeError("the no-op script did not answer 0")
    return {"status": "queued"}, 202
