"""Send one batch as mParticle's Webhook output would to a running relay; print the answer.

    python examples/send_mparticle_batch.py [--url URL] [--authorization VALUE]

The batch is mParticle's outgoing JSON: a person (customer id and email), a user
attribute change, a custom event and a screen view.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.request
import uuid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    port = os.environ.get("PORT", "8000")  # the same PORT `make run` listens on
    parser.add_argument("--url", default=f"http://127.0.0.1:{port}/webhooks/mparticle")
    parser.add_argument("--authorization", default=os.environ.get(
        "MPARTICLE_WEBHOOK_AUTHORIZATION", "try-it-authorization").split(",")[0].strip())
    parser.add_argument("--customer-id", default="42")
    args = parser.parse_args()
    now_ms = int(time.time() * 1000)
    payload = {
        "batch_id": uuid.uuid4().int >> 65,
        "message_id": str(uuid.uuid4()),
        "mpid": 8675309,
        "environment": "development",
        "timestamp_unixtime_ms": now_ms,
        "user_identities": [
            {"identity_type": "customer_id", "identity": args.customer_id,
             "timestamp_unixtime_ms": now_ms - 86_400_000},
            {"identity_type": "email", "identity": "person@example.com",
             "timestamp_unixtime_ms": now_ms - 86_400_000},
        ],
        "user_attributes": {"$FirstName": "Ada", "$LastName": "Lovelace", "plan": "pro"},
        "events": [
            {"event_type": "custom_event", "data": {
                "event_name": "Played Song", "custom_event_type": "other",
                "source_message_id": str(uuid.uuid4()), "timestamp_unixtime_ms": now_ms,
                "custom_attributes": {"song": "Blue in Green"}}},
            {"event_type": "screen_view", "data": {
                "screen_name": "Home", "source_message_id": str(uuid.uuid4()),
                "timestamp_unixtime_ms": now_ms}},
        ],
    }
    request = urllib.request.Request(  # noqa: S310 - the URL is the operator's own relay
        args.url, data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "Authorization": args.authorization},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            print(response.status, response.read().decode())  # noqa: T201
    except urllib.error.HTTPError as error:
        print(error.code, error.read().decode())  # noqa: T201


if __name__ == "__main__":
    main()
