"""The floor: a Flask endpoint that only reads the body, for the ingest ratio."""

from flask import Flask, request

app = Flask(__name__)


@app.post("/webhooks/customerio")
def read_body_only():
    request.get_data()
    return {"status": "queued"}, 202
