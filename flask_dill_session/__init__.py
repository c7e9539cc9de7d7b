"""Server-side Flask sessions that keep real Python objects, serialized with dill."""

from .exc import (
    ConfigError,
    DillSessionError,
    LockTimeoutError,
    ReadOnlySessionError,
    SessionConflictError,
    SessionSerializationError,
    SessionTooLargeError,
    SessionUnavailableError,
    StoreUnavailableError,
)
from .extension import Session
from .helpers import current_session, destroy, regenerate, revoke_other_sessions
from .interface import DillSessionInterface, readonly
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

__version__ = "0.2.0.dev0"

__all__ = [
    "ConfigError",
    "DillSession",
    "DillSessionError",
    "DillSessionInterface",
    "LockTimeoutError",
    "ReadOnlySessionError",
    "Session",
    "SessionConflictError",
    "SessionSerializationError",
    "SessionTooLargeError",
    "SessionUnavailableError",
    "StoreUnavailableError",
    "current_session",
    "destroy",
    "lock_timeout",
    "lock_waited",
    "readonly",
    "regenerate",
    "revoke_other_sessions",
    "session_created",
    "session_destroyed",
    "session_quarantined",
    "session_regenerated",
    "session_saved",
    "store_unavailable",
]
