"""Every Customer.io reporting-webhook event type, and what the feed calls it.

The lists come from Customer.io's OpenAPI document for reporting webhooks
(``shared/reference``); ``tests/test_catalog.py`` checks them against it. An event
type is ``<object_type>_<metric>``. The 20 types of Customer.io's own mParticle feed
are on by default; every other known type is listed and off. A combination not
listed here is unknown: the webhook answers ``ignored``, never an error, so
Customer.io does not retry it forever.
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
        """Title Case name as mParticle's Customer.io feed documents it."""
        metric = METRIC_TITLES.get(self.metric) or self.metric.replace("_", " ").title()
        return f"{CHANNEL_TITLES[self.object_type]} {metric}"

    def event_name(self, style: str) -> str:
        """Name of the custom event sent to mParticle under the configured naming style."""
        return self.feed_name if style == "mparticle_feed" else self.name


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


def default_toggles() -> dict[str, bool]:
    """Whether each known event type is forwarded when settings.toml says nothing."""
    return {name: event_type.default_enabled for name, event_type in CATALOG.items()}
