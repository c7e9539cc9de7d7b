"""All errors raised by flask_dill_session, under one base class. Plain Python: the
interface decides what each becomes in HTTP."""

from __future__ import annotations


class DillSessionError(Exception):
    """Base class of every error this package raises."""


class ConfigError(DillSessionError, ValueError):
    """A configuration value is missing or invalid; the message names the key."""


class UnsupportedError(DillSessionError):
    """The store cannot do this (e.g. list the sessions of a cachelib cache); the message
    says which store and what."""


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


class SessionConflictError(DillSessionError):
    """With ``SESSION_DILL_LOCKING = "writes"``: another request saved the session after
    this one read it, so this request's change was not saved. Answered as HTTP 409."""


class ReadOnlySessionError(DillSessionError, RuntimeError):
    """``regenerate`` or ``destroy`` was called in a view marked :func:`~.readonly`."""


class BadPayloadError(DillSessionError):
    """A stored blob failed authentication, is truncated, or cannot be loaded."""


class ForeignPayloadError(DillSessionError):
    """A stored blob this process cannot read, though it may be valid for another one.

    It was sealed with a secret this process does not hold (*key_id*, hex, names that
    secret), it is encrypted and ``cryptography`` is not installed here, its format is newer
    than this release, or it holds dill code of another Python version. Leave it in place
    and treat the session as absent here.
    """

    def __init__(self, message: str, key_id: str | None = None) -> None:
        self.key_id = key_id
        super().__init__(message)


class SessionUnavailableError(DillSessionError):
    """The session cannot be used right now: answered as HTTP 503 with ``Retry-After``.

    The message names the cause and where (a path, a Redis address): it is meant for the
    log, never for the client. ``cause`` (``"No space left on device"``) and ``where``
    carry the two parts; ``fingerprint`` names the session once the interface knows it.
    """

    def __init__(
        self, message: str, retry_after: int = 1, *, cause: str = "", where: str = ""
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.cause = cause or message
        self.where = where
        self.fingerprint = ""
        self.reported = False  # logged already: each failure is logged once


class LockTimeoutError(SessionUnavailableError):
    """Another request held the session's lock for longer than the lock timeout."""


class StoreUnavailableError(SessionUnavailableError):
    """The session store could not be reached, or failed (disk full, read-only, Redis down,
    a lock lost to its lease or a failover, a write fewer replicas confirmed than asked):
    nothing was written, or nothing known to last."""
