"""``flask dill-session ...``: see, check and revoke the sessions of the configured store.

Every command that prints data takes ``--json``. Exit codes: 0 done; 1 an error, nothing
found, or (``verify``) a stored session would lose data; 2 a usage error.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from flask import current_app
from flask.cli import AppGroup

from .exc import DillSessionError
from .interface import DillSessionInterface
from .inventory import DAMAGED, DROPS, LOADS, UNLOADABLE, Checked, Inventory, SessionInfo
from .stores.base import Item

cli = AppGroup("dill-session", help="See, check and revoke the stored sessions.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
T = TypeVar("T")
_REPR_WIDTH = 80
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _interface() -> DillSessionInterface:
    interface = current_app.session_interface
    if not isinstance(interface, DillSessionInterface):
        raise click.ClickException(
            'the app does not use dill sessions (set SESSION_TYPE = "dill" and call Session(app))'
        )
    return interface


def _inventory() -> Inventory:
    return _interface().inventory(current_app)


def _emit(data: Any, as_json: bool, lines: Iterable[str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in lines:
            click.echo(line)


def _progress(items: Iterable[T], label: str, as_json: bool) -> Iterator[T]:
    """*items*, with a progress bar on stderr when it is a terminal."""
    if as_json or not sys.stderr.isatty():
        yield from items
        return
    with click.progressbar(items, label=label, file=sys.stderr) as bar:
        yield from bar


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _guarded(command: Any) -> Any:
    """Our errors (store unavailable, unsupported by the backend) as a one-line message."""

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (DillSessionError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None

    run.__name__, run.__doc__ = command.__name__, command.__doc__
    return run


def _line(info: SessionInfo) -> str:
    state = "expired" if info.expired else "live"
    return (
        f"{info.fingerprint or '-':12}  {info.user or '-':16}  created {_when(info.created)}"
        f"  active {_when(info.last_active)}  until {_when(info.deadline)}"
        f"  {info.size:>8} B  {state}"
    )


def _find(reference: str) -> Item:
    interface = _interface()

    def key_of(text: str) -> str | None:
        return interface.store_key(text) if interface.is_valid_sid(text) else None

    item = _inventory().find(reference, key_of)
    if item is None:
        raise click.ClickException(f"no stored session {reference!r}")
    return item


def _contents(checked: Checked) -> dict[str, dict[str, str]]:
    """Key -> type and a truncated repr, of a session that loaded."""
    data = checked.opened.data if checked.opened else {}
    shown = {}
    for key, value in data.items():
        try:
            text = repr(value)
        except Exception as exc:  # a broken __repr__ must not hide the others
            text = f"<repr failed: {type(exc).__name__}>"
        if len(text) > _REPR_WIDTH:
            text = text[: _REPR_WIDTH - 3] + "..."
        kind = type(value)
        shown[key] = {"type": f"{kind.__module__}.{kind.__qualname__}", "repr": text}
    return shown


# -- the commands -------------------------------------------------------------------------


@cli.command("stats")
@json_option
@_guarded
def stats(as_json: bool) -> None:
    """Live, expired and quarantined sessions; bytes in total and per session."""
    found = _inventory().stats()
    _emit(
        found,
        as_json,
        [
            f"store: {found['where']}",
            f"live sessions: {found['live']}",
            f"expired, not yet removed: {found['expired']}",
            f"quarantined: {found['quarantined']}",
            f"bytes: {found['bytes']} total, p50 {found['p50_bytes']}, p99 {found['p99_bytes']}",
            f"oldest created: {_when(found['oldest_created'])}",
        ],
    )


@cli.command("list")
@click.option("--user", help="Only the sessions of this user (SESSION_DILL_USER_KEY).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many.")
@json_option
@_guarded
def list_sessions(user: str | None, limit: int | None, as_json: bool) -> None:
    """One line per session: fingerprint, user, created, last active, deadline, size."""
    found: list[SessionInfo] = []
    for info in _progress(_inventory().sessions(user), "listing", as_json):
        found.append(info)
        if limit is not None and len(found) >= limit:
            break
    _emit([info.as_json() for info in found], as_json, map(_line, found))


@cli.command("show")
@click.argument("reference")
@json_option
@_guarded
def show(reference: str, as_json: bool) -> None:
    """Keys, types and a short repr of one session (a session id or a fingerprint; an id
    that starts with "-" goes after "--")."""
    interface = _interface()
    item = _find(reference)
    key = interface.store_key(reference) if interface.is_valid_sid(reference) else None
    inventory = _inventory()
    checked = inventory.check(item, key, inventory.owners().get(item.handle))
    if checked.opened is None:
        raise click.ClickException(f"session not shown: {checked.outcome}: {checked.detail}")
    contents = _contents(checked)
    lines = [_line(checked.info)]
    lines += [f"  {key!r}: {each['type']} = {each['repr']}" for key, each in contents.items()]
    lines += [f"  {key!r}: dropped: {why}" for key, why in checked.dropped.items()]
    data = {**checked.info.as_json(), "keys": contents, "dropped": dict(checked.dropped)}
    _emit(data, as_json, lines)


@cli.command("revoke")
@click.argument("reference", required=False)
@click.option("--user", help="Revoke every session of this user instead.")
@click.option("--keep", help="With --user: the session id to keep.")
@json_option
@_guarded
def revoke(reference: str | None, user: str | None, keep: str | None, as_json: bool) -> None:
    """Delete a session (id or fingerprint; an id that starts with "-" goes after "--"), or
    every session of --user, now."""
    if (reference is None) == (user is None):
        raise click.UsageError("give a session id or fingerprint, or --user")
    if user is not None:
        revoked = _interface().revoke_user(user, keep=keep)
    else:
        revoked = int(_inventory().revoke(_find(reference or "").handle))
    _emit({"revoked": revoked}, as_json, [f"revoked {revoked} session(s)"])


@cli.command("clear")
@click.option("--yes", is_flag=True, help="Confirm: delete every stored session.")
@json_option
@_guarded
def clear(yes: bool, as_json: bool) -> None:
    """Delete every session of this app's store."""
    if not yes:
        raise click.UsageError("clear deletes every session: add --yes to confirm")
    inventory = _inventory()
    items = list(_progress(inventory.store.items(), "clearing", as_json))
    cleared = sum(inventory.revoke(item.handle) for item in items)
    where = inventory.store.describe()
    _emit({"cleared": cleared, "where": where}, as_json, [f"cleared {cleared} from {where}"])


@cli.command("verify")
@json_option
@_guarded
def verify(as_json: bool) -> None:
    """Load every live session with the current code, read-only (nothing is written or
    locked); exit 1 if any would lose data."""
    inventory = _inventory()
    outcomes: Counter[str] = Counter()
    problems: list[Checked] = []
    for item in _progress(inventory.store.items(), "verifying", as_json):
        if item.deadline <= inventory.clock():
            continue
        checked = inventory.check(item)
        outcomes[checked.outcome] += 1
        if checked.outcome != LOADS:
            problems.append(checked)
    lines = [f"{outcome}: {count}" for outcome, count in sorted(outcomes.items())]
    for problem in problems:
        lines.append(f"{problem.info.fingerprint or problem.info.handle}: {problem.outcome}")
        lines += [f"  {key!r}: {why}" for key, why in problem.dropped.items()]
        if problem.detail:
            lines.append(f"  {problem.detail}")
    found = [
        {
            "fingerprint": problem.info.fingerprint,
            "handle": problem.info.handle,
            "outcome": problem.outcome,
            "detail": problem.detail,
            "dropped": dict(problem.dropped),
        }
        for problem in problems
    ]
    _emit({"outcomes": dict(outcomes), "problems": found}, as_json, lines)
    if outcomes[DROPS] or outcomes[UNLOADABLE] or outcomes[DAMAGED]:
        sys.exit(1)


@cli.command("cleanup")
@json_option
@_guarded
def cleanup(as_json: bool) -> None:
    """Remove expired sessions and quarantined blobs past their keep time (on Redis, which
    expires them itself: move sessions an earlier release stored under their ids)."""
    store = _interface().store
    report: Counter[str] = Counter()
    started = time.perf_counter()
    removed = store.cleanup(report)
    elapsed = time.perf_counter() - started
    where = store.describe()
    summary = store.cleanup_summary.format(count=removed)
    lines = [f"{summary} from {type(store).__name__} in {elapsed:.2f} s"]
    lines += [f"  {kind}: {count}" for kind, count in sorted(report.items())]
    lines.append(f"  where: {where}")
    data = {"removed": removed, "by_kind": dict(report), "where": where, "seconds": elapsed}
    _emit(data, as_json, lines)


# -- quarantine ----------------------------------------------------------------------------


@cli.group("quarantine")
def quarantine() -> None:
    """Blobs that could not be loaded, kept for inspection."""


def _quarantined(handle: str) -> Item:
    for item in _inventory().store.quarantined():
        if item.handle == handle:
            return item
    raise click.ClickException(f"nothing in quarantine named {handle!r}")


def _quarantine_entry(item: Item, checked: Checked) -> dict[str, Any]:
    return {
        "id": item.handle,
        "fingerprint": checked.info.fingerprint,
        "size": item.size,
        "kept_until": item.deadline,
        "outcome": checked.outcome,
        "detail": checked.detail,
    }


@quarantine.command("list")
@json_option
@_guarded
def quarantine_list(as_json: bool) -> None:
    """Every quarantined blob: id, session, size, keep time, whether it loads now."""
    inventory = _inventory()
    found = [
        _quarantine_entry(item, inventory.check(item)) for item in inventory.store.quarantined()
    ]
    lines = [
        f"{each['id']}  {each['fingerprint'] or '-':12}  {each['size']:>8} B"
        f"  until {_when(each['kept_until'])}  {each['outcome']}"
        for each in found
    ]
    _emit(found, as_json, lines)


@quarantine.command("show")
@click.argument("handle")
@json_option
@_guarded
def quarantine_show(handle: str, as_json: bool) -> None:
    """What a quarantined blob holds, if it authenticates and loads now."""
    inventory = _inventory()
    item = _quarantined(handle)
    checked = inventory.check(item)
    entry = _quarantine_entry(item, checked)
    entry["keys"] = _contents(checked)
    lines = [f"{entry['id']}: {entry['outcome']} {entry['detail']}".rstrip()]
    lines += [f"  {key!r}: {each['type']} = {each['repr']}" for key, each in entry["keys"].items()]
    _emit(entry, as_json, lines)


@quarantine.command("restore")
@click.argument("handle")
@json_option
@_guarded
def quarantine_restore(handle: str, as_json: bool) -> None:
    """Put a quarantined blob back as its session, only if it authenticates and loads
    now in full."""
    inventory = _inventory()
    item = _quarantined(handle)
    checked = inventory.check(item)
    if checked.outcome != LOADS or item.blob is None:
        reason = checked.detail or ", ".join(checked.dropped) or checked.outcome
        raise click.ClickException(f"not restored: {checked.outcome}: {reason}")
    if not inventory.store.restore(handle, item.blob, inventory.idle_lifetime):
        raise click.ClickException("not restored: its session exists again")
    fingerprint = checked.info.fingerprint
    _emit({"restored": handle, "fingerprint": fingerprint}, as_json, [f"restored {fingerprint}"])


@quarantine.command("purge")
@click.option("--older-than", "older_than", help="Only blobs quarantined longer ago: 7d, 12h, 30m.")
@json_option
@_guarded
def quarantine_purge(older_than: str | None, as_json: bool) -> None:
    """Delete quarantined blobs (all, or those older than a duration)."""
    inventory = _inventory()
    settings = _interface().settings
    age = 0.0 if older_than is None else _seconds(older_than)
    cutoff = inventory.clock() - age
    purged = 0
    for item in list(inventory.store.quarantined()):
        quarantined_at = item.deadline - settings.quarantine_lifetime
        if older_than is None or quarantined_at <= cutoff:
            purged += inventory.store.discard(item.handle)
    _emit({"purged": purged}, as_json, [f"purged {purged} quarantined blob(s)"])


def _seconds(text: str) -> float:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise click.BadParameter(f"{text!r}: give a number and s, m, h or d (e.g. 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]
