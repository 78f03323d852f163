"""Every Customer.io reporting-webhook event type, and what the feed calls it.

The lists are what Customer.io documents: its OpenAPI document for reporting webhooks
("Reporting webhooks", ``shared/reference``). The tests carry that document's facts in
``tests/fixtures/customerio_openapi_facts.json`` (``tests/fixtures/customerio_openapi.py``
distils them from a copy of the document) and ``tests/to_mparticle/test_catalog.py``
checks the lists against them. An event type is ``<object_type>_<metric>``. The 20
types of Customer.io's own mParticle feed are on by default; every other known type is
listed and off.

A combination not listed here is unknown: the webhook answers ``ignored: unknown event
type`` (never an error, so Customer.io does not retry it forever) unless an admin turned
that type on at run time (``cio-relay events enable NAME``, ``PUT /admin/events``, the
console). Any well-formed name can be (``app.store.toggles.is_well_formed``): published
payloads carry types the document does not list, ``email_deferred`` for one. Such a type
is mapped like a known one (:func:`event_type_of`): named after itself in the
``customerio`` naming style, in Title Case in the ``mparticle_feed`` style
("Email Deferred").
"""

from __future__ import annotations

from dataclasses import dataclass

# Metrics Customer.io reports per channel (object_type), in the OpenAPI document's order.
MESSAGE_METRICS: dict[str, tuple[str, ...]] = {
    "email": (
        "drafted", "attempted", "sent", "delivered", "opened", "clicked", "converted",
        "unsubscribed", "bounced", "dropped", "spammed", "failed", "undeliverable",
    ),
    "push": (
        "drafted", "attempted", "sent", "delivered", "opened", "clicked", "converted",
        "bounced", "dropped", "failed", "undeliverable",
    ),
    "sms": (
        "drafted", "attempted", "sent", "delivered", "clicked", "converted", "bounced",
        "failed", "undeliverable", "replied",
    ),
    "whatsapp": (
        "drafted", "attempted", "sent", "delivered", "opened", "clicked", "converted",
        "bounced", "dropped", "failed", "undeliverable", "replied",
    ),
    "in_app": (
        "drafted", "attempted", "sent", "opened", "clicked", "converted", "failed",
        "undeliverable",
    ),
    "slack": ("drafted", "attempted", "sent", "clicked", "failed", "undeliverable"),
    "webhook": ("drafted", "attempted", "sent", "clicked", "failed", "undeliverable"),
}

# Subscription changes: reported with object_type "customer", or with the channel whose
# message triggered the change (an unsubscribe link in an email is "email_unsubscribed").
SUBSCRIPTION_METRICS: tuple[str, ...] = (
    "subscribed", "unsubscribed", "cio_subscription_preferences_changed",
)

# The events Customer.io's mParticle feed offers; these are forwarded by default.
FEED_DEFAULTS: tuple[str, ...] = (
    "email_sent", "email_delivered", "email_opened", "email_clicked", "email_converted",
    "email_bounced", "email_spammed", "email_failed",
    "push_sent", "push_opened", "push_clicked", "push_converted", "push_bounced", "push_failed",
    "sms_sent", "sms_delivered", "sms_clicked", "sms_converted", "sms_bounced", "sms_failed",
)

CHANNEL_TITLES = {
    "customer": "Customer", "email": "Email", "push": "Push", "sms": "SMS",
    "whatsapp": "WhatsApp", "in_app": "In-App", "slack": "Slack", "webhook": "Webhook",
}
# Where mParticle's Customer.io feed names a metric other than by title-casing it.
METRIC_TITLES = {
    "clicked": "Link Clicked",
    "spammed": "Marked as Spam",
    "cio_subscription_preferences_changed": "Subscription Preferences Changed",
}

NAMING_STYLES = ("customerio", "mparticle_feed")


@dataclass(frozen=True, slots=True)
class EventType:
    """One kind of Customer.io reporting webhook, e.g. ``email_opened``."""

    object_type: str
    metric: str
    default_enabled: bool

    @property
    def name(self) -> str:
        return f"{self.object_type}_{self.metric}"

    @property
    def feed_name(self) -> str:
        """Title Case name as mParticle's Customer.io feed documents it.

        A type the feed does not name (one an admin added) gets the same treatment:
        the channel's title (or its words capitalised), then the metric's.
        """
        channel = CHANNEL_TITLES.get(self.object_type) or _title(self.object_type)
        metric = METRIC_TITLES.get(self.metric) or _title(self.metric)
        return f"{channel} {metric}"

    def event_name(self, style: str) -> str:
        """Name of the custom event sent to mParticle under the configured naming style."""
        return self.feed_name if style == "mparticle_feed" else self.name


def _title(words: str) -> str:
    """``deferred`` -> ``Deferred``, ``link_opened`` -> ``Link Opened``, ``2fa`` -> ``2fa``."""
    return " ".join(word.capitalize() for word in words.split("_") if word)


def _build_catalog() -> dict[str, EventType]:
    defaults = set(FEED_DEFAULTS)
    pairs = [
        (channel, metric) for channel, metrics in MESSAGE_METRICS.items() for metric in metrics
    ]
    for channel in ("customer", *MESSAGE_METRICS):
        pairs += [(channel, metric) for metric in SUBSCRIPTION_METRICS]
    catalog: dict[str, EventType] = {}
    for channel, metric in pairs:
        event_type = EventType(channel, metric, f"{channel}_{metric}" in defaults)
        catalog.setdefault(event_type.name, event_type)
    return catalog


CATALOG: dict[str, EventType] = _build_catalog()


def lookup(object_type: str, metric: str) -> EventType | None:
    """Return the known event type for this pair, or None when we do not know it."""
    return CATALOG.get(f"{object_type}_{metric}")


def event_type_of(object_type: str, metric: str) -> EventType:
    """The known event type for this pair, else one for a type the catalog does not list.

    For the worker: an uncatalogued type reaches the queue only when an admin turned it
    on, and is then mapped like any other (off by default, as every unknown type is).
    """
    known = CATALOG.get(f"{object_type}_{metric}")
    return known if known is not None else EventType(object_type, metric, False)


def default_toggles() -> dict[str, bool]:
    """Whether each known event type is forwarded when settings.toml says nothing."""
    return {name: event_type.default_enabled for name, event_type in CATALOG.items()}
