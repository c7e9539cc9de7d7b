"""What the interface does with a stored session it cannot use as stored, and what it tells
the operator: a line on the ``flask_dill_session`` logger and the matching signal.

A blob that fails to load is moved to quarantine; keys that could not be kept leave a copy
of the original there; a blob another process may read is left in place. What repeats
with one cause is said once: per key id or Python (foreign blobs), per view (a readonly
view that changed its session), per minute (a read-only store). Signals are sent only
when someone listens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from blinker import Signal
from flask import current_app

from .exc import (
    BadPayloadError,
    ForeignPayloadError,
    LockTimeoutError,
    SessionUnavailableError,
)
from .signals import lock_timeout, session_quarantined, store_unavailable
from .stores.base import Entry, fingerprint

logger = logging.getLogger("flask_dill_session")

_DEGRADED_LOG_EVERY = 60.0  # seconds between "serving reads only" warnings


class Incidents:
    """One app's incidents; stored sessions are kept in quarantine *quarantine_lifetime*
    seconds."""

    def __init__(self, quarantine_lifetime: float) -> None:
        self.quarantine_lifetime = quarantine_lifetime
        self._foreign_logged: set[str] = set()
        self._readonly_logged: set[str] = set()
        self._degraded_logged = -_DEGRADED_LOG_EVERY

    def unavailable(
        self, exc: SessionUnavailableError, name: str | None, *, saving: bool = False
    ) -> None:
        """The session *name* (its fingerprint; ``None`` while new) could not be used or
        saved: log *exc* once, whoever meets it again, and send its signal."""
        if exc.reported:
            return
        exc.reported = True
        if isinstance(exc, LockTimeoutError):
            logger.warning("session %s is busy, answering 503: %s", name or "(new)", exc)
            if lock_timeout.receivers:
                send(lock_timeout, fingerprint=name, error=exc)
        else:
            what = "not saved" if saving else "not usable"
            logger.error("session %s %s, answering 503: %s", name or "(new)", what, exc)
            if store_unavailable.receivers:
                send(store_unavailable, fingerprint=name, error=exc, saving=saving)

    def foreign(self, entry: Entry, exc: ForeignPayloadError) -> None:
        """A blob another process may read: leave it; say so once per key or Python."""
        source = getattr(exc, "key_id", None) or str(exc)
        if source not in self._foreign_logged:
            self._foreign_logged.add(source)
            logger.warning(
                "stored session %s left in place and not used here: %s (logged once)",
                fingerprint(entry.key),
                exc,
            )

    def quarantine(self, entry: Entry, reason: BadPayloadError | str) -> None:
        """Move a session that cannot be used to quarantine (delete it if that fails)."""
        name = fingerprint(entry.key)
        logger.warning("stored session %s is unusable and was quarantined: %s", name, reason)
        try:
            entry.quarantine(self.quarantine_lifetime)
        except SessionUnavailableError as error:
            logger.error("stored session %s not quarantined, deleting it: %s", name, error)
            try:
                entry.delete()
            except SessionUnavailableError as again:
                logger.error("stored session %s not deleted either: %s", name, again)
            return
        if session_quarantined.receivers:
            send(session_quarantined, fingerprint=name, reason=str(reason), copy=False)

    def dropped(self, entry: Entry, dropped: Mapping[str, str]) -> None:
        """Some keys could not be kept: one warning each; the original stays in quarantine."""
        name = fingerprint(entry.key)
        for key, why in dropped.items():
            logger.warning("stored session %s: key %r dropped: %s", name, key, why)
        try:
            entry.copy_to_quarantine(self.quarantine_lifetime)
        except SessionUnavailableError as error:
            logger.error("stored session %s: no copy kept in quarantine: %s", name, error)
            return
        if session_quarantined.receivers:
            reason = "keys dropped: " + ", ".join(map(repr, dropped))
            send(session_quarantined, fingerprint=name, reason=reason, copy=True)

    def degraded(self, entry: Entry) -> None:
        """The store can be read, not written: say so at most once a minute."""
        now = time.monotonic()
        if now - self._degraded_logged >= _DEGRADED_LOG_EVERY:
            self._degraded_logged = now
            logger.warning(
                "session store is read-only, serving reads and answering 503 to changes: %s"
                " (said at most once a minute)",
                entry.fault,
            )

    def readonly_changed(self, view: str) -> None:
        """A view marked readonly changed its session: say so once per view."""
        if view not in self._readonly_logged:
            self._readonly_logged.add(view)
            logger.warning(
                "view %r is marked readonly but changed the session: the change was not"
                " saved (logged once per view)",
                view,
            )


def send(signal: Signal, **arguments: Any) -> None:
    """Send *signal* from the current app, as Flask sends its own. Callers check
    ``signal.receivers`` first: with nobody listening, nothing is computed."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    signal.send(app, _async_wrapper=app.ensure_sync, **arguments)
