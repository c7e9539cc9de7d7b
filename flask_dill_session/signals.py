"""Signals of the session's life, sent with blinker as Flask sends its own.

Connect a receiver as for Flask's signals, for one app or for all::

    from flask_dill_session.signals import lock_waited

    @lock_waited.connect_via(app)
    def on_lock_waited(app, *, fingerprint, wait, **extra):
        ...

Every signal is sent by the session interface during a request, with the app as sender
and keyword arguments only, once per event. No argument carries a session id:
``fingerprint`` names the session as the log does (a hash of its store key). A signal
nobody listens to costs one check, and its arguments are not even computed. Receivers run
in the request, some while it holds the session's lock: keep them quick. As with Flask's
signals, an exception in a receiver propagates into the request. Receivers should accept
``**extra``: a later release may add arguments. The command line and the stores' own
housekeeping (``flask dill-session cleanup``, expiry) send nothing.

``session_created(app, fingerprint)``
    A new session was stored for the first time, at the end of the request that wrote it
    (before ``session_saved``). Not sent for the new id that :meth:`regenerate
    <flask_dill_session.DillSessionInterface.regenerate>` gave to a stored session: that
    is ``session_regenerated``.

``session_saved(app, fingerprint, written, size)``
    At the end of a request that used its session and kept it in the store: ``written``
    is ``True`` when the blob was written (``size`` its length in bytes), ``False`` when
    it was unchanged and only its expiry refreshed, or left as it is on a store that can
    be read but not written (``size`` is ``None``). Not sent for a
    session emptied (see ``session_destroyed``), deleted meanwhile by another request, not
    saved because the request failed, or when saving failed (``store_unavailable``).

``session_destroyed(app, fingerprint, reason)``
    A stored session was deleted: ``reason`` is ``"destroy"`` when :meth:`destroy
    <flask_dill_session.DillSessionInterface.destroy>` deleted it (logout), ``"emptied"``
    when the view left it empty and it was deleted at the end of the request. A session
    that was never stored sends nothing.

``session_regenerated(app, fingerprint, old_fingerprint)``
    :meth:`regenerate <flask_dill_session.DillSessionInterface.regenerate>` gave the
    session a new id (``fingerprint``) and retired the old one (``old_fingerprint``:
    read-only for the rotation grace, or deleted without one), once per call.

``session_quarantined(app, fingerprint, reason, copy)``
    A stored blob was put in quarantine for an operator (the warning in the log names the
    same fingerprint and reason). ``copy`` is ``False`` when the session was unusable and
    moved there (the request goes on with a fresh session), ``True`` when keys were
    dropped on loading and a copy of the original was kept (the session goes on without
    them; ``reason`` names the keys). Not sent when the store refused (logged).

``lock_waited(app, fingerprint, wait)``
    The request got its session's lock after another request had held it: ``wait`` is
    the seconds it waited (from its first refused try), always above 0. Not sent when the
    lock was free at once, nor when the wait ended in ``lock_timeout``.

``lock_timeout(app, fingerprint, error)``
    The request gave up waiting for its session's lock and is answered 503; ``error`` is
    the :class:`~flask_dill_session.LockTimeoutError`.

``store_unavailable(app, fingerprint, error, saving)``
    The store failed while the request used its session (disk full or read-only, Redis
    unreachable, a lease that ran out): ``error`` is the
    :class:`~flask_dill_session.StoreUnavailableError` (its ``cause`` and ``where``).
    ``saving`` is ``False`` when the session was read or changed during the request,
    ``True`` when it failed at the end (writing, refreshing, deleting, recording a failed
    request). The request is answered 503, except when recording a failed request (the
    answer stays that of the failure). ``fingerprint`` is ``None`` when the request had no
    session id yet.
"""

from __future__ import annotations

from blinker import Namespace

__all__ = [
    "ALL",
    "lock_timeout",
    "lock_waited",
    "session_created",
    "session_destroyed",
    "session_quarantined",
    "session_regenerated",
    "session_saved",
    "store_unavailable",
]

# This namespace is only for the signals of this package.
_signals = Namespace()

session_created = _signals.signal("session-created", "A new session was first stored.")
session_saved = _signals.signal("session-saved", "A used session was kept at the end.")
session_destroyed = _signals.signal("session-destroyed", "A stored session was deleted.")
session_regenerated = _signals.signal("session-regenerated", "A session got a new id.")
session_quarantined = _signals.signal("session-quarantined", "A blob was quarantined.")
lock_waited = _signals.signal("lock-waited", "A request waited for its session's lock.")
lock_timeout = _signals.signal("lock-timeout", "A request gave up waiting for the lock.")
store_unavailable = _signals.signal("store-unavailable", "The store failed a request.")

#: Every signal of this package, for a receiver that connects to them all.
ALL = (
    session_created,
    session_saved,
    session_destroyed,
    session_regenerated,
    session_quarantined,
    lock_waited,
    lock_timeout,
    store_unavailable,
)
