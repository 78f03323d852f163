"""The support and admin commands (CONTRACT §4) through Flask's CLI runner, on the real Redis.

Exit status: 0 success, 1 a reported problem, 2 a usage error.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask

from app import create_app
from app.services import services
from tests.conftest import STANDIN_SECRET
from tests.helpers.webhooks import encode, signed_headers, webhook


def send(app: Flask, payload: Any = None, *, body: bytes | None = None) -> dict[str, Any]:
    body = encode(payload) if body is None else body
    response = app.test_client().post(
        "/webhooks/customerio", data=body, headers=signed_headers(body)
    )
    assert response.status_code in (200, 202)
    return response.get_json()


def dead_letter_an_event(app: Flask) -> dict[str, Any]:
    """Have the worker dead-letter an event that names no person; return the webhook."""
    payload = webhook("sms", "delivered", customer_id=None, email=None, delivery_id=None)
    send(app, payload)
    services(app).build_worker().run(once=True)
    return payload


def dead_letter_ids(app: Flask) -> list[str]:
    relay = services(app)
    return [entry_id for entry_id, _ in relay.redis.xrange(relay.keys.dead_letters)]


def queue_length(app: Flask) -> int:
    return services(app).queue_stats()["length"]


# -- events ----------------------------------------------------------------------------


def test_events_list_shows_every_type_enabled_or_not(runner):
    result = runner.invoke(args=["events", "list"])

    assert result.exit_code == 0
    lines = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    assert lines["email_opened"][1:4] == ["yes", "on", "default"]
    assert lines["email_drafted"][1:4] == ["no", "off", "default"]


def test_events_list_as_json_parses(runner):
    result = runner.invoke(args=["events", "list", "--json"])

    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert sum(row["enabled"] for row in rows) == 20


def test_events_disable_turns_a_type_off_so_its_webhooks_are_ignored(runner, app):
    result = runner.invoke(args=["events", "disable", "email_opened"])

    assert result.exit_code == 0
    assert "email_opened: disabled" in result.output
    assert send(app, webhook("email", "opened"))["status"] == "ignored"
    toggle = services(app).toggles.get("email_opened")
    assert toggle.override is False
    assert toggle.changed_by.startswith("cli")


def test_events_enable_turns_on_a_type_that_is_off_by_default(runner, app):
    result = runner.invoke(args=["events", "enable", "email_drafted"])

    assert result.exit_code == 0
    assert send(app, webhook("email", "drafted"))["status"] == "queued"


def test_events_reset_drops_the_override(runner, app):
    runner.invoke(args=["events", "disable", "email_opened"])

    result = runner.invoke(args=["events", "reset", "email_opened"])

    assert result.exit_code == 0
    assert services(app).toggles.get("email_opened").source == "default"


@pytest.mark.parametrize("command", ["enable", "disable", "reset"])
def test_a_malformed_event_type_is_a_usage_error(runner, redis, command):
    result = runner.invoke(args=["events", command, "Email-Teleported"])

    assert result.exit_code == 2
    assert "Email-Teleported" in result.output
    assert "not a well-formed event type" in result.output
    assert redis.dbsize() == 0


@pytest.fixture
def relaying_app(make_settings, redis, mparticle) -> Any:
    """The app on the real Redis, its worker sending to the mParticle stand-in."""
    app = create_app(make_settings(MPARTICLE_BASE_URL=mparticle.base_url), redis_client=redis)
    yield app
    client = services(app).extras.get("mparticle")
    if client is not None:
        client.session.close()


def test_an_admin_can_turn_on_email_deferred_and_the_next_one_is_queued_and_relayed(
    relaying_app, mparticle
):
    before = send(relaying_app, webhook("email", "deferred", delivery_id="d-before"))

    result = relaying_app.test_cli_runner().invoke(args=["events", "enable", "email_deferred"])
    payload = webhook("email", "deferred", customer_id="p-deferred", delivery_id="d-after")
    answer = send(relaying_app, payload)
    services(relaying_app).build_worker().run(once=True)

    assert (before["status"], before["reason"]) == ("ignored", "unknown event type")
    assert result.exit_code == 0
    assert "email_deferred: enabled (default off; not in the catalog)" in result.output
    assert answer == {"status": "queued", "event_id": payload["event_id"],
                      "event": "email_deferred"}
    ((batch, event),) = mparticle.accepted_events()
    assert batch["user_identities"]["customer_id"] == "p-deferred"
    assert event["data"]["event_name"] == "email_deferred"
    assert services(relaying_app).find_event(payload["event_id"])["status"] == "relayed"


def test_events_list_shows_a_type_an_admin_added_as_not_known(runner):
    runner.invoke(args=["events", "enable", "email_deferred"])

    table = runner.invoke(args=["events", "list"])
    as_json = runner.invoke(args=["events", "list", "--json"])

    assert table.exit_code == as_json.exit_code == 0
    lines = {line.split()[0]: line.split() for line in table.output.splitlines()[1:]}
    assert table.output.splitlines()[0].split()[-1] == "KNOWN"
    assert lines["email_deferred"][1:5] == ["yes", "off", "override", "no"]
    assert lines["email_opened"][1:5] == ["yes", "on", "default", "yes"]
    rows = {row["name"]: row for row in json.loads(as_json.output)}
    assert (rows["email_deferred"]["known"], rows["email_deferred"]["enabled"]) == (False, True)
    assert rows["email_opened"]["known"] is True


def test_an_unknown_type_stays_ignored_until_enabled_and_is_ignored_again_once_disabled(
    runner, app
):
    ignored_at_first = send(app, webhook("email", "deferred", delivery_id="d-1"))
    runner.invoke(args=["events", "enable", "email_deferred"])
    queued = send(app, webhook("email", "deferred", delivery_id="d-2"))

    disabled = runner.invoke(args=["events", "disable", "email_deferred"])
    ignored_when_off = send(app, webhook("email", "deferred", delivery_id="d-3"))
    reset = runner.invoke(args=["events", "reset", "email_deferred"])
    ignored_after_reset = send(app, webhook("email", "deferred", delivery_id="d-4"))

    assert queued["status"] == "queued"
    assert disabled.exit_code == 0
    assert "email_deferred: disabled (default off; not in the catalog)" in disabled.output
    assert reset.exit_code == 0
    assert "email_deferred: back to the default (off; not in the catalog)" in reset.output
    for answer in (ignored_at_first, ignored_when_off, ignored_after_reset):
        assert (answer["status"], answer["reason"]) == ("ignored", "unknown event type")


@pytest.mark.parametrize(
    "name", ["email", "EMAIL_DEFERRED", "email__deferred", "email_deferred_", "email_2fa",
             "émail_deferred", "email_" + "d" * 60],
)
def test_a_malformed_name_is_refused_with_exit_2_by_every_events_command(runner, redis, name):
    for command in ("enable", "disable", "reset"):
        result = runner.invoke(args=["events", command, name])
        assert result.exit_code == 2, (command, result.output)
        assert "not a well-formed event type" in result.output
    assert redis.dbsize() == 0


# -- dedup -----------------------------------------------------------------------------


def test_dedup_show_tells_the_story_of_a_queued_event(runner, app):
    payload = webhook("email", "opened")
    send(app, payload)

    result = runner.invoke(args=["dedup", "show", payload["event_id"]])

    assert result.exit_code == 0
    assert payload["event_id"] in result.output
    assert "status     queued" in result.output
    assert "email_opened" in result.output
    assert payload["data"]["delivery_id"] in result.output


def test_dedup_show_as_json_parses(runner, app):
    payload = webhook("email", "opened")
    send(app, payload)

    result = runner.invoke(args=["dedup", "show", "--json", payload["event_id"]])

    assert result.exit_code == 0
    story = json.loads(result.output)
    assert (story["event_id"], story["seen"], story["status"]) == (
        payload["event_id"], True, "queued"
    )


def test_dedup_show_of_an_unknown_event_is_a_reported_problem(runner):
    result = runner.invoke(args=["dedup", "show", "01NEVERSEEN"])

    assert result.exit_code == 1
    assert "not seen" in result.output


def test_dedup_show_as_json_of_an_unknown_event_still_parses(runner):
    result = runner.invoke(args=["dedup", "show", "--json", "01NEVERSEEN"])

    assert result.exit_code == 1
    assert json.loads(result.output) == {"event_id": "01NEVERSEEN", "seen": False}


def test_dedup_first_lists_the_first_event_of_each_type_of_a_delivery(runner, app):
    opened = webhook("email", "opened", delivery_id="delivery-3")
    send(app, opened)

    result = runner.invoke(args=["dedup", "first", "delivery-3"])
    as_json = runner.invoke(args=["dedup", "first", "--json", "delivery-3"])

    assert result.exit_code == 0
    assert "email_opened" in result.output
    assert opened["event_id"] in result.output
    assert json.loads(as_json.output)["flags"] == {"email_opened": opened["event_id"]}


def test_dedup_first_of_an_unknown_delivery_is_a_reported_problem(runner):
    result = runner.invoke(args=["dedup", "first", "never-delivered"])

    assert result.exit_code == 1
    assert "no first-occurrence flags" in result.output


@pytest.mark.parametrize("delivery_id", ["delivery-4", None])
def test_dedup_forget_lets_the_next_copy_of_an_event_be_queued_again(runner, app, delivery_id):
    payload = webhook("email", "opened", delivery_id=delivery_id)
    send(app, payload)

    result = runner.invoke(args=["dedup", "forget", payload["event_id"]])

    assert result.exit_code == 0
    assert send(app, payload)["status"] == "queued"
    assert queue_length(app) == 2


def test_dedup_forget_of_an_unknown_event_is_a_reported_problem(runner):
    result = runner.invoke(args=["dedup", "forget", "01NEVERSEEN"])

    assert result.exit_code == 1


# -- dead letters ----------------------------------------------------------------------


def test_dlq_list_shows_each_dead_letter_with_its_reason(runner, app):
    payload = dead_letter_an_event(app)
    send(app, body=b"{not json")

    result = runner.invoke(args=["dlq", "list"])
    as_json = runner.invoke(args=["dlq", "list", "--json"])

    assert result.exit_code == 0
    assert "2 dead letters" in result.output
    assert payload["event_id"] in result.output
    assert "no customer_id or email identifies the person" in result.output
    assert "body is not JSON" in result.output
    letters = json.loads(as_json.output)
    assert [letter["kind"] for letter in letters] == ["quarantined", "event"]


def test_dlq_list_shows_the_dead_letters_of_the_direction_asked_for(make_settings, redis,
                                                                   mparticle, customerio):
    app = _both_directions(make_settings, redis, mparticle, customerio)
    send(app, body=b'{"event_id": 1}')
    quarantined = app.test_client().post("/webhooks/mparticle", data=b"{not json",
                                         headers={"Authorization": "Bearer x"})
    letter_id = quarantined.get_json()["dead_letter_id"]
    runner = app.test_cli_runner()

    theirs = runner.invoke(args=["dlq", "list", "--direction", "to_customerio"])
    as_json = runner.invoke(args=["dlq", "list", "--direction", "to_customerio", "--json"])
    default = runner.invoke(args=["dlq", "list", "--json"])

    assert quarantined.status_code == 202
    assert theirs.exit_code == 0, theirs.output
    assert "1 dead letters (to_customerio)" in theirs.output
    assert letter_id in theirs.output and "body is not JSON" in theirs.output
    (letter,) = json.loads(as_json.output)
    assert (letter["id"], letter["direction"], letter["body"]) == (
        letter_id, "to_customerio", "{not json")
    assert [(item["direction"], item["body"]) for item in json.loads(default.output)] == [
        ("to_mparticle", '{"event_id": 1}')]


def test_dlq_list_of_an_unknown_direction_is_a_usage_error(runner, app):
    result = runner.invoke(args=["dlq", "list", "--direction", "to_nowhere"])

    assert result.exit_code == 2
    assert "to_mparticle" in result.output and "to_customerio" in result.output


def test_dlq_replay_of_an_id_queues_that_letter_again(runner, app):
    dead_letter_an_event(app)
    (letter_id,) = dead_letter_ids(app)

    result = runner.invoke(args=["dlq", "replay", letter_id])

    assert result.exit_code == 0
    assert "replayed 1" in result.output
    assert dead_letter_ids(app) == []
    assert queue_length(app) == 1


def test_dlq_replay_all_queues_every_letter_again(runner, app):
    dead_letter_an_event(app)
    dead_letter_an_event(app)

    result = runner.invoke(args=["dlq", "replay", "--all"])

    assert result.exit_code == 0
    assert "replayed 2" in result.output
    assert queue_length(app) == 2


@pytest.mark.parametrize("args", [[], ["--all", "1-0"]], ids=["neither", "both"])
def test_dlq_replay_needs_ids_or_all_but_not_both(runner, app, args):
    dead_letter_an_event(app)

    result = runner.invoke(args=["dlq", "replay", *args])

    assert result.exit_code == 2
    assert len(dead_letter_ids(app)) == 1


@pytest.mark.parametrize("letter_id", ["1-0", "not-an-id"])
def test_dlq_replay_of_an_unknown_id_is_a_reported_problem(runner, app, letter_id):
    result = runner.invoke(args=["dlq", "replay", letter_id])

    assert result.exit_code == 1
    assert f"not found: {letter_id}" in result.output


def test_dlq_replay_of_a_letter_that_is_still_not_a_webhook_keeps_it(runner, app):
    send(app, body=b"{not json")
    (letter_id,) = dead_letter_ids(app)

    result = runner.invoke(args=["dlq", "replay", letter_id])

    assert result.exit_code == 1
    assert "still not a valid webhook" in result.output
    assert dead_letter_ids(app) == [letter_id]


# -- check -----------------------------------------------------------------------------


def _app_for(make_settings: Any, redis: Any, **env: str) -> Flask:
    return create_app(make_settings(**env), redis_client=redis, role="cli")


def test_check_passes_when_mparticle_accepts_the_credentials(make_settings, redis, mparticle):
    app = _app_for(make_settings, redis, MPARTICLE_BASE_URL=mparticle.base_url)

    result = app.test_cli_runner().invoke(args=["check"])

    assert result.exit_code == 0
    assert "accepted" in result.output
    assert [request.body for request in mparticle.requests] == [b"[]"]  # no events sent


def test_check_fails_when_mparticle_refuses_the_credentials(make_settings, redis, mparticle):
    app = _app_for(make_settings, redis, MPARTICLE_BASE_URL=mparticle.base_url,
                   MPARTICLE_API_SECRET=STANDIN_SECRET + "-wrong")

    result = app.test_cli_runner().invoke(args=["check"])

    assert result.exit_code == 1
    assert "refused the credentials (HTTP 401)" in result.output
    assert STANDIN_SECRET not in result.output


def test_check_fails_when_mparticle_cannot_be_reached(make_settings, redis):
    app = _app_for(make_settings, redis, MPARTICLE_BASE_URL="http://127.0.0.1:9/v2")

    result = app.test_cli_runner().invoke(args=["check"])

    assert result.exit_code == 1
    assert "could not check the credentials" in result.output


def _both_directions(make_settings: Any, redis: Any, mparticle: Any, customerio: Any,
                     **env: str) -> Flask:
    return _app_for(make_settings, redis, **{
        "MPARTICLE_BASE_URL": mparticle.base_url, "MPARTICLE_WEBHOOK_AUTHORIZATION": "Bearer x",
        "CUSTOMERIO_SITE_ID": "site", "CUSTOMERIO_API_KEY": "track-key",
        "CUSTOMERIO_BASE_URL": customerio.base_url, **env})


@pytest.fixture
def customerio() -> Any:
    from tests.helpers.customerio_standin import CustomerIOStandIn

    with CustomerIOStandIn(site_id="site", api_key="track-key") as server:
        yield server


def test_check_tests_customerios_credentials_and_region_too(make_settings, redis, mparticle,
                                                            customerio):
    app = _both_directions(make_settings, redis, mparticle, customerio)

    result = app.test_cli_runner().invoke(args=["check"])

    assert result.exit_code == 0, result.output
    assert "Customer.io accepted the Track API credentials" in result.output
    assert "(region us)" in result.output


def test_check_names_both_regions_when_the_workspace_is_elsewhere(make_settings, redis,
                                                                  mparticle, customerio):
    customerio.set_region("eu")
    app = _both_directions(make_settings, redis, mparticle, customerio)

    result = app.test_cli_runner().invoke(args=["check"])

    assert result.exit_code == 1
    assert "region 'eu'" in result.output and "CUSTOMERIO_REGION is 'us'" in result.output


def test_check_fails_when_customerio_refuses_the_track_api_key(make_settings, redis, mparticle,
                                                               customerio):
    app = _both_directions(make_settings, redis, mparticle, customerio,
                           CUSTOMERIO_API_KEY="wrong-key")

    result = app.test_cli_runner().invoke(args=["check"])

    assert result.exit_code == 1
    assert "Customer.io refused the Track API credentials (HTTP 401)" in result.output
    assert "mParticle accepted the credentials" in result.output  # each direction told
