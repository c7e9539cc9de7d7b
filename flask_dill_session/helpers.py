"""Typed helpers for views: the current session and what to do with it.

``flask.session`` is typed as a plain :class:`~flask.sessions.SessionMixin`; these give
the :class:`DillSession` behind it, and the interface's lifecycle operations, without
reaching for ``app.session_interface`` in every view.
"""

from __future__ import annotations

from flask import current_app
from flask.globals import request_ctx

from .exc import DillSessionError
from .interface import DillSessionInterface, request_session
from .session import DillSession


def current_session() -> DillSession:
    """The request's session; :class:`~.exc.DillSessionError` outside a request or when
    the app does not use dill sessions."""
    session = request_session() if request_ctx else None
    if not isinstance(session, DillSession):
        raise DillSessionError(
            'no dill session here: call this in a request of an app with SESSION_TYPE = "dill"'
        )
    return session


def interface() -> DillSessionInterface:
    """The current app's session interface."""
    found = current_app.session_interface
    if not isinstance(found, DillSessionInterface):
        raise DillSessionError('the app does not use dill sessions (SESSION_TYPE = "dill")')
    return found


def regenerate() -> None:
    """Give the current session a new id and keep its data (call it at login)."""
    interface().regenerate(current_session())


def destroy() -> None:
    """Delete the current session now and clear its cookie (call it at logout)."""
    interface().destroy(current_session())


def revoke_other_sessions() -> int:
    """ "Log out other devices": delete every other session of the current session's user
    (``SESSION_DILL_USER_KEY``) now; how many. Requires the user index."""
    session, found = current_session(), interface()
    key = found.settings.user_key
    if key is None:
        raise DillSessionError("revoke_other_sessions needs SESSION_DILL_USER_KEY")
    user = session.get(key)
    if user is None:
        return 0
    return found.revoke_user(user, keep=session.sid)
