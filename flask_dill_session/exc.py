"""All errors raised by flask_dill_session, under one base class."""

from __future__ import annotations

from werkzeug.exceptions import ServiceUnavailable


class DillSessionError(Exception):
    """Base class of every error this package raises."""


class ConfigError(DillSessionError, ValueError):
    """A configuration value is missing or invalid; the message names the key."""


class SessionSerializationError(DillSessionError, TypeError):
    """A session value cannot be serialized; the message names its key path and type.

    The previously stored session is left untouched.
    """

    def __init__(self, path: str, type_name: str, reason: str = "") -> None:
        self.path = path
        self.type_name = type_name
        detail = f" ({reason})" if reason else ""
        super().__init__(f"cannot serialize {path}: {type_name}{detail}")


class SessionTooLargeError(DillSessionError):
    """The serialized session exceeds ``SESSION_DILL_MAX_SIZE``; nothing was stored."""

    def __init__(self, size: int, limit: int, largest: list[tuple[str, int]]) -> None:
        self.size = size
        self.limit = limit
        self.largest = largest
        keys = ", ".join(f"{key!r} ({n} bytes)" for key, n in largest)
        super().__init__(
            f"session is {size} bytes, over the limit of {limit} bytes; largest keys: {keys}"
        )


class BadPayloadError(DillSessionError):
    """A stored blob failed authentication, is truncated, or cannot be loaded."""


class SessionUnavailableError(DillSessionError, ServiceUnavailable):
    """The session cannot be used right now; answered as HTTP 503 with Retry-After."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        ServiceUnavailable.__init__(self, message, retry_after=retry_after)


class LockTimeoutError(SessionUnavailableError):
    """Another request held the session's lock for longer than the lock timeout."""


class StoreUnavailableError(SessionUnavailableError):
    """The session store could not be reached or answered with an error.

    The message names the cause and where (a path, a Redis address): it is meant for the
    log, not for the client. ``cause`` (``"No space left on device"``) and ``where`` carry
    the two parts separately.
    """

    def __init__(
        self, message: str, retry_after: int = 1, *, cause: str = "", where: str = ""
    ) -> None:
        super().__init__(message, retry_after)
        self.cause = cause
        self.where = where
