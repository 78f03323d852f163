"""Commands for operators, admins and support: ``cio-relay <command>`` or
``flask --app wsgi <command>``.

Exit status: 0 success, 1 a reported problem (not found, refused credentials...),
2 a usage error. Output is for people; ``--json`` gives scripts the same data.
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
import time
from typing import Any

import click
import prometheus_client
from flask import Flask, current_app
from flask.cli import with_appcontext

from app.config import ConfigError
from app.relay.outcomes import DeliveryError
from app.relay.runner import run_until_signalled
from app.services import DIRECTIONS, services
from app.store import stories, upgrade
from app.store.toggles import NAME_RULE, is_well_formed
from app.support import dead_letters as dead_letter_replay
from app.to_customerio.client import AuthError as CustomerIOAuthError
from app.to_mparticle.client import AuthError

logger = logging.getLogger(__name__)


def _relay() -> Any:
    """The app's services; refuses the embedded default, whose state lives in the web process."""
    relay = services(current_app)
    if relay.settings.embedded:
        _fail(
            "REDIS_URL is not set: commands read the relay's Redis, and the embedded default "
            "keeps its state inside the web process"
        )
    return relay


def _emit(data: Any, as_json: bool, human: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else human)


def _when(ms: Any) -> str:
    if ms in (None, ""):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(ms) / 1000))


def _fail(message: str) -> None:
    click.echo(message, err=True)
    sys.exit(1)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@click.command("worker")
@with_appcontext
def worker_command() -> None:
    """Relay queued events to mParticle until SIGTERM."""
    relay = _relay()
    try:
        relay.require_redis_that_keeps_data()
        workers = relay.build_workers()
        port = relay.settings.worker_metrics_port
        if port:
            # The worker's counters (relayed, retried, dead-lettered, latencies) live in
            # this process: served here, since the web process's /metrics cannot see them.
            prometheus_client.start_http_server(port)
            logger.info("worker metrics served on port %d at /metrics", port)
        run_until_signalled(*workers)
    except ConfigError as exc:
        _fail(f"configuration error: {exc}")


@click.command("check")
@with_appcontext
def check_command() -> None:
    """Test each direction's credentials (mParticle as Customer.io's "Connect" does)."""
    relay = services(current_app)
    problems = [_check_mparticle(relay)]
    if relay.settings.to_customerio_enabled or relay.settings.audiences_enabled:
        problems.append(_check_customerio(relay))
    if any(problems):
        sys.exit(1)


def _check_mparticle(relay: Any) -> bool:
    """Report on mParticle's credentials; True when there is a problem."""
    if relay.settings.mparticle["dry_run"] and not relay.settings.has_mparticle_credentials:
        click.echo("dry run: no mParticle credentials are configured; nothing would be sent")
        return False
    if not relay.settings.has_mparticle_credentials:
        return _problem("MPARTICLE_API_KEY and MPARTICLE_API_SECRET are not set")
    base_url = relay.settings.mparticle_base_url
    try:
        relay.mparticle_client().check_credentials()
    except AuthError as exc:
        return _problem(f"mParticle refused the credentials (HTTP {exc.status}) at {base_url}")
    except DeliveryError as exc:
        return _problem(f"could not check the credentials at {base_url}: {exc}")
    click.echo(f"mParticle accepted the credentials at {base_url}")
    return False


def _check_customerio(relay: Any) -> bool:
    """Report on Customer.io's Track API credentials and region; True on a problem."""
    config = relay.settings
    if config.customerio["dry_run"] and not config.has_customerio_credentials:
        click.echo("dry run: no Customer.io credentials are configured; nothing would be sent")
        return False
    base_url = config.customerio_base_url
    try:
        region = relay.customerio_client().check_credentials()
    except CustomerIOAuthError as exc:
        return _problem(f"Customer.io refused the Track API credentials (HTTP {exc.status}) "
                        f"at {base_url}")
    except DeliveryError as exc:
        return _problem(f"could not check the Customer.io credentials at {base_url}: {exc}")
    if region != config.customerio_region:
        return _problem(f"Customer.io says this workspace is in region {region!r}, but "
                        f"CUSTOMERIO_REGION is {config.customerio_region!r}: set "
                        f"CUSTOMERIO_REGION={region}")
    click.echo(f"Customer.io accepted the Track API credentials at {base_url} "
               f"(region {region})")
    return False


def _problem(message: str) -> bool:
    click.echo(message, err=True)
    return True


# -- events ----------------------------------------------------------------------------


@click.group("events")
def events_group() -> None:
    """List event types and turn them on or off for every process."""


@events_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_appcontext
def events_list(as_json: bool) -> None:
    """Every known event type, then those an admin added: enabled?, default, override,
    known to the catalog?, last change."""
    rows = [toggle.as_dict() for toggle in _relay().toggles.list()]
    lines = [f"{'EVENT TYPE':45} {'ENABLED':8} {'DEFAULT':8} {'SOURCE':9} KNOWN"]
    for row in rows:
        change = f" (by {row['changed_by']})" if row["changed_by"] else ""
        lines.append(
            f"{row['name']:45} {'yes' if row['enabled'] else 'no':8} "
            f"{'on' if row['default'] else 'off':8} {row['source']:9} "
            f"{'yes' if row['known'] else 'no'}{change}"
        )
    _emit(rows, as_json, "\n".join(lines))


def _event_type_name(_ctx: Any, _param: Any, value: str) -> str:
    """Any well-formed <object_type>_<metric>, in the catalog or not; else a usage error."""
    if not is_well_formed(value):
        raise click.BadParameter(f"{value!r} is not a well-formed event type: must be {NAME_RULE}")
    return value


def _not_in_the_catalog(toggle: Any) -> str:
    return "" if toggle.known else "; not in the catalog"


@events_group.command("enable")
@click.argument("name", callback=_event_type_name)
@with_appcontext
def events_enable(name: str) -> None:
    """Forward events of this type to mParticle (any well-formed type, known or not)."""
    toggle = _relay().toggles.set(name, True, actor=_actor())
    click.echo(f"{name}: enabled (default {'on' if toggle.default else 'off'}"
               f"{_not_in_the_catalog(toggle)})")


@events_group.command("disable")
@click.argument("name", callback=_event_type_name)
@with_appcontext
def events_disable(name: str) -> None:
    """Stop forwarding events of this type (they are answered "ignored")."""
    toggle = _relay().toggles.set(name, False, actor=_actor())
    click.echo(f"{name}: disabled (default {'on' if toggle.default else 'off'}"
               f"{_not_in_the_catalog(toggle)})")


@events_group.command("reset")
@click.argument("name", callback=_event_type_name)
@with_appcontext
def events_reset(name: str) -> None:
    """Drop the runtime override; the settings file decides again (off if not in the
    catalog)."""
    toggle = _relay().toggles.reset(name, actor=_actor())
    click.echo(f"{name}: back to the default ({'on' if toggle.enabled else 'off'}"
               f"{_not_in_the_catalog(toggle)})")


# -- dedup -----------------------------------------------------------------------------


@click.group("dedup")
def dedup_group() -> None:
    """Look up dedup marks and first-occurrence flags."""


@dedup_group.command("show")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_appcontext
def dedup_show(event_id: str, as_json: bool) -> None:
    """Did this Customer.io event arrive, and where is it now?"""
    relay = _relay()
    story = relay.find_event(event_id)
    if story is None:
        _emit({"event_id": event_id, "seen": False}, as_json,
              f"{event_id}: not seen (never accepted, or its mark expired)")
        sys.exit(1)
    lines = [
        f"event      {event_id}",
        f"type       {story.get('event', '-')}",
        f"status     {story.get('status')}",
        f"where      {story.get('where')}",
        f"received   {_when(story.get('received_at_ms'))}",
    ]
    if story.get("delivery_id"):
        lines.append(f"delivery   {story['delivery_id']}")
    if story.get("suppressed_by"):
        lines.append(f"suppressed by the earlier event {story['suppressed_by']}")
    if story.get("status_at_ms"):
        lines.append(f"{story['status']:10} {_when(story['status_at_ms'])}")
    if story.get("source_request_id"):
        lines.append(f"mParticle  HTTP {story.get('mparticle_status')}, "
                     f"source_request_id {story['source_request_id']}")
    if story.get("reason"):
        lines.append(f"reason     {story['reason']}")
    if story.get("copies_received_after_first"):
        lines.append(f"copies     {story['copies_received_after_first']} more received "
                     "(answered duplicate or suppressed)")
    lines.append(f"mark TTL   {story['ttl_seconds']}s")
    _emit(story, as_json, "\n".join(lines))


@dedup_group.command("first")
@click.argument("delivery_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_appcontext
def dedup_first(delivery_id: str, as_json: bool) -> None:
    """The first-occurrence flags set for a delivery."""
    relay = _relay()
    flags = relay.first_flags(delivery_id)
    if not flags["flags"]:
        _emit(flags, as_json, f"{delivery_id}: no first-occurrence flags set")
        sys.exit(1)
    lines = [f"delivery {delivery_id} (flags expire in {flags['ttl_seconds']}s)"]
    lines += [f"  {name:40} first event {event_id}"
              for name, event_id in sorted(flags["flags"].items())]
    _emit(flags, as_json, "\n".join(lines))


@dedup_group.command("forget")
@click.argument("event_id")
@with_appcontext
def dedup_forget(event_id: str) -> None:
    """Drop an event's dedup mark so Customer.io's next copy is accepted again."""
    relay = _relay()
    if not stories.forget_event(relay.redis, relay.keys, event_id):
        _fail(f"{event_id}: no dedup mark to forget")
    click.echo(f"{event_id}: dedup mark removed")


@dedup_group.command("migrate")
@with_appcontext
def dedup_migrate() -> None:
    """Move marks and flags kept in keys of their own (older versions) into buckets."""
    relay = _relay()
    report = upgrade.migrate(relay.redis, relay.keys, time.time())
    click.echo(f"moved {report.marks} marks and {report.flags} first-occurrence flags out of "
               f"{report.keys} keys into buckets")
    if report.unreadable:
        _fail(f"{report.unreadable} marks were not as the relay writes them: left as they are")


# -- dead letters ----------------------------------------------------------------------


@click.group("dlq")
def dlq_group() -> None:
    """Read and replay dead letters."""


@dlq_group.command("list")
@click.option("--count", default=50, show_default=True, help="How many, newest first.")
@click.option("--direction", type=click.Choice(DIRECTIONS), default=DIRECTIONS[0],
              show_default=True,
              help="Whose dead letters: Customer.io → mParticle, or mParticle → Customer.io.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_appcontext
def dlq_list(count: int, direction: str, as_json: bool) -> None:
    """One direction's newest dead letters with their reasons."""
    relay = _relay()
    letters = relay.list_dead_letters(direction, count)
    lines = [f"{len(letters)} dead letters ({direction})"] + [
        f"{letter['id']}  {letter.get('at', '-')}  {letter.get('kind', '?'):11} "
        f"{letter.get('event_id') or '-':28} {letter.get('reason', '')}"
        + (f" (HTTP {letter['status']})" if letter.get("status") else "")
        for letter in letters
    ]
    _emit(letters, as_json, "\n".join(lines))


@dlq_group.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@with_appcontext
def dlq_replay(ids: tuple[str, ...], replay_all: bool) -> None:
    """Queue dead letters again, through the same mapping and delivery."""
    if bool(ids) == replay_all:
        raise click.UsageError("give dead-letter ids, or --all")
    relay = _relay()
    report = dead_letter_replay.replay(relay, None if replay_all else list(ids))
    click.echo(f"replayed {len(report.replayed)}")
    for entry_id in report.already_replayed:
        click.echo(f"already replayed (by another replay): {entry_id}", err=True)
    for entry_id in report.not_found:
        click.echo(f"not found: {entry_id}", err=True)
    for entry_id, why in report.still_invalid.items():
        click.echo(f"still not a valid webhook: {entry_id}: {why}", err=True)
    if report.not_found or report.still_invalid:
        sys.exit(1)


@click.group("audiences")
def audiences_group() -> None:
    """Look up a person's audiences (mParticle's audiences → Customer.io)."""


@audiences_group.command("show")
@click.argument("person")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_appcontext
def audiences_show(person: str, as_json: bool) -> None:
    """The audiences a person is in, and the last change applied for each audience."""
    found = _relay().person_audiences(person)
    if found is None:
        _emit({"person": person, "known": False}, as_json,
              f"{person}: no audience change known for this customer id or email")
        sys.exit(1)
    lines = [f"person     {found['person']}",
             "in         " + (", ".join(str(a) for a in found["audiences"]) or "(none)")]
    for audience, last in found["changes"].items():
        lines.append(f"{audience:>10} {'joined' if last['member'] else 'left':6} "
                     f"{_when(last['changed_at_ms'])}  {last['name']}")
    _emit(found, as_json, "\n".join(lines))


COMMANDS = (worker_command, check_command, events_group, dedup_group, dlq_group,
            audiences_group)


def register_commands(app: Flask) -> None:
    """Make the commands available as ``flask --app wsgi <command>``."""
    for command in COMMANDS:
        app.cli.add_command(command)


def main() -> None:
    """Entry point of the ``cio-relay`` console script."""
    from app import create_app

    try:
        app = create_app(role="cli")
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(1)
    group = click.Group(
        "cio-relay", commands=list(COMMANDS),
        help="Operate the Customer.io -> mParticle relay (same as flask --app wsgi ...).",
    )
    with app.app_context():
        group(prog_name="cio-relay")
