"""Event-type overrides shared through the real Redis by every process (ToggleStore)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import redis as redis_lib

from app import create_app
from app.services import services
from app.store.keys import KeySpace
from app.store.toggles import ToggleStore, UnknownEventTypeError
from app.to_mparticle.catalog import CATALOG, default_toggles
from tests.helpers.webhooks import encode, signed_headers, webhook

REFRESH = 1.0


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def make_toggles(redis: redis_lib.Redis) -> Callable[..., ToggleStore]:
    def build(clock: Callable[[], float] = time.monotonic) -> ToggleStore:
        return ToggleStore(
            redis, KeySpace("cior", 4), default_toggles(), refresh_seconds=REFRESH, clock=clock
        )

    return build


def test_an_override_set_in_one_process_reaches_another_within_its_refresh_interval(
    make_toggles,
):
    admin = make_toggles()
    clock = FakeClock()
    web = make_toggles(clock)
    assert web.is_enabled("email_opened")  # loaded and cached

    admin.set("email_opened", False, actor="alice")
    seen_at_once = web.is_enabled("email_opened")
    clock.advance(REFRESH)
    seen_after_refresh = web.is_enabled("email_opened")

    assert seen_at_once is True  # one read of Redis per refresh interval, not per request
    assert seen_after_refresh is False


def test_the_process_that_sets_an_override_sees_it_at_once(make_toggles):
    toggles = make_toggles(FakeClock())
    assert toggles.is_enabled("email_drafted") is False

    toggles.set("email_drafted", True, actor="alice")

    assert toggles.is_enabled("email_drafted") is True


def test_reset_restores_the_default_in_every_process(make_toggles):
    admin = make_toggles()
    clock = FakeClock()
    web = make_toggles(clock)
    admin.set("email_opened", False, actor="alice")
    clock.advance(REFRESH)
    assert web.is_enabled("email_opened") is False

    toggle = admin.reset("email_opened", actor="bob")
    clock.advance(REFRESH)

    assert toggle.enabled is True
    assert toggle.source == "default"
    assert toggle.override is None
    assert web.is_enabled("email_opened") is True


def test_list_shows_each_type_with_its_default_override_who_and_when(make_toggles):
    toggles = make_toggles()
    before = time.time()
    toggles.set("email_drafted", True, actor="alice")
    toggles.set("email_opened", False, actor="bob")
    after = time.time()

    rows = {toggle.name: toggle.as_dict() for toggle in toggles.list()}

    assert set(rows) == set(CATALOG)
    drafted = rows["email_drafted"]
    assert drafted["enabled"] is True
    assert drafted["default"] is False
    assert drafted["override"] is True
    assert drafted["source"] == "override"
    assert drafted["changed_by"] == "alice"
    assert before <= drafted["changed_at"] <= after
    assert rows["email_opened"]["default"] is True
    assert rows["email_opened"]["enabled"] is False
    assert rows["email_opened"]["changed_by"] == "bob"
    untouched = rows["sms_sent"]
    assert (untouched["source"], untouched["override"], untouched["changed_by"]) == (
        "default", None, None
    )


def test_list_shows_who_reset_an_override(make_toggles):
    toggles = make_toggles()
    toggles.set("push_sent", False, actor="alice")

    toggles.reset("push_sent", actor="bob")

    row = toggles.get("push_sent").as_dict()
    assert (row["source"], row["enabled"], row["changed_by"]) == ("default", True, "bob")


def test_the_settings_file_decides_the_default_shown_beside_an_override(redis):
    defaults = {**default_toggles(), "email_opened": False}
    toggles = ToggleStore(redis, KeySpace("cior", 4), defaults, refresh_seconds=REFRESH)

    toggles.set("email_opened", True, actor="alice")

    row = toggles.get("email_opened")
    assert (row.default, row.override, row.enabled) == (False, True, True)


@pytest.mark.parametrize("change", ["set", "reset", "get"])
def test_an_unknown_event_type_name_raises(make_toggles, redis, change):
    toggles = make_toggles()
    calls = {
        "set": lambda: toggles.set("email_teleported", True, actor="alice"),
        "reset": lambda: toggles.reset("email_teleported", actor="alice"),
        "get": lambda: toggles.get("email_teleported"),
    }

    with pytest.raises(UnknownEventTypeError):
        calls[change]()

    assert redis.dbsize() == 0


def test_a_second_app_on_the_same_redis_ignores_a_type_another_app_turned_off(
    make_settings, redis
):
    settings = make_settings({"redis": {"toggle_refresh_seconds": 0.05}})
    admin_app = create_app(settings, redis_client=redis)
    web_app = create_app(settings, redis_client=redis)
    client = web_app.test_client()

    def answer() -> str:
        body = encode(webhook("email", "opened"))
        return client.post("/webhooks/customerio", data=body,
                           headers=signed_headers(body)).get_json()["status"]

    assert answer() == "queued"
    services(admin_app).toggles.set("email_opened", False, actor="alice")
    deadline = time.monotonic() + 5
    status = answer()
    while status != "ignored" and time.monotonic() < deadline:
        time.sleep(0.02)
        status = answer()

    assert status == "ignored"


class HangingReads:
    """The real Redis, except that reading the overrides waits until the test lets it go."""

    def __init__(self, redis: redis_lib.Redis) -> None:
        self._redis = redis
        self.reading = threading.Event()
        self.release = threading.Event()

    def hgetall(self, key: str) -> dict[str, str]:
        self.reading.set()
        self.release.wait(10)
        return self._redis.hgetall(key)


def test_requests_go_on_with_the_cached_overrides_while_another_thread_rereads_them(redis):
    clock = FakeClock()
    hanging = HangingReads(redis)
    toggles = ToggleStore(hanging, KeySpace("cior", 4), default_toggles(),
                          refresh_seconds=REFRESH, clock=clock)
    hanging.release.set()
    assert toggles.is_enabled("email_opened")  # the first load
    redis.hset("cior:toggles", "email_opened", "0")
    hanging.release.clear()
    hanging.reading.clear()
    clock.advance(REFRESH)
    rereading = threading.Thread(target=toggles.is_enabled, args=("email_opened",))
    rereading.start()
    assert hanging.reading.wait(5)

    meanwhile = toggles.is_enabled("email_opened")  # does not queue behind the hung read
    still_reading = rereading.is_alive()
    hanging.release.set()
    rereading.join(5)

    assert still_reading and meanwhile is True
    assert toggles.is_enabled("email_opened") is False  # the re-read, once it returned
