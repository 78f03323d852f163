"""Settings: settings.toml (or RELAY_SETTINGS) plus the environment, checked at start."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from app.config import DEFAULT_SETTINGS_FILE, ConfigError, Settings, load_settings
from app.to_mparticle import catalog

REPO_ROOT = Path(__file__).resolve().parent.parent
DAY = 86_400

SECRET_ENV = {
    "CIO_WEBHOOK_SIGNING_KEYS": "cio-key-one,cio-key-two",
    "MPARTICLE_API_KEY": "mp-key-abc",
    "MPARTICLE_API_SECRET": "mp-secret-xyz",
    "RELAY_ADMIN_TOKEN": "admin-token-123-of-at-least-32-chars",
    "REDIS_URL": "redis://:redis-password-789@redis.internal:6379/0",
}


def settings_file(tmp_path: Path, text: str) -> dict[str, str]:
    """An environment whose RELAY_SETTINGS is a file with this text."""
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return {"RELAY_SETTINGS": str(path)}


def load_text(tmp_path: Path, text: str, **env: str) -> Settings:
    return load_settings(environ={**settings_file(tmp_path, text), **env})


def config_error(tmp_path: Path, text: str = "", **env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, **env)
    message = str(caught.value)
    assert "\n" not in message  # one line, for the start-up log
    return message


# -- the defaults -----------------------------------------------------------------------


def test_the_repository_settings_file_is_the_default():
    assert DEFAULT_SETTINGS_FILE == REPO_ROOT / "settings.toml"
    assert load_settings(environ={}).source == str(REPO_ROOT / "settings.toml")


def test_the_repository_settings_have_the_contract_defaults():
    settings = load_settings(environ={})
    assert settings.webhook == {
        "require_signature": True,
        "timestamp_tolerance_seconds": 300,
        "max_body_bytes": 262144,
    }
    assert settings.dedup == {
        "first_occurrence_only": True,
        "event_ttl_seconds": 8 * DAY,
        "first_occurrence_ttl_seconds": 90 * DAY,
    }
    assert settings.mparticle["environment"] == "production"
    assert settings.mparticle["event_names"] == "customerio"
    assert settings.mparticle["dry_run"] is False
    assert settings.relay["max_batches_per_request"] == 100
    assert settings.relay["max_request_bytes"] == 262144
    assert settings.relay["max_batch_bytes"] == 131072
    assert settings.events == catalog.default_toggles()
    assert {name for name, on in settings.events.items() if on} == set(catalog.FEED_DEFAULTS)


def test_an_empty_file_gives_the_same_settings_as_the_repository_file(tmp_path):
    # Ties the defaults written in settings.toml to the defaults in the code.
    empty = load_text(tmp_path, "")
    repository = load_settings(environ={})
    for section in ("webhook", "events", "dedup", "mparticle", "relay", "redis", "logging"):
        assert getattr(empty, section) == getattr(repository, section), section


def test_every_key_of_the_repository_file_is_read():
    raw = tomllib.loads((REPO_ROOT / "settings.toml").read_text())
    settings = load_settings(environ={})
    for section, values in raw.items():
        assert set(values) <= set(getattr(settings, section)), section


def test_a_partial_file_takes_the_defaults_for_the_rest(tmp_path):
    settings = load_text(
        tmp_path,
        '[mparticle]\nenvironment = "development"\n[events]\nemail_opened = false\n'
        "whatsapp_sent = true\n",
    )
    assert settings.mparticle["environment"] == "development"
    assert settings.mparticle["event_names"] == "customerio"
    assert settings.webhook["timestamp_tolerance_seconds"] == 300
    assert settings.dedup["event_ttl_seconds"] == 8 * DAY
    assert settings.events["email_opened"] is False
    assert settings.events["whatsapp_sent"] is True
    assert settings.events["email_clicked"] is True
    assert settings.events["slack_sent"] is False


# -- bad values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[webhook]\ntimestamp_tolerance_seconds = "300"\n', "timestamp_tolerance_seconds"),
        ("[webhook]\nmax_body_bytes = 262144.0\n", "max_body_bytes"),
        ("[webhook]\nmax_body_bytes = true\n", "max_body_bytes"),
        ("[webhook]\nmax_body_bytes = 0\n", "max_body_bytes"),
        ('[webhook]\nrequire_signature = "true"\n', "require_signature"),
        ("[webhook]\nrequire_signature = 1\n", "require_signature"),
        ("[dedup]\nfirst_occurrence_only = 0\n", "first_occurrence_only"),
        ('[dedup]\nevent_ttl_seconds = "8 days"\n', "event_ttl_seconds"),
        ('[mparticle]\nenvironment = "staging"\n', "environment"),
        ('[mparticle]\nevent_names = "Title Case"\n', "event_names"),
        ('[mparticle]\ndry_run = "no"\n', "dry_run"),
        ('[mparticle]\nread_timeout_seconds = "10"\n', "read_timeout_seconds"),
        ("[mparticle]\nconnect_timeout_seconds = true\n", "connect_timeout_seconds"),
        ("[mparticle]\nconnect_timeout_seconds = 0\n", "connect_timeout_seconds"),
        ("[mparticle]\nconnect_timeout_seconds = inf\n", "connect_timeout_seconds"),
        ("[relay]\nmax_batches_per_request = 101\n", "max_batches_per_request"),
        ("[relay]\nmax_batch_bytes = 262144\n", "max_batch_bytes"),
        ("[relay]\nmax_request_bytes = 300000\n", "max_request_bytes"),
        ("[relay]\nmax_request_bytes = 131072\n", "max_batch_bytes"),  # a batch must fit
        ('[redis]\nkey_prefix = "a b"\n', "key_prefix"),
        ('[logging]\nlevel = "LOUD"\n', "level"),
        ("[webhook]\nrequire_signatures = true\n", "require_signatures"),
        ("[relay]\nbatch_size = 10\n", "batch_size"),
        ("[webhooks]\nrequire_signature = true\n", "webhooks"),
        ("[events]\nemail_teleported = true\n", "email_teleported"),
        ('[events]\nemail_opened = "yes"\n', "email_opened"),
        ("[events]\nemail_opened = 1\n", "email_opened"),
        ("webhook = 5\n", "webhook"),
        ("events = [1]\n", "events"),
    ],
)
def test_a_bad_setting_stops_the_start_with_one_line_naming_it(tmp_path, text, named):
    assert named in config_error(tmp_path, text)


def test_a_file_that_is_not_toml_is_refused(tmp_path):
    assert "not valid TOML" in config_error(tmp_path, "[webhook\n")


def test_a_missing_settings_file_is_refused_naming_it(tmp_path):
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"RELAY_SETTINGS": str(missing)})
    assert str(missing) in str(caught.value)
    assert "RELAY_SETTINGS" in str(caught.value)


# -- mParticle location and credentials -------------------------------------------------


@pytest.mark.parametrize(
    ("region", "base_url"),
    [
        (None, "https://s2s.mparticle.com/v2"),
        ("", "https://s2s.mparticle.com/v2"),
        ("us1", "https://s2s.mparticle.com/v2"),
        ("us2", "https://s2s.us2.mparticle.com/v2"),
        ("eu1", "https://s2s.eu1.mparticle.com/v2"),
        ("au1", "https://s2s.au1.mparticle.com/v2"),
    ],
)
def test_the_region_picks_the_mparticle_pod(tmp_path, region, base_url):
    env = {} if region is None else {"MPARTICLE_REGION": region}
    assert load_text(tmp_path, "", **env).mparticle_base_url == base_url


@pytest.mark.parametrize("region", ["eu2", "EU 1", "mars"])
def test_an_unknown_region_is_refused_naming_mparticle_region(tmp_path, region):
    message = config_error(tmp_path, MPARTICLE_REGION=region)
    assert "MPARTICLE_REGION" in message
    assert "us1" in message


def test_a_base_url_overrides_the_region(tmp_path):
    settings = load_text(
        tmp_path, "", MPARTICLE_REGION="eu1", MPARTICLE_BASE_URL="https://inbound.example.com/v2/"
    )
    assert settings.mparticle_base_url == "https://inbound.example.com/v2"


def test_a_base_url_that_is_not_http_is_refused(tmp_path):
    assert "MPARTICLE_BASE_URL" in config_error(tmp_path, MPARTICLE_BASE_URL="s2s.example.com")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MPARTICLE_API_KEY": "k"}, "MPARTICLE_API_SECRET"),
        ({"MPARTICLE_API_SECRET": "s"}, "MPARTICLE_API_KEY"),
        ({"MPARTICLE_API_KEY": "k", "MPARTICLE_API_SECRET": "  "}, "MPARTICLE_API_SECRET"),
    ],
)
def test_only_one_of_the_mparticle_key_and_secret_is_refused(tmp_path, env, named):
    assert named in config_error(tmp_path, **env)


def test_mparticle_credentials_are_read_from_the_environment(tmp_path):
    settings = load_text(tmp_path, "", MPARTICLE_API_KEY=" k ", MPARTICLE_API_SECRET="s")
    assert settings.has_mparticle_credentials
    assert (settings.secrets.mparticle_api_key, settings.secrets.mparticle_api_secret) == (
        "k", "s"
    )
    assert not load_text(tmp_path, "").has_mparticle_credentials


def test_require_mparticle_refuses_no_credentials_without_dry_run(tmp_path):
    with pytest.raises(ConfigError, match="MPARTICLE_API_KEY") as caught:
        load_text(tmp_path, "").require_mparticle()
    assert "dry_run" in str(caught.value)
    load_text(tmp_path, "[mparticle]\ndry_run = true\n").require_mparticle()
    load_text(tmp_path, "", MPARTICLE_API_KEY="k", MPARTICLE_API_SECRET="s").require_mparticle()


# -- signing keys -----------------------------------------------------------------------


def test_signing_keys_are_comma_separated_with_spaces_and_empties_dropped(tmp_path):
    settings = load_text(tmp_path, "", CIO_WEBHOOK_SIGNING_KEYS=" old-key , new-key,, ")
    assert settings.secrets.signing_keys == (b"old-key", b"new-key")


def test_require_signing_keys_refuses_a_signed_endpoint_without_keys(tmp_path):
    with pytest.raises(ConfigError, match="CIO_WEBHOOK_SIGNING_KEYS"):
        load_text(tmp_path, "").require_signing_keys()
    with pytest.raises(ConfigError, match="CIO_WEBHOOK_SIGNING_KEYS"):
        load_text(tmp_path, "", CIO_WEBHOOK_SIGNING_KEYS=" , ").require_signing_keys()
    load_text(tmp_path, "", CIO_WEBHOOK_SIGNING_KEYS="k").require_signing_keys()
    load_text(tmp_path, "[webhook]\nrequire_signature = false\n").require_signing_keys()


# -- locations and secrets --------------------------------------------------------------


def test_without_redis_url_the_embedded_store_is_used(tmp_path):
    assert load_text(tmp_path, "").embedded
    settings = load_text(tmp_path, "", REDIS_URL="redis://127.0.0.1:6379/0")
    assert not settings.embedded
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


def test_the_admin_token_is_read_from_the_environment(tmp_path):
    token = "t" * 32
    assert load_text(tmp_path, "", RELAY_ADMIN_TOKEN=token).secrets.admin_token == token
    assert load_text(tmp_path, "", RELAY_ADMIN_TOKEN=f" {token}\n").secrets.admin_token == token
    assert load_text(tmp_path, "").secrets.admin_token == ""  # unset: the admin API is off
    assert load_text(tmp_path, "", RELAY_ADMIN_TOKEN=" ").secrets.admin_token == ""


@pytest.mark.parametrize("token", ["X", "t" * 31, f"  {'t' * 31}  "],
                         ids=["one-character", "31-characters", "31-between-spaces"])
def test_an_admin_token_shorter_than_32_characters_stops_the_start(tmp_path, token):
    message = config_error(tmp_path, RELAY_ADMIN_TOKEN=token)

    assert message.startswith("RELAY_ADMIN_TOKEN is too short")
    assert "at least 32 characters" in message
    assert token.strip() not in message  # the token is never echoed


def test_the_repr_of_settings_and_secrets_never_shows_a_secret(tmp_path):
    settings = load_text(tmp_path, "", **SECRET_ENV)
    assert settings.secrets.mparticle_api_secret == "mp-secret-xyz"  # they were read
    shown = repr(settings) + str(settings) + repr(settings.secrets) + str(settings.secrets)
    for secret in ("cio-key-one", "cio-key-two", "mp-key-abc", "mp-secret-xyz",
                   "admin-token-123", "redis-password-789"):
        assert secret not in shown
    assert "webhook" in repr(settings)  # the repr still says something useful


# -- delivery policy ----------------------------------------------------------------------


def test_the_default_retry_schedule_is_svixs_with_jitter():
    relay = load_settings(environ={}).relay
    assert relay["retry_schedule_seconds"] == [5, 30, 120, 300]
    assert relay["retry_jitter_ratio"] == 0.2
    assert relay["slow_down_at_rate_limit_percent"] == 80
    assert relay["claim_idle_seconds"] > 3.05 + 10.0  # outlasts one request


def test_a_retry_schedule_may_be_set_in_the_file(tmp_path):
    settings = load_text(tmp_path, "[relay]\nretry_schedule_seconds = [1, 2.5, 60]\n")
    assert settings.relay["retry_schedule_seconds"] == [1.0, 2.5, 60.0]


@pytest.mark.parametrize(
    "text",
    [
        "[relay]\nretry_schedule_seconds = []\n",
        "[relay]\nretry_schedule_seconds = [5, 0]\n",
        "[relay]\nretry_schedule_seconds = [5, -1]\n",
        '[relay]\nretry_schedule_seconds = [5, "300"]\n',
        "[relay]\nretry_schedule_seconds = [5, inf]\n",
        "[relay]\nretry_schedule_seconds = 5\n",
        "[relay]\nretry_schedule_seconds = [5, 9999999]\n",  # over a week
        "[relay]\nretry_jitter_ratio = 1.5\n",
        "[relay]\nslow_down_at_rate_limit_percent = 120\n",
        "[relay]\nslow_down_max_seconds = -1\n",
    ],
)
def test_a_bad_retry_or_slow_down_setting_stops_the_start_naming_it(tmp_path, text):
    key = text.split("\n")[1].split(" =")[0]
    assert key in config_error(tmp_path, text)


def test_a_bad_item_of_the_schedule_is_named_by_its_position(tmp_path):
    message = config_error(tmp_path, '[relay]\nretry_schedule_seconds = [5, "300"]\n')
    assert "retry_schedule_seconds: item 1:" in message


@pytest.mark.parametrize(
    "text",
    [
        "[relay]\nclaim_idle_seconds = 13\n",  # the defaults: 3.05 + 10 s
        "[relay]\nclaim_idle_seconds = 5\n[mparticle]\nconnect_timeout_seconds = 1\n"
        "read_timeout_seconds = 4\n",
    ],
)
def test_a_claim_idle_time_shorter_than_a_request_stops_the_start(tmp_path, text):
    message = config_error(tmp_path, text)
    assert "claim_idle_seconds" in message
    assert "connect_timeout_seconds + read_timeout_seconds" in message


def test_a_claim_idle_time_longer_than_a_request_is_accepted(tmp_path):
    settings = load_text(
        tmp_path,
        "[relay]\nclaim_idle_seconds = 2\n[mparticle]\nconnect_timeout_seconds = 0.5\n"
        "read_timeout_seconds = 1\n",
    )
    assert settings.relay["claim_idle_seconds"] == 2
