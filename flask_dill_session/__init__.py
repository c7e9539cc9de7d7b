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
    "readonly",
    "regenerate",
    "revoke_other_sessions",
]
