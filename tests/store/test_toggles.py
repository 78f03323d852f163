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
from app.store.toggles import (
    MAX_NAME_LENGTH,
    MalformedEventTypeError,
    ToggleStore,
    is_well_formed,
)
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


MALFORMED = [
    "", "email", "email_", "_email_opened", "email__opened", "Email_Opened", "EMAIL_SENT",
    "email-opened", "email opened", "email_2fa", "2fa_sent", "émail_sent", "email_sent\n",
    "e" * (MAX_NAME_LENGTH - 4) + "_sent",  # 65 characters
]


@pytest.mark.parametrize("change", ["set", "reset", "get"])
@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_event_type_name_raises_and_writes_nothing(make_toggles, redis, change,
                                                               name):
    toggles = make_toggles()
    calls = {
        "set": lambda: toggles.set(name, True, actor="alice"),
        "reset": lambda: toggles.reset(name, actor="alice"),
        "get": lambda: toggles.get(name),
    }

    with pytest.raises(MalformedEventTypeError, match="not a well-formed event type"):
        calls[change]()

    assert redis.dbsize() == 0


@pytest.mark.parametrize(
    "name",
    ["email_deferred", "in_app_dismissed", "fax_sent", "email_2fa_sent", "x_y",
     "email_link_opened_twice", "e" * (MAX_NAME_LENGTH - 5) + "_sent"],
)
def test_a_well_formed_name_is_object_type_and_metric_each_starting_with_a_letter(name):
    assert len(name) <= MAX_NAME_LENGTH
    assert is_well_formed(name)


@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_name_is_not_well_formed(name):
    assert not is_well_formed(name)


def test_every_catalog_name_is_well_formed():
    assert [name for name in CATALOG if not is_well_formed(name)] == []


def test_a_type_the_catalog_does_not_list_is_off_by_default_and_shown_as_unknown(
    make_toggles, redis
):
    toggles = make_toggles(FakeClock())

    row = toggles.get("email_deferred")

    assert toggles.is_enabled("email_deferred") is False
    assert row.as_dict() == {
        "name": "email_deferred", "enabled": False, "default": False, "override": None,
        "source": "default", "changed_by": None, "changed_at": None, "known": False,
    }
    assert "email_deferred" not in {toggle.name for toggle in toggles.list()}
    assert redis.dbsize() == 0  # looking writes nothing


def test_a_type_the_catalog_does_not_list_can_be_turned_on_and_is_then_listed_unknown(
    make_toggles,
):
    admin = make_toggles()
    clock = FakeClock()
    web = make_toggles(clock)
    assert web.is_enabled("email_deferred") is False  # loaded and cached

    turned_on = admin.set("email_deferred", True, actor="alice")
    seen_at_once = web.is_enabled("email_deferred")
    clock.advance(REFRESH)
    seen_after_refresh = web.is_enabled("email_deferred")

    assert (turned_on.enabled, turned_on.source, turned_on.known) == (True, "override", False)
    assert seen_at_once is False  # the same cached read as a known type's override
    assert seen_after_refresh is True
    rows = admin.list()
    assert [toggle.name for toggle in rows[:len(CATALOG)]] == list(CATALOG)
    assert all(toggle.known for toggle in rows[:len(CATALOG)])
    (added,) = rows[len(CATALOG):]
    assert added.as_dict() | {"changed_at": None} == {
        "name": "email_deferred", "enabled": True, "default": False, "override": True,
        "source": "override", "changed_by": "alice", "changed_at": None, "known": False,
    }


def test_an_added_type_turned_off_again_or_reset_is_off_and_still_listed_unknown(make_toggles):
    toggles = make_toggles(FakeClock())
    toggles.set("email_deferred", True, actor="alice")

    off = toggles.set("email_deferred", False, actor="bob")
    listed_while_off = {toggle.name: toggle for toggle in toggles.list()}["email_deferred"]
    enabled_while_off = toggles.is_enabled("email_deferred")
    reset = toggles.reset("email_deferred", actor="carol")
    listed_after_reset = {toggle.name: toggle for toggle in toggles.list()}["email_deferred"]

    assert (off.enabled, off.override, off.known) == (False, False, False)
    assert (listed_while_off.enabled, listed_while_off.changed_by) == (False, "bob")
    assert enabled_while_off is False
    for row in (reset, listed_after_reset):  # off by default, and who reset it
        assert (row.enabled, row.source, row.override, row.changed_by, row.known) == (
            False, "default", None, "carol", False
        )
    assert toggles.is_enabled("email_deferred") is False


def test_a_malformed_name_written_into_the_hash_by_hand_is_no_override(make_toggles, redis):
    redis.hset("cior:toggles", mapping={"EMAIL_DEFERRED": "1", "email__x": "1"})
    redis.hset("cior:toggles:changes", "EMAIL_DEFERRED", '{"by": "hand", "at": 1}')
    toggles = make_toggles(FakeClock())

    assert toggles.is_enabled("EMAIL_DEFERRED") is False
    assert toggles.is_enabled("email__x") is False
    assert {toggle.name for toggle in toggles.list()} == set(CATALOG)


def test_a_known_name_is_known_and_an_added_one_is_not(make_toggles):
    toggles = make_toggles()

    assert toggles.is_known("email_opened") is True
    assert toggles.is_known("email_deferred") is False


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
