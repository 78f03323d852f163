"""The accept script's own connections (app/script_line.py), against the real Redis.

Through a loopback proxy (tests/support/redis_proxy.py) where Redis must misbehave on
cue: hang, or drop every connection as a restart does.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from urllib.parse import urlsplit

import fakeredis
import pytest
import redis as redis_lib

from app.keys import KeySpace
from app.script_line import ScriptLine, script_line_for
from app.services import REDIS_DECODING
from app.store import EventStore, IncomingEvent
from tests.support.processes import free_port
from tests.support.redis_cluster import RedisServer, redis_binaries_missing

ECHO = "return {KEYS[1], ARGV[1]}"


def _db(redis_url: str) -> int:
    return int(urlsplit(redis_url).path.strip("/") or 0)


def _client(url: str, **options) -> redis_lib.Redis:
    return redis_lib.Redis.from_url(url, **REDIS_DECODING, **options)


def _line(client: redis_lib.Redis, script_text: str = ECHO) -> ScriptLine:
    line = script_line_for(client, client.register_script(script_text))
    assert line is not None
    return line


def test_a_call_answers_as_redis_py_would(redis):
    script = redis.register_script(ECHO)
    line = _line(redis)

    assert line(keys=["k"], args=["é"]) == script(keys=["k"], args=["é"]) == ["k", "é"]


def test_bytes_that_are_not_utf8_come_back_as_redis_py_gives_them(redis):
    script = redis.register_script(ECHO)
    binary = b"\xff\x00deflated"

    assert _line(redis)(keys=["k"], args=[binary]) == script(keys=["k"], args=[binary])
    assert _line(redis)(keys=["k"], args=[binary])[1].encode("utf-8", "surrogateescape") == binary


def test_replies_are_bytes_when_the_client_does_not_decode(redis_url, redis):
    raw = redis_lib.Redis.from_url(redis_url)

    assert _line(raw)(keys=["k"], args=["v"]) == [b"k", b"v"]
    raw.close()


def test_an_error_reply_keeps_redis_py_s_class_and_message(redis):
    line = _line(redis, "return redis.error_reply('ERR the clock is off')")

    with pytest.raises(redis_lib.ResponseError, match=r"^the clock is off$"):
        line(keys=["k"], args=["v"])


def test_a_flushed_script_cache_is_reloaded_through_redis_py(redis):
    line = _line(redis)
    assert line(keys=["k"], args=["1"]) == ["k", "1"]

    redis.script_flush()

    assert line(keys=["k"], args=["2"]) == ["k", "2"]
    assert line(keys=["k"], args=["3"]) == ["k", "3"]


def test_the_db_of_the_url_is_selected(redis, redis_url):
    assert _db(redis_url) != 0
    line = _line(redis, "redis.call('SET', KEYS[1], ARGV[1]) return 1")

    line(keys=["line-selected-db"], args=["yes"])

    assert redis.get("line-selected-db") == "yes"
    other_db = redis_lib.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/0")
    assert other_db.get("line-selected-db") is None
    other_db.close()


def test_connections_are_reused_one_per_concurrent_call(redis, proxy, redis_url):
    redis.script_load(ECHO)
    line = _line(_client(proxy.url))

    for n in range(5):
        line(keys=["k"], args=[str(n)])

    assert proxy.connections == 1
    assert proxy.sends == 1 + 5  # SELECT once, then one send per call


def test_a_dropped_connection_is_replaced_once_and_the_call_made(redis, proxy, redis_url):
    incr = "return redis.call('INCR', KEYS[1])"
    redis.script_load(incr)
    line = _line(_client(proxy.url), incr)
    assert line(keys=["calls"], args=[]) == 1

    proxy.drop_connections()  # as a Redis restart does

    assert line(keys=["calls"], args=[]) == 2
    assert redis.get("calls") == "2"
    assert proxy.connections == 2


def test_a_hanging_redis_times_out_and_its_late_reply_is_never_read(redis, proxy, redis_url):
    line = _line(_client(proxy.url, socket_timeout=0.3))
    assert line(keys=["k"], args=["before"]) == ["k", "before"]

    proxy.hang()
    with pytest.raises(redis_lib.TimeoutError):
        line(keys=["k"], args=["lost"])
    proxy.resume()

    assert line(keys=["k"], args=["after"]) == ["k", "after"]


def test_nothing_listening_is_a_connection_error():
    client = _client(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)

    with pytest.raises(redis_lib.ConnectionError):
        _line(client)(keys=["k"], args=["v"])


@pytest.fixture
def acl_user(redis: redis_lib.Redis) -> Iterator[tuple[str, str]]:
    name, password = "relay-line-test", "line-test-secret"
    redis.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["line-acl:*"],
                      commands=["+@all"])
    yield name, password
    redis.acl_deluser(name)


def test_credentials_of_the_url_are_sent_and_a_refusal_is_a_connection_error(
    redis, redis_url, acl_user
):
    name, password = acl_user
    port = urlsplit(redis_url).port or 6379
    good = _client(f"redis://{name}:{password}@127.0.0.1:{port}/{_db(redis_url)}")
    bad = _client(f"redis://{name}:wrong@127.0.0.1:{port}/{_db(redis_url)}")

    as_the_user = _line(good, "return redis.call('SET', KEYS[1], 'x')")
    assert as_the_user(keys=["line-acl:mine"], args=[]) == "OK"
    with pytest.raises(redis_lib.ResponseError):  # the user may touch line-acl:* only
        as_the_user(keys=["someone-else's"], args=[])
    with pytest.raises(redis_lib.ConnectionError, match="AUTH"):
        _line(bad)(keys=["k"], args=["v"])


def test_a_forked_child_opens_its_own_connection(redis, proxy, redis_url):
    redis.script_load(ECHO)
    line = _line(_client(proxy.url))
    line(keys=["k"], args=["parent"])  # the parent's connection now waits, idle

    with warnings.catch_warnings():  # fork beside the proxy's threads: the child uses none
        warnings.simplefilter("ignore", DeprecationWarning)
        child = os.fork()
    if child == 0:  # pragma: no cover (the child's verdict is its exit code)
        try:
            ok = line(keys=["k"], args=["child"]) == ["k", "child"]
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert proxy.connections == 2
    assert line(keys=["k"], args=["parent again"]) == ["k", "parent again"]


@pytest.mark.skipif(bool(redis_binaries_missing()), reason=str(redis_binaries_missing()))
def test_a_unix_socket_serves_as_well_as_tcp(tmp_path):
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path / "redis", options=(
        "--unixsocket", str(socket_path), "--unixsocketperm", "700")).start()
    try:
        client = _client(f"unix://{socket_path}?db=2")
        line = _line(client, "return {redis.call('INCR', KEYS[1]), ARGV[1]}")

        assert line(keys=["calls"], args=["v"]) == [1, "v"]
        assert line(keys=["calls"], args=["w"]) == [2, "w"]
        assert _client(f"redis://127.0.0.1:{server.port}/2").get("calls") == "2"
    finally:
        server.stop()


@pytest.mark.parametrize("client", [
    pytest.param(lambda: fakeredis.FakeRedis(decode_responses=True), id="embedded store"),
    pytest.param(lambda: redis_lib.Redis(ssl=True), id="TLS"),
])
def test_other_clients_keep_redis_py(client):
    made = client()
    assert script_line_for(made, made.register_script(ECHO)) is None


def test_the_event_store_queues_through_the_line(redis, proxy, redis_url):
    keys = KeySpace("cior", 2)
    store = EventStore(_client(proxy.url), keys, first_occurrence_only=True,
                       dead_letter_max_entries=10)
    event = IncomingEvent("01LINE", "email_opened", "delivery-1", "42", '{"event_id":"01LINE"}')
    store.accept(event)  # loads the script through redis-py (NOSCRIPT), once
    sends = proxy.sends

    assert store.accept(event).status == "duplicate"
    assert proxy.sends - sends == 1
    assert redis.xlen(keys.queue(keys.shard_for("42"))) == 1
