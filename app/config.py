"""Settings: ``settings.toml`` (or ``RELAY_SETTINGS``) plus the environment, checked once.

This is the only module that reads ``os.environ``. Everything else receives a
validated, typed :class:`Settings`. A bad value stops the process at start with one
line naming the key (:class:`ConfigError`), never a traceback.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from app.to_mparticle import catalog
from app.to_mparticle.client import REGION_BASE_URLS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SETTINGS_FILE = PROJECT_ROOT / "settings.toml"

DAY = 24 * 60 * 60

# 5 s, 30 s, 2 min, then every 5 min; never dropped. The relay has one destination per
# direction, so a long step would only hold the whole feed back after an outage ends:
# no wait exceeds 5 minutes unless an operator sets longer steps.
DEFAULT_RETRY_SCHEDULE_SECONDS = (5.0, 30.0, 120.0, 300.0)

# The admin token opens every admin action, so it must be out of reach of guessing even
# without the throttle: at least 32 characters (``openssl rand -hex 32`` gives 64).
ADMIN_TOKEN_MIN_LENGTH = 32

# Customer.io's Track API by region (CUSTOMERIO_REGION; CUSTOMERIO_BASE_URL overrides it).
CUSTOMERIO_REGION_BASE_URLS = {
    "us": "https://track.customer.io",
    "eu": "https://track-eu.customer.io",
}


class ConfigError(Exception):
    """Configuration is missing, malformed or contradictory; the message is one line."""


class StrictBoolean(fields.Boolean):
    """true or false, as TOML writes them; not "yes", 1 or "true"."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class StrictFloat(fields.Float):
    """A TOML number (3 or 3.05); not the string "3.05"."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


def _positive_int(default: int) -> fields.Integer:
    return fields.Integer(strict=True, load_default=default, validate=validate.Range(min=1))


def _positive_float(default: float) -> StrictFloat:
    return StrictFloat(load_default=default, validate=validate.Range(min=0, min_inclusive=False))


class _Section(Schema):
    class Meta:
        unknown = RAISE


class WebhookSection(_Section):
    require_signature = StrictBoolean(load_default=True)
    timestamp_tolerance_seconds = _positive_int(300)
    max_body_bytes = _positive_int(256 * 1024)


class DedupSection(_Section):
    first_occurrence_only = StrictBoolean(load_default=True)
    event_ttl_seconds = _positive_int(8 * DAY)
    first_occurrence_ttl_seconds = _positive_int(90 * DAY)


class MParticleSection(_Section):
    environment = fields.String(
        load_default="production", validate=validate.OneOf(["production", "development"])
    )
    event_names = fields.String(
        load_default="customerio", validate=validate.OneOf(catalog.NAMING_STYLES)
    )
    dry_run = StrictBoolean(load_default=False)
    connect_timeout_seconds = _positive_float(3.05)
    read_timeout_seconds = _positive_float(10.0)


class RelaySection(_Section):
    queue_shards = fields.Integer(
        strict=True, load_default=4, validate=validate.Range(min=1, max=1024)
    )
    read_count = _positive_int(500)
    poll_interval_seconds = _positive_float(0.2)
    max_batches_per_request = fields.Integer(
        strict=True, load_default=100, validate=validate.Range(min=1, max=100)
    )
    max_request_bytes = fields.Integer(
        strict=True, load_default=256 * 1024, validate=validate.Range(min=1024, max=256 * 1024)
    )
    max_batch_bytes = fields.Integer(
        strict=True, load_default=128 * 1024, validate=validate.Range(min=1024, max=128 * 1024)
    )
    claim_idle_seconds = _positive_int(60)
    retry_schedule_seconds = fields.List(
        StrictFloat(validate=validate.Range(min=0, min_inclusive=False, max=7 * DAY)),
        load_default=lambda: list(DEFAULT_RETRY_SCHEDULE_SECONDS),
        validate=validate.Length(min=1, max=50),
    )
    retry_jitter_ratio = StrictFloat(load_default=0.2, validate=validate.Range(min=0, max=1))
    slow_down_at_rate_limit_percent = StrictFloat(
        load_default=80.0, validate=validate.Range(min=0, max=100)
    )
    slow_down_max_seconds = StrictFloat(
        load_default=1.0, validate=validate.Range(min=0, max=60)
    )
    auth_recheck_seconds = _positive_float(60.0)
    dead_letter_max_entries = _positive_int(100_000)


class RedisSection(_Section):
    key_prefix = fields.String(load_default="cior", validate=validate.Regexp(r"^[A-Za-z0-9_.-]+$"))
    socket_timeout_seconds = _positive_float(2.0)
    toggle_refresh_seconds = _positive_float(1.0)
    memory_warning_percent = _positive_float(80.0)


class LoggingSection(_Section):
    level = fields.String(
        load_default="INFO", validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR"])
    )
    format = fields.String(load_default="json", validate=validate.OneOf(["json", "text"]))


class CustomerIOSection(_Section):
    user_id_type = fields.String(
        load_default="prefer_customer_id",
        validate=validate.OneOf(["prefer_customer_id", "customer_id", "email"]),
    )
    include_user_attributes = StrictBoolean(load_default=True)
    send_created_at = StrictBoolean(load_default=False)
    forward_screen_views = StrictBoolean(load_default=True)
    forward_commerce_events = StrictBoolean(load_default=False)
    one_attribute_per_audience = StrictBoolean(load_default=False)
    audience_membership_ttl_seconds = _positive_int(90 * DAY)
    max_audience_body_bytes = _positive_int(64 * 1024 * 1024)
    dry_run = StrictBoolean(load_default=False)
    max_body_bytes = _positive_int(1024 * 1024)
    max_items_per_request = fields.Integer(
        strict=True, load_default=100, validate=validate.Range(min=1, max=1000)
    )
    max_request_bytes = fields.Integer(
        strict=True, load_default=500 * 1000, validate=validate.Range(min=1024, max=500 * 1000)
    )
    max_item_bytes = fields.Integer(
        strict=True, load_default=32 * 1000, validate=validate.Range(min=1024, max=32 * 1000)
    )
    max_requests_per_second = _positive_float(100.0)
    connect_timeout_seconds = _positive_float(3.05)
    read_timeout_seconds = _positive_float(10.0)


SECTIONS: dict[str, type[Schema]] = {
    "webhook": WebhookSection,
    "dedup": DedupSection,
    "mparticle": MParticleSection,
    "customerio": CustomerIOSection,
    "relay": RelaySection,
    "redis": RedisSection,
    "logging": LoggingSection,
}


@dataclass(frozen=True)
class Secrets:
    """Credentials from the environment; repr never shows them."""

    signing_keys: tuple[bytes, ...] = field(default=(), repr=False)
    mparticle_api_key: str = field(default="", repr=False)
    mparticle_api_secret: str = field(default="", repr=False)
    admin_token: str = field(default="", repr=False)
    # mParticle → Customer.io: the Authorization values mParticle's Webhook output sends,
    # and Customer.io's Track API credentials.
    mparticle_webhook_authorizations: tuple[str, ...] = field(default=(), repr=False)
    customerio_site_id: str = field(default="", repr=False)
    customerio_api_key: str = field(default="", repr=False)
    # mParticle's audiences through AWS Data Firehose: the access key set on the stream.
    audience_access_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class Settings:
    """Every setting the relay reads, validated and typed."""

    webhook: dict[str, Any]
    events: dict[str, bool]
    dedup: dict[str, Any]
    mparticle: dict[str, Any]
    customerio: dict[str, Any]
    relay: dict[str, Any]
    redis: dict[str, Any]
    logging: dict[str, Any]
    # A REDIS_URL may carry a password (redis://:secret@host): never in a repr or a log.
    redis_url: str | None = field(repr=False)
    mparticle_base_url: str
    secrets: Secrets
    source: str
    customerio_region: str = "us"
    customerio_base_url: str = "https://track.customer.io"
    # The worker process's own /metrics port (WORKER_METRICS_PORT); None: not served.
    worker_metrics_port: int | None = None

    @property
    def embedded(self) -> bool:
        """True when no REDIS_URL is set: in-process store, worker as a thread."""
        return self.redis_url is None

    @property
    def has_mparticle_credentials(self) -> bool:
        return bool(self.secrets.mparticle_api_key and self.secrets.mparticle_api_secret)

    def require_signing_keys(self) -> None:
        """Stop a web process that would have to accept unsigned requests."""
        if self.webhook["require_signature"] and not self.secrets.signing_keys:
            raise ConfigError(
                "CIO_WEBHOOK_SIGNING_KEYS is not set, but [webhook] require_signature is true: "
                "set the Customer.io signing key(s)"
            )

    @property
    def to_customerio_enabled(self) -> bool:
        """Whether mParticle's Webhook output is taken (MPARTICLE_WEBHOOK_AUTHORIZATION set)."""
        return bool(self.secrets.mparticle_webhook_authorizations)

    @property
    def audiences_enabled(self) -> bool:
        """Whether Firehose audience deliveries are taken (MPARTICLE_AUDIENCE_ACCESS_KEY set)."""
        return bool(self.secrets.audience_access_key)

    @property
    def has_customerio_credentials(self) -> bool:
        return bool(self.secrets.customerio_site_id and self.secrets.customerio_api_key)

    def require_customerio(self) -> None:
        """Stop a process that would take mParticle's data with nowhere to send it."""
        if ((self.to_customerio_enabled or self.audiences_enabled)
                and not self.has_customerio_credentials and not self.customerio["dry_run"]):
            route = ("MPARTICLE_WEBHOOK_AUTHORIZATION" if self.to_customerio_enabled
                     else "MPARTICLE_AUDIENCE_ACCESS_KEY")
            raise ConfigError(
                f"{route} is set but CUSTOMERIO_SITE_ID and "
                "CUSTOMERIO_API_KEY are not: set both, or set [customerio] dry_run = true to "
                "only log what would be sent"
            )

    def require_mparticle(self) -> None:
        """Stop a relaying process that has neither credentials nor explicit dry-run."""
        if not self.has_mparticle_credentials and not self.mparticle["dry_run"]:
            raise ConfigError(
                "MPARTICLE_API_KEY and MPARTICLE_API_SECRET are not set: set both, "
                "or set [mparticle] dry_run = true to only log what would be sent"
            )


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings file and the environment; raise ConfigError naming the bad key."""
    env = os.environ if environ is None else environ
    path = Path(env.get("RELAY_SETTINGS") or DEFAULT_SETTINGS_FILE)
    raw = _read_toml(path)
    unknown_sections = set(raw) - set(SECTIONS) - {"events"}
    if unknown_sections:
        raise ConfigError(f"{path}: unknown section [{sorted(unknown_sections)[0]}]")
    sections = {name: _load_section(path, name, schema, raw.get(name, {}))
                for name, schema in SECTIONS.items()}
    _check_relay_limits(path, sections["relay"])
    _check_claim_outlasts_a_request(path, sections["relay"], "mparticle", sections["mparticle"])
    if _authorizations(env) or env.get("MPARTICLE_AUDIENCE_ACCESS_KEY", "").strip():
        # mParticle → Customer.io is on: its requests count too
        _check_claim_outlasts_a_request(path, sections["relay"], "customerio",
                                        sections["customerio"])
    return Settings(
        events=_load_events(path, raw.get("events", {})),
        redis_url=env.get("REDIS_URL") or None,
        mparticle_base_url=_mparticle_base_url(env),
        secrets=_load_secrets(env),
        source=str(path),
        customerio_region=_customerio_region(env),
        customerio_base_url=_customerio_base_url(env),
        worker_metrics_port=_port(env, "WORKER_METRICS_PORT"),
        **sections,
    )


def _port(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{name} must be a TCP port (1-65535), not {raw!r}")
    return int(raw)


def _customerio_region(env: Mapping[str, str]) -> str:
    region = (env.get("CUSTOMERIO_REGION") or "us").strip().lower()
    if region not in CUSTOMERIO_REGION_BASE_URLS:
        allowed = ", ".join(CUSTOMERIO_REGION_BASE_URLS)
        raise ConfigError(f"CUSTOMERIO_REGION: unknown region {region!r}; allowed: {allowed}")
    return region


def _customerio_base_url(env: Mapping[str, str]) -> str:
    override = env.get("CUSTOMERIO_BASE_URL", "").strip()
    if override:
        if not override.startswith(("http://", "https://")):
            raise ConfigError("CUSTOMERIO_BASE_URL must start with http:// or https://")
        return override.rstrip("/")
    return CUSTOMERIO_REGION_BASE_URLS[_customerio_region(env)]


def _authorizations(env: Mapping[str, str]) -> tuple[str, ...]:
    """MPARTICLE_WEBHOOK_AUTHORIZATION: comma-separated values, each trimmed."""
    raw = env.get("MPARTICLE_WEBHOOK_AUTHORIZATION", "")
    return tuple(value.strip() for value in raw.split(",") if value.strip())


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"settings file not found: {path} (RELAY_SETTINGS)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _load_section(path: Path, name: str, schema: type[Schema], values: Any) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    try:
        return schema().load(values)
    except ValidationError as exc:
        key, messages = next(iter(exc.normalized_messages().items()))
        if isinstance(messages, dict):  # a list's item: {index: [message]}
            index, inner = next(iter(messages.items()))
            messages = [f"item {index}: {inner[0] if isinstance(inner, list) else inner}"]
        message = messages[0] if isinstance(messages, list) else messages
        raise ConfigError(f"{path}: [{name}] {key}: {message}") from None


def _check_relay_limits(path: Path, relay: dict[str, Any]) -> None:
    # A batch is never split across requests: the largest one must fit in a request,
    # with the two brackets of the JSON array around it.
    if relay["max_batch_bytes"] + 2 > relay["max_request_bytes"]:
        raise ConfigError(
            f"{path}: [relay] max_batch_bytes: must be less than max_request_bytes - 1, "
            "so a full batch fits in one request"
        )


def _check_claim_outlasts_a_request(
    path: Path, relay: dict[str, Any], name: str, destination: dict[str, Any]
) -> None:
    # Another worker takes over entries idle for claim_idle_seconds; if one request could
    # take longer than that, a live worker's request would be sent twice.
    request_seconds = (destination["connect_timeout_seconds"]
                       + destination["read_timeout_seconds"])
    if relay["claim_idle_seconds"] <= request_seconds:
        raise ConfigError(
            f"{path}: [relay] claim_idle_seconds: must be more than [{name}] "
            f"connect_timeout_seconds + read_timeout_seconds ({request_seconds:g}), so no "
            "worker takes over a request still in flight"
        )


def _load_events(path: Path, values: Any) -> dict[str, bool]:
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: [events] must be a table")
    toggles = catalog.default_toggles()
    for name, enabled in values.items():
        if name not in toggles:
            raise ConfigError(f"{path}: [events] {name}: not a known Customer.io event type")
        if not isinstance(enabled, bool):
            raise ConfigError(f"{path}: [events] {name}: must be true or false")
        toggles[name] = enabled
    return toggles


def _mparticle_base_url(env: Mapping[str, str]) -> str:
    override = env.get("MPARTICLE_BASE_URL", "").strip()
    if override:
        if not override.startswith(("http://", "https://")):
            raise ConfigError("MPARTICLE_BASE_URL must start with http:// or https://")
        return override.rstrip("/")
    region = env.get("MPARTICLE_REGION", "").strip() or "us1"
    if region not in REGION_BASE_URLS:
        allowed = ", ".join(REGION_BASE_URLS)
        raise ConfigError(f"MPARTICLE_REGION={region!r} is not one of {allowed}")
    return REGION_BASE_URLS[region]


def _load_secrets(env: Mapping[str, str]) -> Secrets:
    keys = tuple(
        key.strip().encode() for key in env.get("CIO_WEBHOOK_SIGNING_KEYS", "").split(",")
        if key.strip()
    )
    api_key = env.get("MPARTICLE_API_KEY", "").strip()
    api_secret = env.get("MPARTICLE_API_SECRET", "").strip()
    if bool(api_key) != bool(api_secret):
        missing = "MPARTICLE_API_SECRET" if api_key else "MPARTICLE_API_KEY"
        raise ConfigError(f"{missing} is not set: mParticle needs both the key and the secret")
    site_id = env.get("CUSTOMERIO_SITE_ID", "").strip()
    track_key = env.get("CUSTOMERIO_API_KEY", "").strip()
    if bool(site_id) != bool(track_key):
        missing = "CUSTOMERIO_API_KEY" if site_id else "CUSTOMERIO_SITE_ID"
        raise ConfigError(f"{missing} is not set: Customer.io's Track API needs both")
    return Secrets(
        signing_keys=keys,
        mparticle_api_key=api_key,
        mparticle_api_secret=api_secret,
        admin_token=_admin_token(env),
        mparticle_webhook_authorizations=_authorizations(env),
        customerio_site_id=site_id,
        customerio_api_key=track_key,
        audience_access_key=env.get("MPARTICLE_AUDIENCE_ACCESS_KEY", "").strip(),
    )


def _admin_token(env: Mapping[str, str]) -> str:
    """RELAY_ADMIN_TOKEN, refused when short enough to guess; empty turns the admin off."""
    token = env.get("RELAY_ADMIN_TOKEN", "").strip()
    if token and len(token) < ADMIN_TOKEN_MIN_LENGTH:
        raise ConfigError(
            f"RELAY_ADMIN_TOKEN is too short: it must be at least {ADMIN_TOKEN_MIN_LENGTH} "
            "characters (e.g. openssl rand -hex 32), or unset to turn the admin API and "
            "console off"
        )
    return token
