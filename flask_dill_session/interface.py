"""The Flask glue: a :class:`~flask.sessions.SessionInterface` over a store and the codec.

It is also the one place where errors become HTTP: a store that fails or a lock not
acquired is answered 503 with ``Retry-After`` and logged once on the
``flask_dill_session`` logger, whether the session was first used in a view, in a hook
after it, or at the end when saving; a write refused because another request saved the
session first (``SESSION_DILL_LOCKING = "writes"``) is answered 409.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar, cast

from flask import Flask, Request, Response, after_this_request, current_app
from flask.ctx import RequestContext
from flask.globals import request_ctx
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.http import dump_cookie, parse_cookie
from werkzeug.local import LocalProxy
from werkzeug.sansio.request import Request as SansioRequest

from .codec import Codec, Meta, Opened
from .config import DEFAULTS, Settings
from .exc import (
    BadPayloadError,
    ForeignPayloadError,
    ReadOnlySessionError,
    SessionConflictError,
    SessionUnavailableError,
)
from .incidents import Incidents, logger, send
from .inventory import Inventory, SessionInfo
from .session import DillSession
from .signals import (
    lock_waited,
    session_created,
    session_destroyed,
    session_regenerated,
    session_saved,
)
from .stores.base import Entry, Store, fingerprint

_SID_CHARSET = re.compile(r"[A-Za-z0-9_-]+")
_COOKIE_HEADERS_KEPT = 4096  # Set-Cookie headers remembered, for requests within a second
_RETIRED_KEPT = 3600.0  # seconds an id replaced by regenerate is remembered, to log its use
_READONLY = "_dill_session_readonly"  # set on a view function by readonly()
_WERKZEUG_COOKIES = SansioRequest.cookies
# The request context itself: an attribute read through the proxy costs about 0.5 µs.
_request_context = cast("LocalProxy[RequestContext]", request_ctx)._get_current_object

View = TypeVar("View", bound=Callable[..., Any])


def readonly(view: View) -> View:
    """Mark *view* as one that only reads the session: it is loaded without the lock, and
    a change made there is not saved (logged once per view). Returns *view* itself."""
    setattr(view, _READONLY, True)
    return view


class DillSessionInterface(SessionInterface):
    """Server-side sessions serialized with dill, authenticated, and kept in a :class:`Store`.

    The session is read (and its lock taken) on first use in a request, and saved at the
    end of the response only if its serialized form changed; otherwise its expiry is
    refreshed with a touch. With ``SESSION_DILL_LOCKING = "writes"`` the lock is taken
    only to save, after checking that the stored session is still the one read. Policy
    lives in small hooks a subclass may override.
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
        self.locking = settings.locking is True and store.supports_locking  # lock on load
        self.lock_writes = settings.locking == "writes" and store.supports_locking
        self.clock = clock
        self._sid_chars = len(secrets.token_urlsafe(settings.sid_length))
        self.incidents = Incidents(settings.quarantine_lifetime)
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
        """Flask's rule (``modified``, or permanent with ``SESSION_REFRESH_EACH_REQUEST``),
        and whenever the id changed: the client must learn a new id."""
        assert isinstance(session, DillSession)
        return (
            session.modified
            or session._sid != session.cookie_sid
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
        sid = _cookies(request).get(self.get_cookie_name(app))
        if not self.is_valid_sid(sid):
            sid = None
        after_this_request(_after_view)  # runs first of the response's hooks
        return self.session_class(sid, self.settings.permanent, partial(self._load, app, request))

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
            self.incidents.unavailable(exc, self._name(session), saving=True)
            self.answer_unavailable(response, exc)
        except SessionConflictError as exc:
            logger.warning("session %s: %s, answering 409", self._name(session) or "(new)", exc)
            self.answer_conflict(response)
        finally:
            self.release(session)

    # -- errors as HTTP ------------------------------------------------------------

    def handle_unavailable(self, exc: SessionUnavailableError) -> Response:
        """Flask error handler: the session could not be used in the view, so 503."""
        session = request_session()
        if isinstance(session, DillSession):
            self.incidents.unavailable(exc, self._name(session))
        response = current_app.response_class()
        self.answer_unavailable(response, exc)
        return response

    def answer_unavailable(self, response: Response, exc: SessionUnavailableError) -> None:
        """Make *response* a 503 with ``Retry-After``; of what the view set, only ``Vary``
        stays (no ``Location``, ``ETag``, ``Set-Cookie``...)."""
        _replace(response, 503, "Service Unavailable: the session cannot be used now, try again.")
        response.headers["Retry-After"] = str(exc.retry_after or 1)

    def answer_conflict(self, response: Response) -> None:
        """Make *response* a 409: another request saved the session first, this one's
        change was not saved. Of what the view set, only ``Vary`` stays."""
        _replace(
            response,
            409,
            "Conflict: the session was changed by another request, and this request's"
            " change was not saved; reload and try again.",
        )

    def _name(self, session: DillSession) -> str | None:
        """The session's fingerprint; ``None`` while it has no id."""
        sid = session._sid or session.cookie_sid
        return fingerprint(self.store_key(sid)) if sid else None

    # -- lifecycle -------------------------------------------------------------

    def regenerate(self, session: DillSession) -> None:
        """Give *session* a new id and keep its data. The old id stays readable, read-only,
        for ``rotation_grace`` seconds (requests of the same page still carrying it), then
        is unknown; without a grace it is invalid at once."""
        session.load()
        self._check_writable(session, "regenerate")
        old = session.entry
        session.rotated = session.rotated or not session.new  # its data is stored already
        grace = self.settings.rotation_grace
        if grace and not session.new and not session.retired:
            self._retire(session, grace)
        else:
            self._drop(session)
        self._start(session, created=session.created)
        session.modified = True
        if session_regenerated.receivers and old is not None and session.entry is not None:
            new = fingerprint(session.entry.key)
            send(session_regenerated, fingerprint=new, old_fingerprint=fingerprint(old.key))

    def destroy(self, session: DillSession) -> None:
        """Delete *session* server-side now; the response clears its cookie (logout)."""
        session.load()
        self._check_writable(session, "destroy")
        stored = not session.new
        self._drop(session)
        if stored and session_destroyed.receivers and session.entry is not None:
            send(session_destroyed, fingerprint=fingerprint(session.entry.key), reason="destroy")
        session.clear()  # not dict.clear: *session* may be the flask.session proxy
        session.rotated = False
        self._start(session, created=self.clock())

    def inventory(self, app: Flask) -> Inventory:
        """The operations on this app's stored sessions (listing, checking, revoking)."""
        return Inventory(self.store, self.codec, self.idle_lifetime(app), clock=self.clock)

    def sessions_of(self, user: object) -> list[SessionInfo]:
        """The stored sessions of *user* (the value of ``SESSION_DILL_USER_KEY``), read from
        the index without loading any session."""
        return list(self.inventory(current_app).sessions(str(user)))

    def revoke_user(self, user: object, keep: str | None = None) -> int:
        """Delete every session of *user* now, but the one of session id *keep*; how many.
        A request holding one meanwhile does not write it back: its client's next request
        gets a fresh session."""
        handle = None if keep is None else self.store.handle(self.store_key(keep))
        return self.inventory(current_app).revoke_user(str(user), keep=handle)

    def release(self, session: DillSession) -> None:
        """Release the session's lock, if this request holds one. Idempotent."""
        if session.entry is not None:
            session.entry.release()

    # -- internals -------------------------------------------------------------

    @staticmethod
    def _check_writable(session: DillSession, action: str) -> None:
        if session.readonly:
            raise ReadOnlySessionError(
                f"{action}() in a view marked readonly: its session is never saved"
            )

    def _load(self, app: Flask, request: Request, session: DillSession) -> None:
        view = app.view_functions.get(request.endpoint) if request.endpoint else None
        session.readonly = getattr(view, _READONLY, False)
        if session.unavailable is None:
            try:
                if session.cookie_sid is None or not self._open(session, session.cookie_sid):
                    self._start(session, created=self.clock())
                return
            except SessionUnavailableError as exc:
                self.incidents.unavailable(exc, self._name(session))
                session.unavailable = exc
        # Used after the view: an empty session for the hook, and save_session answers 503.
        if not session.after_view:
            raise session.unavailable

    def _open(self, session: DillSession, sid: str) -> bool:
        """Read the stored session *sid* into *session*; whether there was a usable one."""
        lock = self.locking and not (session.saved or session.readonly)
        entry = self.store.open(self.store_key(sid), lock=lock)
        if lock_waited.receivers and entry.waited:
            send(lock_waited, fingerprint=fingerprint(entry.key), wait=entry.waited)
        if entry.degraded:
            self.incidents.degraded(entry)
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
                self.incidents.quarantine(entry, entry.damage)
            return False
        try:
            opened = self.codec.open(entry.key, entry.blob)
        except ForeignPayloadError as exc:
            self.incidents.foreign(entry, exc)
            session.foreign = True
            return False
        except BadPayloadError as exc:
            self.incidents.quarantine(entry, exc)
            return False
        meta = opened.meta
        if meta.retired:
            return self._served_retired(session, entry, opened)
        if self._past_absolute(meta.created, meta.expires):
            entry.delete()
            return False
        for note in opened.notes:
            logger.warning("stored session %s: %s", fingerprint(entry.key), note)
        if opened.dropped:
            self.incidents.dropped(entry, opened.dropped)
        session._restore(
            opened.data,
            entry,
            payload=opened.payload,
            created=meta.created,
            permanent=meta.permanent,
            reseal=opened.reseal,
        )
        if self.settings.user_key is not None:
            session.indexed_user = self._user_of(opened.data)
        return True

    def _start(self, session: DillSession, *, created: float) -> None:
        sid = self.generate_sid()
        session._reset(sid, self.store.new(self.store_key(sid)), created=created)

    def _retire(self, session: DillSession, grace: float) -> None:
        """Store *session*'s data under its old id as retired, readable until *grace*
        seconds from now and remembered for ``_RETIRED_KEPT`` (to log a later use)."""
        entry = session.entry
        assert entry is not None
        data = dict(session.items())  # *session* may be the flask.session proxy
        meta = Meta(session.permanent, session.created, self.clock() + grace, retired=True)
        try:
            entry.write(
                self.codec.seal(entry.key, data, self.codec.dumps(data), meta), _RETIRED_KEPT
            )
        finally:
            entry.release()

    def _served_retired(self, session: DillSession, entry: Entry, opened: Opened) -> bool:
        """A retired blob: its data, read-only, within its grace; else a warning, and no
        session."""
        entry.release()  # read-only: no lock held
        name, now = fingerprint(entry.key), self.clock()
        ends = opened.meta.expires or 0.0
        if now >= ends:
            logger.warning(
                "session %s: an id replaced by regenerate was used %.0f s after its grace"
                " ended: possibly a stolen session id; answered with a new session",
                name,
                now - ends,
            )
            return False
        session._restore(
            opened.data,
            entry,
            payload=opened.payload,
            created=opened.meta.created,
            permanent=opened.meta.permanent,
            reseal=False,
        )
        session.retired = True
        return True

    def _drop(self, session: DillSession) -> None:
        assert session.entry is not None
        if not session.new:
            session.entry.delete()
        session.entry.release()

    def _save(self, app: Flask, session: DillSession, response: Response) -> None:
        entry = session.entry
        assert entry is not None
        # getlist, not `in`: werkzeug's `in` raises and catches a KeyError when absent.
        if response.headers.getlist("Vary"):
            response.vary.add("Cookie")
        else:  # as above, without parsing and rewriting the header set
            response.headers.add("Vary", "Cookie")
        if session.retired:
            self._drop_retired_write(session)
            return
        ttl = self.idle_lifetime(app)
        if not session:
            if session.readonly and not session.new:
                self._not_saved(session, entry, ttl)
                return
            if not session.new:
                entry.delete()  # also in "writes" mode, unlocked: ending a session always applies
                if session_destroyed.receivers:
                    send(session_destroyed, fingerprint=fingerprint(entry.key), reason="emptied")
            if session.cookie_sid is not None and not session.foreign:
                self._delete_cookie(app, response)
            return
        data = dict.copy(session)
        payload = self.codec.dumps(data)
        if not self._changed(session, payload):
            entry.touch(ttl)
            if session_saved.receivers:
                send(session_saved, fingerprint=fingerprint(entry.key), written=False, size=None)
        elif session.readonly:
            self._not_saved(session, entry, ttl)
            if session.new:
                return
        else:
            if self.lock_writes and not session.new:
                relocked = self._relock(session, entry)
                if relocked is None:
                    return  # deleted meanwhile: do not resurrect
                entry = relocked
            deadline = self._absolute_deadline(session.created)
            meta = Meta(session.permanent, session.created, deadline)
            blob = self.codec.seal(entry.key, data, payload, meta)
            if not entry.write(blob, ttl):
                return  # deleted meanwhile (logout elsewhere): do not resurrect
            if self.settings.user_key is not None:
                self._index(session, data, ttl)
            if session_created.receivers and session.new and not session.rotated:
                send(session_created, fingerprint=fingerprint(entry.key))
            if session_saved.receivers:
                name = fingerprint(entry.key)
                send(session_saved, fingerprint=name, written=True, size=len(blob))
        if self.should_set_cookie(app, session):
            self._set_cookie(app, session, response)

    def _relock(self, session: DillSession, entry: Entry) -> Entry | None:
        """In "writes" mode: *entry* opened again under its lock if the store still holds
        what this request read; ``None`` if it is gone; else :class:`SessionConflictError`.
        Equal bytes are equal data, so comparing the blobs is comparing versions."""
        locked = self.store.open(entry.key, lock=True)
        if locked.blob is not None and locked.blob == entry.blob:
            entry.release()
            session.entry = locked  # released by save_session
            return locked
        locked.release()
        if locked.blob is None:
            return None
        raise SessionConflictError("another request saved it after this one read it")

    def _user_of(self, data: Mapping[str, object]) -> str | None:
        user = data.get(self.settings.user_key or "")
        return None if user is None else str(user)

    def _index(self, session: DillSession, data: Mapping[str, object], ttl: float) -> None:
        """Record a written session under its user, when that user is new to it."""
        user = self._user_of(data)
        if user is not None and user != session.indexed_user:
            assert session.entry is not None
            handle = self.store.handle(session.entry.key)
            self.store.index(user, handle, self.clock() + ttl)
            session.indexed_user = user

    def _drop_retired_write(self, session: DillSession) -> None:
        """A request with an id in its rotation grace: nothing is written, no cookie set."""
        if session.modified or self.codec.changed(
            self.codec.dumps(dict.copy(session)), session.payload
        ):
            assert session.entry is not None
            logger.warning(
                "session %s: a change made with an id replaced by regenerate (in its"
                " rotation grace) was not saved",
                fingerprint(session.entry.key),
            )

    def _not_saved(self, session: DillSession, entry: Entry, ttl: float) -> None:
        """A view marked readonly changed the session: keep the stored one, say so once."""
        session.modified, session._permanent = False, session.stored_permanent
        if not session.new:
            entry.touch(ttl)
        self.incidents.readonly_changed(request_ctx.request.endpoint or "?")

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
                self.incidents.unavailable(exc, self._name(session), saving=True)
            return
        self.incidents.quarantine(
            entry, f"{limit} requests in a row that used it ended in an unhandled exception"
        )

    def _changed(self, session: DillSession, payload: bytes) -> bool:
        """Whether *payload* must be written: a new session, one to re-seal, another
        ``permanent``, or other bytes (``modified`` alone is not enough: same bytes). Bytes
        that differ hold other data when the view assigned something; otherwise the codec
        tells equal data serialized differently (set order) from a change in place."""
        if session.new or session.reseal or session.permanent != session.stored_permanent:
            return True
        if session.modified:
            return payload != session.payload
        return self.codec.changed(payload, session.payload)

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
        sid = session._sid
        assert sid is not None
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
        key = (sid, None if expires is None else int(expires.timestamp()), attributes)
        header = self._cookie_headers.get(key)
        if header is None:
            name, domain, path, secure, httponly, samesite, partitioned = attributes
            header = dump_cookie(
                name,
                sid,
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


def _replace(response: Response, status: int, text: str) -> None:
    """Make *response* a plain-text *status* answer; of its headers only ``Vary`` stays."""
    vary = response.headers.get("Vary")
    response.headers.clear()
    if vary:
        response.headers["Vary"] = vary
    response.status_code = status
    response.set_data(text)
    response.mimetype = "text/plain"


def _cookies(request: Request) -> Mapping[str, str]:
    """``request.cookies``; for werkzeug's own, its parse of the Cookie header read from the
    environ (``request.cookies`` first finds that header by walking every header)."""
    if type(request).cookies is _WERKZEUG_COOKIES:
        return parse_cookie(request.environ)
    return request.cookies  # a request class of the app's own: what it says


def request_session() -> SessionMixin | None:
    """The request's session, without marking it ``accessed`` as ``request_ctx.session``
    does: our own hooks are no use of the session by the app."""
    return _request_context()._session


def _after_view(response: Response) -> Response:
    """The view has returned: a store failure from now on is answered by save_session."""
    session = request_session()
    if isinstance(session, DillSession):
        session.after_view = True
    return response
