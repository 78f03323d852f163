"""Send one signed Customer.io reporting webhook to a running relay, and print the answer.

    python examples/send_event.py [--url URL] [--key KEY] [--type email_opened]

Signs like Customer.io: hex HMAC-SHA256 of "v0:<timestamp>:<body>" with the signing key.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import time
import urllib.request
import uuid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    port = os.environ.get("PORT", "8000")  # the same PORT `make run` listens on
    parser.add_argument("--url", default=f"http://127.0.0.1:{port}/webhooks/customerio")
    parser.add_argument(
        "--key", default=os.environ.get("CIO_WEBHOOK_SIGNING_KEYS", "try-it-signing-key")
    )
    parser.add_argument("--type", default="email_opened", help="<object_type>_<metric>")
    parser.add_argument("--customer-id", default="42")
    parser.add_argument("--delivery-id", default="RPILAgUBcRhIBqSfeiIwdIYJKxTY")
    args = parser.parse_args()
    object_type, _, metric = args.type.rpartition("_")
    payload = {
        "event_id": uuid.uuid4().hex,
        "object_type": object_type,
        "metric": metric,
        "timestamp": int(time.time()),
        "data": {
            "identifiers": {"id": args.customer_id, "email": "person@example.com"},
            "delivery_id": args.delivery_id,
            "campaign_id": 7,
            "action_id": 42,
            "recipient": "person@example.com",
            "subject": "Welcome aboard",
        },
    }
    body = json.dumps(payload).encode()
    stamp = str(int(time.time()))
    key = args.key.split(",")[0].encode()
    signature = hmac.new(key, b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(  # noqa: S310 - the URL is the operator's own relay
        args.url,
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-CIO-Timestamp": stamp,
            "X-CIO-Signature": signature,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            print(response.status, response.read().decode())  # noqa: T201
    except urllib.error.HTTPError as error:
        print(error.code, error.read().decode())  # noqa: T201


if __name__ == "__main__":
    main()
