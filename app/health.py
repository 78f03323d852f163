"""Liveness, readiness and metrics for the platform that runs the relay."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from redis.exceptions import RedisError

from app.errors import json_response
from app.metrics import render_metrics
from app.services import services

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    """The process is alive (says nothing about Redis or mParticle)."""
    return json_response({"status": "ok"}, 200)


@blueprint.get("/readyz")
def readyz() -> Response:
    """Ready when Redis answers and mParticle has not refused the credentials."""
    relay = services(current_app)
    try:
        relay.redis.ping()
        auth = relay.redis.get(relay.keys.mparticle_auth)
    except RedisError as exc:
        return json_response(
            {"status": "not ready", "redis": f"unreachable ({exc.__class__.__name__})"}, 503
        )
    if auth:
        return json_response(
            {"status": "not ready", "redis": "ok",
             "mparticle": f"credentials refused ({auth}); sending is paused"}, 503
        )
    return json_response({"status": "ready", "redis": "ok", "mparticle": "ok"}, 200)


@blueprint.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus text: webhook outcomes, relay counters, queue depth."""
    relay = services(current_app)
    return Response(render_metrics(relay.queue_stats), mimetype="text/plain; version=0.0.4")
