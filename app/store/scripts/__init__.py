"""Every Lua script the relay runs in Redis, one ``.lua`` file each, and their loader.

A script whose first line is ``-- uses: story_functions`` gets ``story_functions.lua``
(the story helpers of :mod:`app.store.marks`) put before it. Scripts are registered
through redis-py's :meth:`redis.Redis.register_script`, which sends ``EVALSHA`` and
loads the script when Redis does not have it (after a restart, say).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from redis.client import Pipeline

_PRELUDE_LINE = "-- uses: "


@cache
def source(name: str) -> str:
    """The text Redis runs for script ``name`` (its prelude included)."""
    text = resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    first_line = text.split("\n", 1)[0]
    if first_line.startswith(_PRELUDE_LINE):
        prelude = first_line[len(_PRELUDE_LINE):].strip()
        return source(prelude) + "\n" + text
    return text


def register(redis: Any, name: str) -> Any:
    """A redis-py ``Script`` for ``name`` on this client (callable: keys=, args=, client=)."""
    return redis.register_script(source(name))


def queue_on(pipe: Any, name: str, keys: list[Any], args: list[Any]) -> None:
    """Queue a call of script ``name`` on a pipeline, on one Redis or a Redis Cluster.

    A plain pipeline loads the script itself before EVALSHA (also after a Redis restart
    flushed the script cache). redis-py's cluster pipeline refuses EVALSHA and cannot
    load scripts, so there the script's text goes with the call (EVAL; Redis caches it).
    """
    if isinstance(pipe, Pipeline):
        pipe.register_script(source(name))(keys=keys, args=args, client=pipe)
    else:
        pipe.execute_command("EVAL", source(name), len(keys), *keys, *args)
