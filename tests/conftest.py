"""Fixtures: settings, the app on the real Redis, a Flask client, the mParticle stand-in.

Anything that touches Redis uses the real server (``TEST_REDIS_URL``, default DB 13 on
127.0.0.1:6379), flushed before and after each test. fakeredis is used only by the
tests of the embedded default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from app import create_app
from app.config import Settings, load_settings
from app.services import REDIS_DECODING
from tests.helpers.mparticle_standin import MParticleStandIn
from tests.helpers.redis_proxy import RedisProxy, redis_proxy
from tests.helpers.webhooks import SIGNING_KEY

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
STANDIN_KEY = "test-key"
STANDIN_SECRET = "test-secret"
# At least 32 characters, as the relay requires (app/config.py).
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


def toml_text(sections: dict[str, dict[str, Any]]) -> str:
    """A settings file from nested dicts (strings, numbers and booleans only)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            else:
                lines.append(f"{key} = {value}")
        lines.append("")
    return "\n".join(lines)


@pytest.fixture
def redis_url() -> str:
    return TEST_REDIS_URL


@pytest.fixture
def redis(redis_url: str) -> Iterator[redis_lib.Redis]:
    """The real Redis, on the test DB, empty before and after the test."""
    client = redis_lib.Redis.from_url(redis_url, **REDIS_DECODING)
    try:
        client.ping()
    except redis_lib.ConnectionError:
        pytest.fail(f"no Redis answers at {redis_url}: start redis-server (.ci/run does)")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def proxy(redis: redis_lib.Redis, redis_url: str) -> Iterator[RedisProxy]:
    """A loopback proxy in front of the test Redis (counts sends, hangs, drops)."""
    with redis_proxy(redis_url) as proxy:
        yield proxy


@pytest.fixture
def relay_env(redis_url: str) -> dict[str, str]:
    """The environment a production deployment would set, pointed at test doubles."""
    return {
        "REDIS_URL": redis_url,
        "CIO_WEBHOOK_SIGNING_KEYS": f"old-rotated-key,{SIGNING_KEY}",
        "MPARTICLE_API_KEY": STANDIN_KEY,
        "MPARTICLE_API_SECRET": STANDIN_SECRET,
        "MPARTICLE_BASE_URL": "http://127.0.0.1:9/v2",
        "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
    }


@pytest.fixture
def make_settings(
    tmp_path: Path, relay_env: dict[str, str]
) -> Callable[..., Settings]:
    """Settings from a test settings file and environment; override either per test."""

    def build(sections: dict[str, dict[str, Any]] | None = None, **env: str | None) -> Settings:
        path = tmp_path / "settings.toml"
        base = {"logging": {"format": "text", "level": "WARNING"}}
        for name, values in (sections or {}).items():
            base.setdefault(name, {}).update(values)
        path.write_text(toml_text(base))
        environ = {**relay_env, "RELAY_SETTINGS": str(path)}
        for name, value in env.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        return load_settings(environ)

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def app(settings: Settings, redis: redis_lib.Redis) -> Any:
    """The relay app on the real Redis test DB."""
    return create_app(settings, redis_client=redis)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def runner(app: Any) -> Any:
    return app.test_cli_runner()


@pytest.fixture
def mparticle() -> Iterator[MParticleStandIn]:
    """A real HTTP server on loopback standing in for mParticle's Events API."""
    with MParticleStandIn(api_key=STANDIN_KEY, api_secret=STANDIN_SECRET) as server:
        yield server
