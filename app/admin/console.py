"""The web console under /admin/: server-rendered pages for support and admins.

Signed in with the admin token (a signed session cookie that carries the id of a
sign-in kept in Redis, so that signing out ends it for every copy of the cookie), wrong
tokens throttled like the API's (:mod:`app.admin.guard`), every form CSRF-checked, no
JavaScript. Thin over the same functions as the JSON API and the CLI: toggles,
stories, dead letters, queue stats and what the workers last saw of their destination.
The queue and dead-letter pages have a section per direction: Customer.io → mParticle,
and mParticle → Customer.io when that direction is on (or still holds something).

The JSON API owns ``/admin/events``, ``/admin/queue``, ``/admin/dead-letters``…, so the
console's pages live under ``/admin/console/``; only the entry ``/admin/`` is shared.
Off (404) when ``RELAY_ADMIN_TOKEN`` is unset, like the API.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from jinja2 import Undefined
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from app.admin import guard
from app.services import DIRECTIONS, Services, services
from app.store import dead_letters as letters_store
from app.store import relay_state
from app.store.admin_guard import ConsoleSessions
from app.store.toggles import MAX_NAME_LENGTH, NAME_RULE, is_well_formed
from app.support import dead_letters as dead_letter_replay
from app.support.dead_letters import ReplayReport
from app.to_mparticle import catalog

logger = logging.getLogger(__name__)

blueprint = Blueprint("admin_console", __name__, url_prefix="/admin")

CONSOLE = "/admin/console"
CONSOLE_PATH = CONSOLE + "/"
# Who a change made here is recorded as, beside the CLI's "cli:<user>" and the API's "by".
ACTOR = "console"
# A sign-in lasts a working day from the moment it is made: the cookie's signature and
# the sign-in's key in Redis both expire then.
SESSION_LIFETIME = timedelta(hours=8)
# The session cookie's field that holds the sign-in's id (ConsoleSessions).
SESSION_ID = "sign_in"
# How many dead letters the list shows, newest first (the CLI and API can page further).
DEAD_LETTERS_SHOWN = 100
# Endpoints a visitor may reach before signing in.
_PUBLIC = frozenset({"admin_console.entry", "admin_console.sign_in"})

# Each direction as people read it, and where it sends to.
DIRECTION_TITLES = {"to_mparticle": "Customer.io → mParticle",
                    "to_customerio": "mParticle → Customer.io",
                    "to_customerio_audiences": "mParticle audiences → Customer.io"}
DESTINATIONS = {"to_mparticle": "mParticle", "to_customerio": "Customer.io",
                "to_customerio_audiences": "Customer.io"}

_MPARTICLE_ANSWERS = {
    202: "accepted",
    400: "refused a batch",
    401: "refused the credentials",
    403: "refused the credentials",
    429: "rate limited",
}
_CUSTOMERIO_ANSWERS = {
    200: "accepted",
    207: "refused some items",
    400: "refused a request",
    401: "refused the credentials",
    403: "refused the credentials",
    429: "rate limited",
}


class _SessionOverHttpsIsSecure(SecureCookieSessionInterface):
    """Mark the session cookie Secure whenever the console is served over HTTPS.

    Behind a TLS proxy, gunicorn takes the scheme from X-Forwarded-Proto of the
    addresses in FORWARDED_ALLOW_IPS. Plain HTTP (``make run`` on a laptop) still works.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or super().get_cookie_secure(app)


def init_console(app: Flask) -> None:
    """Configure sessions and CSRF for the console and register its blueprint."""
    token = services(app).settings.secrets.admin_token
    if token:
        # Every web process derives the same key from the token, with no new setting;
        # changing the token signs everyone out.
        app.config["SECRET_KEY"] = hashlib.sha256(b"cio-relay-console:" + token.encode()).digest()
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_PATH="/admin",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        # Only the console's forms are checked (in require_sign_in): the webhook and the
        # JSON API are not forms and cannot send a CSRF token.
        WTF_CSRF_CHECK_DEFAULT=False,
        # A form's token is good for as long as the sign-in, not one hour of it.
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.session_interface = _SessionOverHttpsIsSecure()
    CSRFProtect(app)
    app.register_blueprint(blueprint)


# -- guard, headers, errors -----------------------------------------------------------


@blueprint.before_request
def require_sign_in() -> Response | None:
    """404 while the console is off; sign-in for every page but the entry; CSRF on POST."""
    if not services(current_app).settings.secrets.admin_token:
        abort(404)
    if request.endpoint not in _PUBLIC and not _signed_in():
        if request.method == "GET":
            return redirect(url_for(".sign_in", next=request.full_path.rstrip("?")))
        flash("Your sign-in has ended: sign in again, then repeat what you were doing.", "error")
        return redirect(url_for(".sign_in"), 303)
    if request.method == "POST":
        current_app.extensions["csrf"].protect()  # CSRFError (400) without a valid token
    return None


@blueprint.after_request
def protect_pages(response: Response) -> Response:
    """Admin data is neither cached, framed, nor allowed to load anything but our CSS."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return response


@blueprint.errorhandler(CSRFError)
def csrf_refused(exc: CSRFError) -> tuple[str, int]:
    return _error_page(
        400, "Form expired or not from this console",
        f"{exc.description} Go back, reload the page and try again.",
    )


@blueprint.errorhandler(HTTPException)
def error_page(exc: HTTPException) -> Response:
    """An HTTP error as a console page (also for console URLs that match no page)."""
    return protect_pages(make_response(_error_page(exc.code or 500, exc.name,
                                                   exc.description or "")))


@blueprint.errorhandler(RedisError)
def redis_unavailable(exc: RedisError) -> tuple[str, int]:
    logger.error("console: redis unavailable: %s", exc.__class__.__name__)
    return _error_page(503, "Redis cannot be reached",
                       "The relay's Redis did not answer. Try again in a moment.")


@blueprint.errorhandler(Exception)
def unexpected_error(exc: Exception) -> tuple[str, int]:
    logger.exception("console: unexpected error")
    return _error_page(500, "Something went wrong",
                       "The error is in the relay's log. Try again, or use the CLI.")


def _error_page(status: int, title: str, message: str) -> tuple[str, int]:
    signed_in = bool(services(current_app).settings.secrets.admin_token) and _shows_signed_in()
    return render_template("admin/error.html", status=status, title=title, message=message,
                           signed_in=signed_in), status


# -- the sign-in kept in Redis ----------------------------------------------------------


def _signed_in() -> bool:
    """Whether this browser's sign-in is live on the server; Redis is asked once a request.

    The cookie alone is not enough: it is signed, so it cannot be forged, but a copy of it
    would outlive a sign-out. A cookie whose sign-in has ended is cleared.
    """
    if "console_signed_in" not in g:
        g.console_signed_in = False  # until Redis answers: an error page never asks twice
        session_id = session.get(SESSION_ID)
        live = isinstance(session_id, str) and _sessions().is_live(session_id)
        if session_id is not None and not live:
            session.clear()
        g.console_signed_in = live
    return g.console_signed_in


def _shows_signed_in() -> bool:
    """For a page's navigation: like :func:`_signed_in`, but never raises (Redis down)."""
    try:
        return _signed_in()
    except RedisError:
        return False


@blueprint.context_processor
def show_navigation_only_to_a_live_sign_in() -> dict[str, bool]:
    """The navigation and the sign-out button, for templates: never for an ended sign-in."""
    return {"signed_in": _shows_signed_in()}


@blueprint.context_processor
def name_the_directions() -> dict[str, dict[str, str]]:
    """How templates name a direction ("Customer.io → mParticle") and its destination."""
    return {"direction_titles": DIRECTION_TITLES, "destinations": DESTINATIONS}


def _start_sign_in() -> None:
    """A fresh session with a new sign-in: nothing from before it carries over."""
    _end_sign_in()  # a sign-in over a live one ends the old one
    session[SESSION_ID] = _sessions().open(
        lifetime_seconds=int(SESSION_LIFETIME.total_seconds()))
    session.permanent = True
    g.console_signed_in = True


def _end_sign_in() -> None:
    """End this browser's sign-in on the server, for every copy of its cookie."""
    session_id = session.get(SESSION_ID)
    if isinstance(session_id, str):
        _sessions().close(session_id)
    session.clear()
    g.console_signed_in = False


def _sessions() -> ConsoleSessions:
    return services(current_app).console_sessions


# -- entry, sign-in, sign-out -------------------------------------------------------


@blueprint.get("/")
def entry() -> Response:
    """The console's home when signed in, else its sign-in page."""
    return redirect(url_for(".event_types" if _signed_in() else ".sign_in"))


@blueprint.route("/console/login", methods=["GET", "POST"])
def sign_in() -> Response | tuple[str, int]:
    """Ask for the admin token; a match signs this browser in, unless it is locked out."""
    next_page = _safe_next(request.values.get("next", ""))
    if request.method == "GET":
        if _signed_in():
            return redirect(next_page or url_for(".event_types"))
        return render_template("admin/login.html", next=next_page), 200
    lockout = guard.lockout_of_this_client()
    if lockout is not None:
        return _locked_out_page(next_page, lockout.seconds_left)
    token = services(current_app).settings.secrets.admin_token
    if not guard.token_matches(request.form.get("token", "").strip(), token):
        guard.note_wrong_token("console sign-in")
        return render_template(
            "admin/login.html", next=next_page,
            error="That is not the admin token (RELAY_ADMIN_TOKEN). Check it and try again.",
        ), 401
    _start_sign_in()
    logger.info("console sign-in", extra={"remote_addr": guard.client_address()})
    flash("Signed in.", "success")
    return redirect(next_page or url_for(".event_types"), 303)


def _locked_out_page(next_page: str | None, seconds_left: int) -> Response:
    page = make_response(render_template(
        "admin/login.html", next=next_page,
        error=f"Too many wrong tokens were tried from your address: sign-in is refused for "
              f"{seconds_left} s more, even with the right token.",
    ), 429)
    page.headers["Retry-After"] = str(seconds_left)
    return page


@blueprint.post("/console/logout")
def sign_out() -> Response:
    """End this browser's sign-in, on the server too: a copy of the cookie stops working."""
    _end_sign_in()
    flash("Signed out.", "success")
    return redirect(url_for(".sign_in"), 303)


def _safe_next(target: str) -> str | None:
    """A console path to return to after sign-in; never another site, never a bad header.

    A control character (CR, LF...) cannot go in a Location header: such a target is
    ignored, not answered with a 500.
    """
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target or not parts.path.startswith(CONSOLE + "/"):
        return None
    return target


# -- event types ----------------------------------------------------------------------


# The section of the event-types page for the types an admin added (never a channel:
# catalogue channels are words without a hyphen).
ADDED_SECTION = ("added-by-admins", "Not in the catalog")


@blueprint.get("/console/events")
def event_types() -> str:
    """Every event type: forwarded?, the file's default, the override and who set it; and
    those an admin added that the catalog does not list, in a section of their own."""
    toggles = services(current_app).toggles.list()
    channels: dict[str, list[Any]] = {}
    added = []
    for toggle in toggles:
        event_type = catalog.CATALOG.get(toggle.name)
        if event_type is None:
            added.append(toggle)
        else:
            channels.setdefault(event_type.object_type, []).append(toggle)
    sections = [(channel, catalog.CHANNEL_TITLES.get(channel, channel), rows)
                for channel, rows in channels.items()]
    if added:
        sections.append((*ADDED_SECTION, added))
    return render_template(
        "admin/events.html",
        channels=sections,
        forwarded=sum(toggle.enabled for toggle in toggles),
        overridden=sum(toggle.override is not None for toggle in toggles),
        total=len(toggles),
        name_rule=NAME_RULE,
        max_name_length=MAX_NAME_LENGTH,
        added_section=ADDED_SECTION[0],
    )


@blueprint.post("/console/events")
def add_event_type() -> Response:
    """Turn on an event type by name: one the catalog does not list (or one it does)."""
    return _change_event_type(request.form.get("name", "").strip(), "on")


@blueprint.post("/console/events/<name>")
def change_event_type(name: str) -> Response:
    """Turn one event type on or off for every process, or back to its default."""
    return _change_event_type(name, request.form.get("action"))


def _change_event_type(name: str, action: str | None) -> Response:
    toggles = services(current_app).toggles
    if not toggles.is_known(name) and not is_well_formed(name):
        flash(f"Nothing changed: “{name[:80]}” is not a well-formed event type: "
              f"it must be {NAME_RULE}.", "error")
        return redirect(url_for(".event_types"), 303)
    unknown = "" if toggles.is_known(name) else " (not in the catalog)"
    if action == "reset":
        toggle = toggles.reset(name, actor=ACTOR)
        flash(f"{name}{unknown} is back to the file's default: "
              f"{'forwarded' if toggle.enabled else 'not forwarded'}.", "success")
    elif action in ("on", "off"):
        toggles.set(name, action == "on", actor=ACTOR)
        if action == "on":
            flash(f"{name}{unknown} turned on: these webhooks are queued for mParticle.",
                  "success")
        else:
            flash(f"{name}{unknown} turned off: these webhooks are now answered “ignored”.",
                  "success")
    else:
        abort(400, description='The form must say action = "on", "off" or "reset".')
    return redirect(url_for(".event_types", _anchor=name), 303)


# -- lookup ---------------------------------------------------------------------------


@blueprint.get("/console/lookup")
def lookup() -> str:
    """An event's story by its event id, else a delivery's first-occurrence flags, else a
    person's audiences (by customer id or email)."""
    query = request.args.get("q", "").strip()
    story = flags = person = None
    if query:
        relay = services(current_app)
        story = relay.find_event(query)
        if story is None:
            found = relay.first_flags(query)
            flags = found if found["flags"] else None
        if story is None and flags is None:
            person = relay.person_audiences(query)
    return render_template("admin/lookup.html", q=query, story=story, flags=flags,
                           person=person)


# -- queue ----------------------------------------------------------------------------


@blueprint.get("/console/queue")
def queue() -> str:
    """Per direction: queue length, pending, oldest age, throughput and its destination's
    health."""
    relay = services(current_app)
    on = relay.directions_on()
    sections = []
    for name in DIRECTIONS:
        stats = relay.direction_stats(name)
        if name in on or stats["length"] or stats["pending"] or stats["dead_letters"]:
            sections.append(_queue_section(relay, name, stats, on=name in on))
    return render_template("admin/queue.html", sections=sections)


def _queue_section(relay: Services, name: str, stats: dict[str, Any], *, on: bool
                   ) -> dict[str, Any]:
    """What the queue page shows of one direction."""
    keys = relay.direction_keys()[name]
    # Throughput is counted in the direction's own keys; the destination's last answer
    # is read from the keys its workers note it in.
    state = relay_state.read_relay_state(relay.redis, keys)
    if name == DIRECTIONS[0]:
        health = {"last_status": state["mparticle_last_status"],
                  "last_at": state["mparticle_last_at"],
                  "rate_limit_percent_used": state["rate_limit_percent_used"],
                  "credentials": state["credentials"]}
        answers = _MPARTICLE_ANSWERS
    else:
        health = _customerio_health(relay)
        answers = _CUSTOMERIO_ANSWERS
    health["answer"] = _answer(health["last_status"], answers)
    return {"name": name, "on": on, "stats": stats, "state": state, "health": health,
            "chart": _bars(state["relayed_per_minute"])}


def _customerio_health(relay: Services) -> dict[str, Any]:
    """Customer.io's last answer as the mParticle → Customer.io workers noted it."""
    state_keys = relay.to_customerio_state_keys()
    pipe = relay.redis.pipeline(transaction=False)
    pipe.hgetall(state_keys.health)
    pipe.get(state_keys.auth)
    health, auth = pipe.execute()
    return {
        "last_status": int(health["last_status"]) if health.get("last_status") else None,
        "last_at": float(health["last_at"]) if health.get("last_at") else None,
        "rate_limit_percent_used": (float(health["rate_limit_percent"])
                                    if health.get("rate_limit_percent") else None),
        "credentials": f"refused ({auth})" if auth else "ok",
    }


def _answer(status: int | None, answers: dict[int, str]) -> str:
    if status is None:
        return "no request yet"
    if status in answers:
        return answers[status]
    return "server error, retrying" if status >= 500 else "unexpected answer"


def _bars(per_minute: list[int]) -> dict[str, Any]:
    """An inline SVG bar chart's geometry: one bar per minute, oldest first."""
    height, width = 60, 6
    peak = max(per_minute, default=0)
    bars = []
    for index, count in enumerate(per_minute):
        bar = round(height * count / peak) if peak else 0
        bars.append({"x": index * (width + 2), "y": height - bar, "height": bar,
                     "width": width, "count": count, "minutes_ago": len(per_minute) - 1 - index})
    return {"bars": bars, "peak": peak, "height": height,
            "width": len(per_minute) * (width + 2)}


# -- dead letters ---------------------------------------------------------------------


@blueprint.get("/console/dead-letters")
def dead_letters() -> str:
    """Per direction, the newest dead letters with their reasons."""
    relay = services(current_app)
    on = relay.directions_on()
    sections = []
    for name, keys in relay.direction_keys().items():
        total = relay.redis.xlen(keys.dead_letters)
        if name not in on and not total:
            continue
        letters = relay.list_dead_letters(name, DEAD_LETTERS_SHOWN) if total else []
        for letter in letters:
            _name_the_event(letter)
        sections.append({"name": name, "on": name in on, "letters": letters, "total": total})
    return render_template("admin/dead_letters.html", sections=sections,
                           total=sum(section["total"] for section in sections))


@blueprint.get("/console/dead-letters/<letter_id>")
def dead_letter(letter_id: str) -> str:
    """One dead letter of either direction, its reason and details, and its raw body.

    ``?direction=`` says whose stream holds it (an id alone may be in both: each stream
    numbers its entries by the millisecond); without it, the first stream that has it.
    """
    relay = services(current_app)
    letter = None
    for name in _directions_to_search(request.args.get("direction")):
        found = letters_store.find_dead_letter(relay.redis, relay.direction_keys()[name],
                                               letter_id)
        if found is not None:
            letter = {**found, "direction": name}
            break
    if letter is None:
        abort(404, description=f"There is no dead letter {letter_id}: it may have been "
                               "replayed already.")
    _name_the_event(letter)
    return render_template("admin/dead_letter.html", letter=letter,
                           problems=_problems(letter.get("details")))


@blueprint.post("/console/dead-letters/<letter_id>/replay")
def replay_dead_letter(letter_id: str) -> Response:
    """Queue one dead letter again: from its direction's stream (the form names it), else
    from whichever has it."""
    relay = services(current_app)
    direction = request.form.get("direction")
    if direction is None:
        report = dead_letter_replay.replay(relay, [letter_id])
    else:
        (name,) = _directions_to_search(direction)
        keys = relay.direction_keys()[name]
        route = next(route for source, route in relay.replay_sources() if source == keys)
        report = dead_letter_replay.replay_dead_letters(relay.redis, keys, route, [letter_id])
    _flash_replay(report)
    logger.info("console replayed dead letters",
                extra={"replayed": report.replayed, "direction": direction})
    return redirect(url_for(".dead_letters"), 303)


def _directions_to_search(direction: str | None) -> tuple[str, ...]:
    """The one direction asked for (400 if it is none), or every direction, in order."""
    if direction is None:
        return DIRECTIONS
    if direction not in DIRECTIONS:
        abort(400, description=f"The direction must be one of {', '.join(DIRECTIONS)}.")
    return (direction,)


def _name_the_event(letter: dict[str, Any]) -> None:
    """Give a letter of a Customer.io webhook its event_id, read from its raw body."""
    if letter["direction"] == DIRECTIONS[0]:
        letter.setdefault("event_id", _event_id_in(letter.get("body", "")))


@blueprint.post("/console/dead-letters/replay-all")
def replay_all_dead_letters() -> Response:
    """Queue every dead letter again, once the box saying so is ticked."""
    if request.form.get("confirm") != "yes":
        flash("Nothing was replayed: tick the box to confirm replaying every dead letter.",
              "error")
        return redirect(url_for(".dead_letters"), 303)
    relay = services(current_app)
    report = dead_letter_replay.replay(relay, None)
    _flash_replay(report)
    logger.info("console replayed every dead letter", extra={"replayed": len(report.replayed)})
    return redirect(url_for(".dead_letters"), 303)


def _flash_replay(report: ReplayReport) -> None:
    if report.replayed:
        count = len(report.replayed)
        flash(f"Queued again: {count} dead letter{'s' if count != 1 else ''} "
              f"({', '.join(report.replayed[:5])}{'…' if count > 5 else ''}).", "success")
    for letter_id, problem in report.still_invalid.items():
        flash(f"Kept {letter_id}: it is still not a usable webhook ({problem}).", "error")
    for letter_id in report.already_replayed:
        flash(f"{letter_id} was replayed already (by another replay): not queued twice.",
              "info")
    for letter_id in report.not_found:
        flash(f"There is no dead letter {letter_id}: it may have been replayed already.",
              "error")
    if not (report.replayed or report.still_invalid or report.not_found
            or report.already_replayed):
        flash("There were no dead letters to replay.", "info")


def _problems(details: Any, path: str = "") -> list[tuple[str, str]]:
    """A quarantined payload's validation messages as (field path, message) pairs."""
    if isinstance(details, dict):
        return [problem for name, value in sorted(details.items())
                for problem in _problems(value, f"{path}.{name}" if path else str(name))]
    if isinstance(details, list) and all(isinstance(item, str) for item in details):
        return [(path or "payload", " ".join(details))]
    return [] if details is None else [(path or "payload", json.dumps(details))]


def _event_id_in(body: str) -> str | None:
    """The event_id a raw webhook body carries, if it is a JSON object with a string one."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    event_id = payload.get("event_id") if isinstance(payload, dict) else None
    return event_id if isinstance(event_id, str) else None


# -- template helpers -----------------------------------------------------------------


@blueprint.app_template_filter("utc_ms")
def utc_from_ms(ms: Any) -> str:
    """Unix milliseconds as a UTC time for people ("—" without: a letter written by hand)."""
    if ms in (None, "") or isinstance(ms, Undefined):
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(ms) / 1000))


@blueprint.app_template_filter("utc_s")
def utc_from_seconds(seconds: Any) -> str:
    """Unix seconds as a UTC time for people."""
    return "—" if seconds in (None, "") else utc_from_ms(float(seconds) * 1000)


@blueprint.app_template_filter("utc_s_short")
def utc_minute_from_seconds(seconds: Any) -> str:
    """Unix seconds as a UTC time to the minute, for narrow columns."""
    if seconds in (None, ""):
        return "—"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(seconds)))


@blueprint.app_template_filter("duration")
def duration(seconds: Any) -> str:
    """Seconds as "3 d 4 h", "12 min 5 s", "0.4 s"."""
    if seconds is None:
        return "—"
    value = float(seconds)
    if value < 10:
        return f"{value:.1f} s"
    total = int(value)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"
