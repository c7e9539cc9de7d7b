"""``flask dill-session ...``: maintenance commands for the configured session store."""

from __future__ import annotations

import time

import click
from flask import current_app
from flask.cli import AppGroup

from .interface import DillSessionInterface

cli = AppGroup("dill-session", help="Maintain the dill session store.")


def _interface() -> DillSessionInterface:
    interface = current_app.session_interface
    if not isinstance(interface, DillSessionInterface):
        raise click.ClickException(
            'the app does not use dill sessions (set SESSION_TYPE = "dill" and call Session(app))'
        )
    return interface


@cli.command("cleanup")
def cleanup() -> None:
    """Remove expired sessions and quarantined blobs past their keep time (on Redis, which
    expires them itself: move sessions an earlier release stored under their ids)."""
    store = _interface().store
    started = time.perf_counter()
    removed = store.cleanup()
    elapsed = time.perf_counter() - started
    summary = store.cleanup_summary.format(count=removed)
    click.echo(f"{summary} from {type(store).__name__} in {elapsed:.2f} s")
