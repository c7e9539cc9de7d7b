"""The Flask glue: a :class:`~flask.sessions.SessionInterface` over a store and the codec."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin

from .codec import Codec, Meta
from .exc import (
    BadPayloadError,
    ForeignPayloadError,
    LockTimeoutError,
    SessionUnavailableError,
)
from .session import DillSession
from .stores.base import Entry, Store, fingerprint

logger = logging.getLogger("flask_dill_session")

_SID_CHARSET = re.compile(r"[A-Za-z0-9_-]+")
_DAY = 86400.0


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
        *,
        key_prefix: str = "session:",
        sid_length: int = 32,
        permanent: bool = True,
        locking: bool = True,
        absolute_lifetime: float | None = 7 * _DAY,
        quarantine_lifetime: float = 7 * _DAY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.codec = codec
        self.key_prefix = key_prefix
        self.sid_length = sid_length
        self.permanent = permanent
        self.locking = locking and store.supports_locking
        self.absolute_lifetime = absolute_lifetime
        self.quarantine_lifetime = quarantine_lifetime
        self.clock = clock
        self._sid_chars = len(secrets.token_urlsafe(sid_length))
        self._foreign_logged: set[str] = set()

    # -- hooks -----------------------------------------------------------------

    def generate_sid(self) -> str:
        """A new session id: ``sid_length`` random bytes from :mod:`secrets`, URL-safe."""
        return secrets.token_urlsafe(self.sid_length)

    def is_valid_sid(self, sid: str | None) -> bool:
        """Whether *sid* has the charset and length of an id we issue."""
        return (
            sid is not None
            and len(sid) == self._sid_chars
            and _SID_CHARSET.fullmatch(sid) is not None
        )

    def store_key(self, sid: str) -> str:
        """The key a session is stored under."""
        return self.key_prefix + sid

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
        return self.session_class(sid, self.permanent, partial(self._load, app))

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not isinstance(session, DillSession):
            return
        session.saved = True  # a later read (e.g. in a teardown hook) takes no lock
        if not session.loaded:
            return  # never used in this request: no store I/O, no cookie change
        try:
            self._save(app, session, response)
        except SessionUnavailableError as exc:
            logger.error("session not saved, answering 503: %s", exc.description)
            _answer_unavailable(response, exc)
        finally:
            self.release(session)

    # -- lifecycle -------------------------------------------------------------

    def regenerate(self, session: DillSession) -> None:
        """Give *session* a new id, keep its data, and make the old id invalid now."""
        session.load()
        self._drop(session)
        self._start(session, created=session.created)
        session.modified = True

    def destroy(self, session: DillSession) -> None:
        """Delete *session* server-side now; the response clears its cookie (logout)."""
        session.load()
        self._drop(session)
        session.clear()  # not dict.clear: *session* may be the flask.session proxy
        self._start(session, created=self.clock())

    def release(self, session: DillSession) -> None:
        """Release the session's lock, if this request holds one. Idempotent."""
        if session.entry is not None:
            session.entry.release()

    # -- internals -------------------------------------------------------------

    def _load(self, app: Flask, session: DillSession) -> None:
        if session.cookie_sid is not None:
            key = self.store_key(session.cookie_sid)
            try:
                entry = self.store.open(key, lock=self.locking and not session.saved)
            except LockTimeoutError as exc:
                logger.warning(
                    "session %s is busy, answering 503: %s", fingerprint(key), exc.description
                )
                raise
            try:
                restored = self._restore(session, entry)
            except BaseException:
                entry.release()
                raise
            if not restored or session.saved:
                entry.release()  # otherwise held, with its lock, until save_session
            if restored:
                return
        self._start(session, created=self.clock())

    def _restore(self, session: DillSession, entry: Entry) -> bool:
        if entry.blob is None:
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
        dict.update(session, opened.data)
        session.entry = entry
        session.payload = opened.payload
        session.created = meta.created
        session.reseal = opened.reseal
        session.new = False
        session._permanent = meta.permanent
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

    def _quarantine(self, entry: Entry, exc: BadPayloadError) -> None:
        logger.warning(
            "stored session %s is unusable and was quarantined: %s", fingerprint(entry.key), exc
        )
        try:
            entry.quarantine(self.quarantine_lifetime)
        except OSError as error:
            logger.error(
                "stored session %s could not be quarantined, deleting it: %s",
                fingerprint(entry.key),
                error,
            )
            entry.delete()

    def _dropped(self, entry: Entry, dropped: dict[str, str]) -> None:
        """Some keys could not be kept: one warning each; the original stays in quarantine."""
        for key, why in dropped.items():
            logger.warning(
                "stored session %s: key %r dropped: %s", fingerprint(entry.key), key, why
            )
        entry.copy_to_quarantine(self.quarantine_lifetime)

    def _start(self, session: DillSession, *, created: float) -> None:
        session.sid = self.generate_sid()
        session.entry = self.store.new(self.store_key(session.sid))
        session.new = True
        session.payload = None
        session.created = created

    def _drop(self, session: DillSession) -> None:
        assert session.entry is not None
        if not session.new:
            session.entry.delete()
        session.entry.release()

    def _save(self, app: Flask, session: DillSession, response: Response) -> None:
        entry = session.entry
        assert entry is not None
        response.vary.add("Cookie")
        if not session:
            if not session.new:
                entry.delete()
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
        else:
            entry.touch(ttl)
        if self.should_set_cookie(app, session):
            self._set_cookie(app, session, response)

    def _changed(self, session: DillSession, payload: bytes) -> bool:
        """Whether *payload* must be written: new, assigned to, or different data."""
        return (
            session.new
            or session.modified
            or session.reseal
            or self.codec.changed(payload, session.payload)
        )

    def _absolute_deadline(self, created: float) -> float | None:
        if self.absolute_lifetime is None:
            return None
        return created + self.absolute_lifetime

    def _past_absolute(self, created: float, expires: float | None) -> bool:
        now = self.clock()
        deadline = self._absolute_deadline(created)
        return (expires is not None and now >= expires) or (
            deadline is not None and now >= deadline
        )

    def _set_cookie(self, app: Flask, session: DillSession, response: Response) -> None:
        assert session.sid is not None
        response.set_cookie(
            self.get_cookie_name(app),
            session.sid,
            expires=self.get_expiration_time(app, session),
            httponly=self.get_cookie_httponly(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
            partitioned=self.get_cookie_partitioned(app),
        )

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


def _answer_unavailable(response: Response, exc: SessionUnavailableError) -> None:
    response.status_code = 503
    response.headers["Retry-After"] = str(exc.retry_after or 1)
    response.headers.pop("Set-Cookie", None)
    response.set_data(exc.description or "Service Unavailable")
    response.mimetype = "text/plain"
