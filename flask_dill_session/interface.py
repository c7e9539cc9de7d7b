"""The Flask glue: a :class:`~flask.sessions.SessionInterface` over a store and the codec.

It is also the one place where errors become HTTP: a store that fails or a lock not
acquired is answered 503 with ``Retry-After`` and logged once on the
``flask_dill_session`` logger, whether the session was first used in a view, in a hook
after it, or at the end when saving.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

from blinker import Signal
from flask import Flask, Request, Response, after_this_request, current_app
from flask.globals import request_ctx
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.http import dump_cookie

from .codec import Codec, Meta
from .config import DEFAULTS, Settings
from .exc import (
    BadPayloadError,
    ForeignPayloadError,
    LockTimeoutError,
    SessionUnavailableError,
)
from .session import DillSession
from .signals import (
    lock_timeout,
    lock_waited,
    session_created,
    session_destroyed,
    session_quarantined,
    session_regenerated,
    session_saved,
    store_unavailable,
)
from .stores.base import Entry, Store, fingerprint

logger = logging.getLogger("flask_dill_session")

_SID_CHARSET = re.compile(r"[A-Za-z0-9_-]+")
_DEGRADED_LOG_EVERY = 60.0  # seconds between "serving reads only" warnings
_COOKIE_HEADERS_KEPT = 4096  # Set-Cookie headers remembered, for requests within a second


class DillSessionInterface(SessionInterface):
    """Server-side sessions serialized with dill, authenticated, and kept in a :class:`Store`.

    The session is read (and its lock taken) on first use in a request, and saved at the
    end of the response only if its serialized form changed; otherwise its expiry is
    refreshed with a touch. Policy lives in small hooks a subclass may override.
    """

    session_class = DillSession
    pickle_based = True

    def __init__(
        self,
        store: Store,
        codec: Codec,
        settings: Settings = DEFAULTS,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.codec = codec
        self.settings = settings
        self.locking = settings.locking and store.supports_locking
        self.clock = clock
        self._sid_chars = len(secrets.token_urlsafe(settings.sid_length))
        self._foreign_logged: set[str] = set()
        self._degraded_logged = -_DEGRADED_LOG_EVERY
        self._cookie_headers: dict[tuple[object, ...], str] = {}

    # -- hooks -----------------------------------------------------------------

    def generate_sid(self) -> str:
        """A new session id: ``sid_length`` random bytes from :mod:`secrets`, URL-safe."""
        return secrets.token_urlsafe(self.settings.sid_length)

    def is_valid_sid(self, sid: str | None) -> bool:
        """Whether *sid* has the charset and length of an id we issue."""
        return (
            sid is not None
            and len(sid) == self._sid_chars
            and _SID_CHARSET.fullmatch(sid) is not None
        )

    def store_key(self, sid: str) -> str:
        """The key a session is stored under."""
        return self.settings.key_prefix + sid

    def idle_lifetime(self, app: Flask) -> float:
        """Seconds of inactivity after which the server forgets a session."""
        return app.permanent_session_lifetime.total_seconds()

    def should_set_cookie(self, app: Flask, session: SessionMixin) -> bool:
        """Set the cookie when the id changed or the session was written (its expiry and
        permanence follow the stored session), or to refresh a permanent session's expiry."""
        assert isinstance(session, DillSession)
        return (
            session.sid != session.cookie_sid
            or session.written
            or bool(session.permanent and app.config["SESSION_REFRESH_EACH_REQUEST"])
        )

    def get_expiration_time(self, app: Flask, session: SessionMixin) -> datetime | None:
        """Flask's cookie expiry, but never past the absolute lifetime."""
        expires = super().get_expiration_time(app, session)
        deadline = self._absolute_deadline(getattr(session, "created", 0.0))
        if expires is not None and deadline is not None:
            expires = min(expires, datetime.fromtimestamp(deadline, UTC))
        return expires

    # -- Flask's interface -----------------------------------------------------

    def open_session(self, app: Flask, request: Request) -> DillSession:
        """No I/O: remember the cookie's id; the store is read on first use."""
        sid = request.cookies.get(self.get_cookie_name(app))
        if not self.is_valid_sid(sid):
            sid = None
        after_this_request(_after_view)  # runs first of the response's hooks
        return self.session_class(sid, self.settings.permanent, partial(self._load, app))

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not isinstance(session, DillSession) or session.saved:
            return  # not ours, or saved already (Flask saves again for an error response)
        session.saved = True  # a later read (e.g. in a teardown hook) takes no lock
        if session.unavailable is not None:
            self.answer_unavailable(response, session.unavailable)
            return
        if not session.loaded:
            return  # never used in this request: no store I/O, no cookie change
        try:
            if session.failed:
                self._strike(app, session)
            else:
                self._save(app, session, response)
        except SessionUnavailableError as exc:
            self._report(exc, session, saving=True)
            self.answer_unavailable(response, exc)
        finally:
            self.release(session)

    # -- errors as HTTP ------------------------------------------------------------

    def handle_unavailable(self, exc: SessionUnavailableError) -> Response:
        """Flask error handler: the session could not be used in the view, so 503."""
        session = request_ctx.session
        if isinstance(session, DillSession):
            self._report(exc, session)
        response = current_app.response_class()
        self.answer_unavailable(response, exc)
        return response

    def answer_unavailable(self, response: Response, exc: SessionUnavailableError) -> None:
        """Make *response* a 503 with ``Retry-After``; of what the view set, only ``Vary``
        stays (no ``Location``, ``ETag``, ``Set-Cookie``...)."""
        vary = response.headers.get("Vary")
        response.headers.clear()
        if vary:
            response.headers["Vary"] = vary
        response.status_code = 503
        response.headers["Retry-After"] = str(exc.retry_after or 1)
        response.set_data("Service Unavailable: the session cannot be used now, try again.")
        response.mimetype = "text/plain"

    def _report(
        self, exc: SessionUnavailableError, session: DillSession, saving: bool = False
    ) -> None:
        """Log *exc* once, with the session's fingerprint, and send its signal."""
        if exc.reported:
            return
        exc.reported = True
        sid = session.sid or session.cookie_sid
        name = fingerprint(self.store_key(sid)) if sid else None
        if isinstance(exc, LockTimeoutError):
            logger.warning("session %s is busy, answering 503: %s", name or "(new)", exc)
            if lock_timeout.receivers:
                _send(lock_timeout, fingerprint=name, error=exc)
        else:
            what = "not saved" if saving else "not usable"
            logger.error("session %s %s, answering 503: %s", name or "(new)", what, exc)
            if store_unavailable.receivers:
                _send(store_unavailable, fingerprint=name, error=exc, saving=saving)

    # -- lifecycle -------------------------------------------------------------

    def regenerate(self, session: DillSession) -> None:
        """Give *session* a new id, keep its data, and make the old id invalid now."""
        session.load()
        old = session.entry
        session.rotated = session.rotated or not session.new  # its data is stored already
        self._drop(session)
        self._start(session, created=session.created)
        session.modified = True
        if session_regenerated.receivers and old is not None and session.entry is not None:
            new = fingerprint(session.entry.key)
            _send(session_regenerated, fingerprint=new, old_fingerprint=fingerprint(old.key))

    def destroy(self, session: DillSession) -> None:
        """Delete *session* server-side now; the response clears its cookie (logout)."""
        session.load()
        stored = not session.new
        self._drop(session)
        if stored and session_destroyed.receivers and session.entry is not None:
            _send(session_destroyed, fingerprint=fingerprint(session.entry.key), reason="destroy")
        session.clear()  # not dict.clear: *session* may be the flask.session proxy
        session.rotated = False
        self._start(session, created=self.clock())

    def release(self, session: DillSession) -> None:
        """Release the session's lock, if this request holds one. Idempotent."""
        if session.entry is not None:
            session.entry.release()

    # -- internals -------------------------------------------------------------

    def _load(self, app: Flask, session: DillSession) -> None:
        if session.unavailable is None:
            try:
                if session.cookie_sid is None or not self._open(session, session.cookie_sid):
                    self._start(session, created=self.clock())
                return
            except SessionUnavailableError as exc:
                self._report(exc, session)
                session.unavailable = exc
        # Used after the view: an empty session for the hook, and save_session answers 503.
        if not session.after_view:
            raise session.unavailable

    def _open(self, session: DillSession, sid: str) -> bool:
        """Read the stored session *sid* into *session*; whether there was a usable one."""
        entry = self.store.open(self.store_key(sid), lock=self.locking and not session.saved)
        if lock_waited.receivers and entry.waited:
            _send(lock_waited, fingerprint=fingerprint(entry.key), wait=entry.waited)
        if entry.degraded:
            self._degraded(entry)
        try:
            restored = self._restore(session, entry)
        except BaseException:
            entry.release()
            raise
        if not restored or session.saved:
            entry.release()  # otherwise held, with its lock, until save_session
        return restored

    def _restore(self, session: DillSession, entry: Entry) -> bool:
        if entry.blob is None:
            if entry.damage:
                self._quarantine(entry, entry.damage)
            return False
        try:
            opened = self.codec.open(entry.key, entry.blob)
        except ForeignPayloadError as exc:
            self._foreign(entry, exc)
            session.foreign = True
            return False
        except BadPayloadError as exc:
            self._quarantine(entry, exc)
            return False
        meta = opened.meta
        if self._past_absolute(meta.created, meta.expires):
            entry.delete()
            return False
        for note in opened.notes:
            logger.warning("stored session %s: %s", fingerprint(entry.key), note)
        if opened.dropped:
            self._dropped(entry, opened.dropped)
        session._restore(
            opened.data,
            entry,
            payload=opened.payload,
            created=meta.created,
            permanent=meta.permanent,
            reseal=opened.reseal,
        )
        return True

    def _foreign(self, entry: Entry, exc: ForeignPayloadError) -> None:
        """A blob another process may read: leave it; log once per key or Python."""
        source = getattr(exc, "key_id", None) or str(exc)
        if source not in self._foreign_logged:
            self._foreign_logged.add(source)
            logger.warning(
                "stored session %s left in place and not used here: %s (logged once)",
                fingerprint(entry.key),
                exc,
            )

    def _quarantine(self, entry: Entry, reason: BadPayloadError | str) -> None:
        name = fingerprint(entry.key)
        logger.warning("stored session %s is unusable and was quarantined: %s", name, reason)
        try:
            entry.quarantine(self.settings.quarantine_lifetime)
        except SessionUnavailableError as error:
            logger.error("stored session %s not quarantined, deleting it: %s", name, error)
            try:
                entry.delete()
            except SessionUnavailableError as again:
                logger.error("stored session %s not deleted either: %s", name, again)
            return
        if session_quarantined.receivers:
            _send(session_quarantined, fingerprint=name, reason=str(reason), copy=False)

    def _degraded(self, entry: Entry) -> None:
        """The store can be read, not written: say so at most once a minute."""
        now = time.monotonic()
        if now - self._degraded_logged >= _DEGRADED_LOG_EVERY:
            self._degraded_logged = now
            logger.warning(
                "session store is read-only, serving reads and answering 503 to changes: %s"
                " (said at most once a minute)",
                entry.fault,
            )

    def _dropped(self, entry: Entry, dropped: Mapping[str, str]) -> None:
        """Some keys could not be kept: one warning each; the original stays in quarantine."""
        name = fingerprint(entry.key)
        for key, why in dropped.items():
            logger.warning("stored session %s: key %r dropped: %s", name, key, why)
        try:
            entry.copy_to_quarantine(self.settings.quarantine_lifetime)
        except SessionUnavailableError as error:
            logger.error("stored session %s: no copy kept in quarantine: %s", name, error)
            return
        if session_quarantined.receivers:
            reason = "keys dropped: " + ", ".join(map(repr, dropped))
            _send(session_quarantined, fingerprint=name, reason=reason, copy=True)

    def _start(self, session: DillSession, *, created: float) -> None:
        sid = self.generate_sid()
        session._reset(sid, self.store.new(self.store_key(sid)), created=created)

    def _drop(self, session: DillSession) -> None:
        assert session.entry is not None
        if not session.new:
            session.entry.delete()
        session.entry.release()

    def _save(self, app: Flask, session: DillSession, response: Response) -> None:
        entry = session.entry
        assert entry is not None
        if "Vary" in response.headers:
            response.vary.add("Cookie")
        else:  # as above, without parsing and rewriting the header set
            response.headers["Vary"] = "Cookie"
        if not session:
            if not session.new:
                entry.delete()
                if session_destroyed.receivers:
                    _send(session_destroyed, fingerprint=fingerprint(entry.key), reason="emptied")
            if session.cookie_sid is not None and not session.foreign:
                self._delete_cookie(app, response)
            return
        data = dict.copy(session)
        payload = self.codec.dumps(data)
        ttl = self.idle_lifetime(app)
        if self._changed(session, payload):
            deadline = self._absolute_deadline(session.created)
            meta = Meta(session.permanent, session.created, deadline)
            blob = self.codec.seal(entry.key, data, payload, meta)
            if not entry.write(blob, ttl):
                return  # deleted meanwhile (logout elsewhere): do not resurrect
            session.written = True
            if session_created.receivers and session.new and not session.rotated:
                _send(session_created, fingerprint=fingerprint(entry.key))
            if session_saved.receivers:
                name = fingerprint(entry.key)
                _send(session_saved, fingerprint=name, written=True, size=len(blob))
        else:
            entry.touch(ttl)
            if session_saved.receivers:
                _send(session_saved, fingerprint=fingerprint(entry.key), written=False, size=None)
        if self.should_set_cookie(app, session):
            self._set_cookie(app, session, response)

    def _strike(self, app: Flask, session: DillSession) -> None:
        """The request ended in an unhandled exception: nothing it changed is written.
        After ``poison_after`` such requests in a row, the stored session is quarantined."""
        entry, limit = session.entry, self.settings.poison_after
        if entry is None or session.new or limit is None:
            return
        if entry.strikes + 1 < limit:
            try:
                entry.strike(self.idle_lifetime(app))
            except SessionUnavailableError as exc:  # the answer stays the failure's own
                self._report(exc, session, saving=True)
            return
        self._quarantine(
            entry, f"{limit} requests in a row that used it ended in an unhandled exception"
        )

    def _changed(self, session: DillSession, payload: bytes) -> bool:
        """Whether *payload* must be written: new, assigned to, or different data."""
        return (
            session.new
            or session.modified
            or session.reseal
            or self.codec.changed(payload, session.payload)
        )

    def _absolute_deadline(self, created: float) -> float | None:
        lifetime = self.settings.absolute_lifetime
        return None if lifetime is None else created + lifetime

    def _past_absolute(self, created: float, expires: float | None) -> bool:
        now = self.clock()
        deadline = self._absolute_deadline(created)
        return (expires is not None and now >= expires) or (
            deadline is not None and now >= deadline
        )

    def _set_cookie(self, app: Flask, session: DillSession, response: Response) -> None:
        assert session.sid is not None
        expires = self.get_expiration_time(app, session)
        attributes = (
            self.get_cookie_name(app),
            self.get_cookie_domain(app),
            self.get_cookie_path(app),
            self.get_cookie_secure(app),
            self.get_cookie_httponly(app),
            self.get_cookie_samesite(app),
            self.get_cookie_partitioned(app),
        )
        # Expires has whole seconds: the requests of one session within a second (a page
        # and its XHRs, a burst) send the same header, so it is built once.
        key = (session.sid, None if expires is None else int(expires.timestamp()), attributes)
        header = self._cookie_headers.get(key)
        if header is None:
            name, domain, path, secure, httponly, samesite, partitioned = attributes
            header = dump_cookie(
                name,
                session.sid,
                expires=expires,
                domain=domain,
                path=path,
                secure=secure,
                httponly=httponly,
                samesite=samesite,
                partitioned=partitioned,
                max_size=response.max_cookie_size,
            )
            if len(self._cookie_headers) >= _COOKIE_HEADERS_KEPT:
                self._cookie_headers.clear()
            self._cookie_headers[key] = header
        response.headers.add("Set-Cookie", header)

    def _delete_cookie(self, app: Flask, response: Response) -> None:
        response.delete_cookie(
            self.get_cookie_name(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
            partitioned=self.get_cookie_partitioned(app),
            httponly=self.get_cookie_httponly(app),
        )


def _send(signal: Signal, **arguments: Any) -> None:
    """Send *signal* from the current app, as Flask sends its own. Callers check
    ``signal.receivers`` first: with nobody listening, nothing is computed."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    signal.send(app, _async_wrapper=app.ensure_sync, **arguments)


def _after_view(response: Response) -> Response:
    """The view has returned: a store failure from now on is answered by save_session."""
    session = request_ctx.session
    if isinstance(session, DillSession):
        session.after_view = True
    return response
