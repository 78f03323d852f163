"""Admin API under /admin, behind ``Authorization: Bearer $RELAY_ADMIN_TOKEN``.

Off (404) when no token is configured; 401 without the right token; 429 for a client
that sent too many wrong ones (:mod:`app.admin.guard`). Thin over the same functions the
CLI uses.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, request
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from app.admin import guard
from app.errors import json_response
from app.services import DIRECTIONS, services
from app.store.toggles import NAME_RULE, is_well_formed
from app.support import dead_letters as dead_letter_replay

blueprint = Blueprint("admin_api", __name__, url_prefix="/admin")
# For the whole app, console and unmatched /admin URLs included.
blueprint.after_app_request(guard.keep_admin_answers_private)


@blueprint.before_request
def require_admin_token() -> Response | None:
    """404 when the admin API is off; 429 while this client is locked out (even with the
    right token); 401 unless the bearer token matches."""
    token = services(current_app).settings.secrets.admin_token
    if not token:
        abort(404)
    lockout = guard.lockout_of_this_client()
    if lockout is not None:
        return _too_many_wrong_tokens(lockout.seconds_left)
    given = _bearer_token()
    if given is None:
        return _unauthorized()  # no token offered: nothing guessed, nothing counted
    if not guard.token_matches(given, token):
        guard.note_wrong_token("admin API")
        return _unauthorized()
    return None


def _bearer_token() -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None without one."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _unauthorized() -> Response:
    response = json_response(
        {"error": "unauthorized", "details": "send Authorization: Bearer <RELAY_ADMIN_TOKEN>"},
        401,
    )
    response.headers["WWW-Authenticate"] = 'Bearer realm="cio-mparticle-relay"'
    return response


def _too_many_wrong_tokens(seconds_left: int) -> Response:
    response = json_response(
        {"error": "too many requests",
         "details": f"too many wrong admin tokens from this address: retry in {seconds_left} s"},
        429,
    )
    response.headers["Retry-After"] = str(seconds_left)
    return response


@blueprint.get("/dedup/<path:event_id>")
def event_story(event_id: str) -> Response:
    """Seen?, when, TTL left, and where the event is now."""
    relay = services(current_app)
    story = relay.find_event(event_id)
    if story is None:
        return json_response(
            {"error": "not found", "details": "this event_id was never accepted, or its mark "
             "has expired", "event_id": event_id, "seen": False}, 404
        )
    return json_response(story, 200)


@blueprint.get("/audiences/<path:person>")
def person_audiences(person: str) -> Response:
    """A person's audiences (by customer id or email) and the last change per audience."""
    found = services(current_app).person_audiences(person)
    if found is None:
        return json_response({"error": "not found", "details": "no audience change is known "
                              "for this customer id or email", "person": person}, 404)
    return json_response(found, 200)


@blueprint.get("/first/<path:delivery_id>")
def delivery_flags(delivery_id: str) -> Response:
    """The first-occurrence flags set for a delivery."""
    relay = services(current_app)
    return json_response(relay.first_flags(delivery_id), 200)


@blueprint.get("/events")
def list_event_types() -> Response:
    """Every event type: enabled?, the file's default, the runtime override, and whether
    the catalog knows it (``known``: false for a type an admin added)."""
    rows = [toggle.as_dict() for toggle in services(current_app).toggles.list()]
    return json_response({"events": rows}, 200)


def _malformed(names: list[str]) -> Response:
    return json_response(
        {"error": "malformed event type",
         "details": {name: [f"not a well-formed event type: must be {NAME_RULE}"]
                     for name in names}}, 400
    )


class ToggleChangeSchema(Schema):
    """``{"events": {"email_opened": false, "push_sent": null}, "by": "alice"}``;
    null drops the override. A flat ``{"email_opened": false}`` is accepted too. Any
    well-formed ``<object_type>_<metric>`` may be named, in the catalog or not."""

    events = fields.Dict(
        keys=fields.String(),
        values=fields.Boolean(allow_none=True, truthy={True}, falsy={False}),
        required=True,
    )
    by = fields.String(load_default="admin-api")


@blueprint.put("/events")
def change_event_types() -> Response:
    """Turn event types on or off for every process (null: back to the default)."""
    payload = request.get_json(silent=True)
    if isinstance(payload, dict) and "events" not in payload:
        payload = {"events": payload}
    try:
        change = ToggleChangeSchema().load(payload if isinstance(payload, dict) else {})
    except ValidationError as exc:
        return json_response({"error": "invalid request", "details": exc.normalized_messages()},
                             400)
    toggles = services(current_app).toggles
    malformed = [name for name in change["events"]
                 if not toggles.is_known(name) and not is_well_formed(name)]
    if malformed:
        return _malformed(malformed)
    actor = change["by"]
    for name, enabled in change["events"].items():
        if enabled is None:
            toggles.reset(name, actor=actor)
        else:
            toggles.set(name, enabled, actor=actor)
    return list_event_types()


@blueprint.get("/queue")
def queue_state() -> Response:
    """Length, pending, oldest age and dead letters: of Customer.io → mParticle at the top
    (as before there were two directions), and of each direction that is on under
    ``directions``."""
    relay = services(current_app)
    directions = {name: relay.direction_stats(name) for name in relay.directions_on()}
    return json_response({**directions[DIRECTIONS[0]], "directions": directions}, 200)


class DeadLetterListSchema(Schema):
    """``?direction=to_mparticle`` (the default) or ``to_customerio``; ``count`` is read
    on its own, as before."""

    class Meta:
        unknown = EXCLUDE

    direction = fields.String(load_default=DIRECTIONS[0], validate=validate.OneOf(DIRECTIONS))


@blueprint.get("/dead-letters")
def dead_letters() -> Response:
    """One direction's newest dead letters, with reason, raw body and direction."""
    try:
        query = DeadLetterListSchema().load(request.args)
    except ValidationError as exc:
        return json_response({"error": "invalid request", "details": exc.normalized_messages()},
                             400)
    relay = services(current_app)
    count = request.args.get("count", default=100, type=int)
    letters = relay.list_dead_letters(query["direction"], max(1, min(count, 1000)))
    return json_response({"dead_letters": letters}, 200)


class ReplaySchema(Schema):
    ids = fields.List(fields.String(), load_default=None)
    all = fields.Boolean(load_default=False)


@blueprint.post("/dead-letters/replay")
def replay_dead_letters() -> Response:
    """Queue dead letters again: ``{"ids": [...]}`` or ``{"all": true}``."""
    try:
        body = ReplaySchema().load(request.get_json(silent=True) or {})
    except ValidationError as exc:
        return json_response({"error": "invalid request", "details": exc.normalized_messages()},
                             400)
    if not body["all"] and not body["ids"]:
        return json_response(
            {"error": "invalid request", "details": 'give "ids": [...] or "all": true'}, 400
        )
    relay = services(current_app)
    report = dead_letter_replay.replay(relay, None if body["all"] else body["ids"])
    return json_response(report.as_dict(), 200)
