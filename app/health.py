"""Liveness, readiness and metrics for the platform that runs the relay."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app
from redis.exceptions import RedisError

from app.errors import json_response
from app.extension import services
from app.metrics import render_metrics
from app.store import redis_health
from app.store.redis_health import UNAVAILABLE_ERRORS

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    """The process is alive (says nothing about Redis or mParticle)."""
    return json_response({"status": "ok"}, 200)


@blueprint.get("/readyz")
def readyz() -> Response:
    """Ready when Redis takes writes and keeps them, and each destination the credentials.

    Not ready while Redis is unreachable, a Redis Cluster's state is not ok, Redis is
    full (maxmemory under noeviction: it refuses writes), its policy may evict the
    relay's data, or mParticle or Customer.io refuses the credentials.
    """
    relay = services(current_app)
    try:
        relay.redis.ping()
        # A cluster's own state first: during a failover it says why better than the
        # dead master's connection error would.
        problem = redis_health.cluster_problem(relay.redis)
        if problem:
            return _not_ready(redis=problem)
        memory = redis_health.memory_state(relay.redis)
        auth = relay.redis.get(relay.keys.mparticle_auth)
        customerio_auth = (relay.redis.get(relay.keys.customerio_auth)
                           if relay.settings.to_customerio_enabled
                           or relay.settings.audiences_enabled else None)
    except (*UNAVAILABLE_ERRORS, RedisError) as exc:
        return _not_ready(redis=f"unreachable ({exc.__class__.__name__})")
    problem = problem or redis_health.eviction_problem(memory)
    if problem is None and memory is not None and memory.full:
        problem = (f"full: {memory.used_bytes} of {memory.max_bytes} bytes used, writes "
                   "are refused (webhooks answered 503) until the worker drains the queue")
    if problem:
        return _not_ready(redis=problem)
    if auth or customerio_auth:
        refused = {"redis": "ok"}
        if auth:
            refused["mparticle"] = f"credentials refused ({auth}); sending is paused"
        if customerio_auth:
            refused["customerio"] = f"credentials refused ({customerio_auth}); sending is paused"
        return _not_ready(**refused)
    ready: dict[str, Any] = {"status": "ready", "redis": "ok", "mparticle": "ok"}
    if relay.settings.to_customerio_enabled or relay.settings.audiences_enabled:
        ready["customerio"] = "ok"
    if memory is not None and memory.used_ratio is not None:
        ready["redis_memory_used_percent"] = round(memory.used_ratio * 100, 1)
    return json_response(ready, 200)


def _not_ready(**parts: str) -> Response:
    return json_response({"status": "not ready", **parts}, 503)


@blueprint.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus text: webhook outcomes, relay counters, queue depth, Redis memory."""
    relay = services(current_app)
    return Response(render_metrics(relay.scrape_stats), mimetype="text/plain; version=0.0.4")
