"""A straightforward webhook handler, for comparison in bench/run.py only.

What a first version of the relay might do in Flask: check the HMAC, parse the JSON,
then SET NX the event_id and XADD the body in one MULTI round trip. No validation,
no first-occurrence flags, no event-type toggles, no story, no log line, no metrics:
it shows what the relay's own work costs on top of the same Redis round trip.
"""

import hashlib
import hmac
import json
import os

import redis
from flask import Flask, abort, request

app = Flask(__name__)
client = redis.Redis.from_url(os.environ["REDIS_URL"])
signing_key = os.environ["CIO_WEBHOOK_SIGNING_KEYS"].encode()


@app.post("/webhooks/customerio")
def receive():
    body = request.get_data()
    message = b"v0:" + request.headers.get("X-CIO-Timestamp", "").encode() + b":" + body
    expected = hmac.new(signing_key, message, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("X-CIO-Signature", "")):
        abort(401)
    event = json.loads(body)
    pipe = client.pipeline(transaction=True)
    pipe.set(f"straightforward:{event['event_id']}", 1, nx=True, ex=8 * 86400)
    pipe.xadd("straightforward:queue", {"b": body})
    first, _ = pipe.execute()
    status = "queued" if first else "duplicate"
    return {"status": status, "event_id": event["event_id"],
            "event": f"{event['object_type']}_{event['metric']}"}, 202 if first else 200
