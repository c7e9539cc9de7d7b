"""Server-side Flask sessions that keep real Python objects, serialized with dill."""

from .exc import (
    ConfigError,
    DillSessionError,
    LockTimeoutError,
    SessionSerializationError,
    SessionTooLargeError,
    SessionUnavailableError,
    StoreUnavailableError,
)
from .extension import Session
from .interface import DillSessionInterface
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

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DillSession",
    "DillSessionError",
    "DillSessionInterface",
    "LockTimeoutError",
    "Session",
    "SessionSerializationError",
    "SessionTooLargeError",
    "SessionUnavailableError",
    "StoreUnavailableError",
    "lock_timeout",
    "lock_waited",
    "session_created",
    "session_destroyed",
    "session_quarantined",
    "session_regenerated",
    "session_saved",
    "store_unavailable",
]
