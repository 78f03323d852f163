"""Every Lua script loads into the real Redis, with the story helpers where it asks."""

from __future__ import annotations

from importlib import resources

import pytest

from app.store import scripts

NAMES = sorted(path.name.removesuffix(".lua")
               for path in resources.files("app.store.scripts").iterdir()
               if path.name.endswith(".lua"))


def test_every_script_the_store_runs_is_a_file_of_the_scripts_folder():
    assert {"accept_event", "note_story", "tell_stories", "extend_throttle",
            "forget_consumers", "read_new_in_order", "move_legacy_keys"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_each_script_compiles_in_redis(redis, name):
    sha = redis.script_load(scripts.source(name))
    assert redis.script_exists(sha) == [True]


def test_a_script_that_uses_the_story_functions_gets_them_first():
    text = scripts.source("accept_event")
    assert text.index("local function with_one_more_copy") < text.index("XADD")
    assert "local function base36" not in scripts.source("extend_throttle")


def test_a_registered_script_is_reloaded_after_redis_forgets_it(redis):
    extend = scripts.register(redis, "extend_throttle")
    redis.script_flush()

    assert extend(keys=["test:throttle"], args=[5000, "test"]) == 5000
    assert 4000 < redis.pttl("test:throttle") <= 5000
