"""Prometheus metrics, one vocabulary with the contract's outcomes.

Metric objects are module-level, as prometheus-client expects. Under gunicorn with
``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn.conf.py sets it), every process writes its
own files and ``/metrics`` adds them up. Queue depth and dead letters are read from
Redis at scrape time, so they are true for the whole deployment.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

# Outcomes of a webhook (the contract's words) and reasons one is refused before that.
WEBHOOK_OUTCOMES = ("queued", "duplicate", "suppressed", "ignored", "quarantined")
REJECT_REASONS = (
    "signature", "stale_timestamp", "authorization", "body_too_large", "redis_unavailable",
    "redis_full",
)
# Every series carries the direction it counts: Customer.io → mParticle, or the reverse.
DIRECTIONS = ("to_mparticle", "to_customerio")

_received = Counter("cio_relay_webhooks_received", "Webhook requests received", ["direction"])
_outcomes = Counter(
    "cio_relay_webhooks", "Webhooks answered, by outcome "
    "(queued, duplicate, suppressed, ignored, quarantined)", ["direction", "outcome"]
)
_rejected = Counter(
    "cio_relay_webhooks_rejected", "Webhooks refused, by reason", ["direction", "reason"]
)
_relayed = Counter("cio_relay_events_relayed", "Events the destination accepted", ["direction"])
_retried = Counter(
    "cio_relay_requests_retried", "Requests to the destination retried, by reason",
    ["direction", "reason"],
)
_dead_lettered = Counter(
    "cio_relay_events_dead_lettered", "Events moved to the dead-letter store, by reason",
    ["direction", "reason"],
)
_request_seconds = Histogram(
    "cio_relay_destination_request_seconds",
    "Duration of a request to the destination (mParticle's /bulkevents, Customer.io's batch)",
    ["direction"],
)
_relay_latency_seconds = Histogram(
    "cio_relay_latency_seconds", "From webhook accepted to the destination's answer",
    ["direction"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)


class DirectionMetrics:
    """The series of one direction, bound once.

    ``labels()`` costs a lock and a dict lookup per call on the webhook's hot path, and
    bound series show up (at 0) before the first event.
    """

    def __init__(self, direction: str) -> None:
        self.direction = direction
        self.received = _received.labels(direction=direction)
        self.outcome = {name: _outcomes.labels(direction=direction, outcome=name)
                        for name in WEBHOOK_OUTCOMES}
        self.rejected_for = {name: _rejected.labels(direction=direction, reason=name)
                             for name in REJECT_REASONS}
        self.relayed = _relayed.labels(direction=direction)
        self.request_seconds = _request_seconds.labels(direction=direction)
        self.relay_latency_seconds = _relay_latency_seconds.labels(direction=direction)

    def retried(self, reason: str) -> Any:
        return _retried.labels(direction=self.direction, reason=reason)

    def dead_lettered(self, reason: str) -> Any:
        return _dead_lettered.labels(direction=self.direction, reason=reason)


class RelayMetrics:
    """The counters and histograms the web and worker processes update, per direction."""

    def __init__(self) -> None:
        self.to_mparticle = DirectionMetrics("to_mparticle")
        self.to_customerio = DirectionMetrics("to_customerio")
        # The Customer.io → mParticle webhook's series, by their old names.
        self.received = self.to_mparticle.received
        self.outcome = self.to_mparticle.outcome
        self.rejected_for = self.to_mparticle.rejected_for

    def direction(self, name: str) -> DirectionMetrics:
        return self.to_customerio if name == "to_customerio" else self.to_mparticle


class QueueCollector(Collector):
    """Reads each direction's queue, dead letters and credentials, and Redis's memory, from
    Redis at scrape time.

    While Redis cannot be reached the scrape still answers, with ``cio_relay_redis_up 0``
    and the process counters, so an outage shows as one, not as a target that is down.
    """

    def __init__(self, scrape_stats: Any) -> None:
        self._scrape_stats = scrape_stats

    def collect(self):
        up = GaugeMetricFamily("cio_relay_redis_up", "1 while Redis answers the scrape, else 0")
        try:
            stats = self._scrape_stats()
        except Exception:
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        gauges = {
            "length": GaugeMetricFamily("cio_relay_queue_depth", "Events queued, not yet relayed",
                                        labels=["direction"]),
            "pending": GaugeMetricFamily("cio_relay_queue_pending",
                                         "Queued events a worker is sending right now",
                                         labels=["direction"]),
            "dead_letters": GaugeMetricFamily("cio_relay_dead_letters",
                                              "Entries in the dead-letter store",
                                              labels=["direction"]),
            "oldest_age_seconds": GaugeMetricFamily(
                "cio_relay_queue_oldest_age_seconds", "Age of the oldest queued event",
                labels=["direction"]),
            "credentials_refused": GaugeMetricFamily(
                "cio_relay_credentials_refused",
                "1 while the destination refuses the credentials (sending paused), else 0",
                labels=["direction"]),
        }
        for direction, figures in stats["directions"].items():
            for name, gauge in gauges.items():
                value = figures.get(name)
                if value is not None:
                    gauge.add_metric([direction], value)
        families = [up, *gauges.values()]
        if "redis_memory_used_bytes" in stats:
            used = GaugeMetricFamily("cio_relay_redis_memory_used_bytes",
                                     "Redis used_memory (the fullest node of a cluster)")
            used.add_metric([], stats["redis_memory_used_bytes"])
            limit = GaugeMetricFamily("cio_relay_redis_memory_max_bytes",
                                      "Redis maxmemory (0: no limit)")
            limit.add_metric([], stats["redis_memory_max_bytes"])
            families += [used, limit]
        return families


def render_metrics(scrape_stats: Any) -> bytes:
    """The Prometheus text for this process (or all gunicorn workers) plus the queue."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        process_text = generate_latest(registry)
    else:
        process_text = generate_latest(REGISTRY)
    queue_registry = CollectorRegistry()
    queue_registry.register(QueueCollector(scrape_stats))
    return process_text + generate_latest(queue_registry)
