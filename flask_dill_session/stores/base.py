"""The store API: bytes in, bytes out, with expiry and per-session locks.

Stores know neither Flask nor dill. A request opens an :class:`Entry` for one key,
holds its lock (if any) while it works, and releases it at the end.

Errors. Every failure of a backend surfaces as
:class:`~flask_dill_session.exc.StoreUnavailableError`, and as nothing else: an
``OSError`` of any errno in the filesystem store (``ENOSPC``, ``EACCES``, ``EROFS``,
``EIO``, ``EDQUOT``, ...), any exception of the redis-py client (``RedisError``, and those
outside it such as ``RedisClusterException``), any exception of a cachelib cache. Each
backend turns failures into it in one place, its ``errors()`` context manager around every
call to the backend. The message names the
cause and where (a path, a Redis address, a cache type) and is meant for the log, not for
the client; its ``cause`` and ``where`` attributes carry the two parts. Stores do not log
these failures: the caller logs one line. Besides:

- :meth:`Store.open` raises :class:`~flask_dill_session.exc.LockTimeoutError` when
  another request holds the lock past the lock timeout;
- :meth:`Entry.write` and :meth:`Entry.strike` raise ``StoreUnavailableError`` when the
  lock was lost before them, to its lease or to a Redis failover (nothing is written:
  another request may hold the session now); ``write`` returns ``False`` only when the
  session was deleted meanwhile;
- an entry opened with ``degraded`` set (the store can be read but not written) serves its
  blob, skips :meth:`Entry.touch`, and raises ``StoreUnavailableError`` from every other
  change (``write``, ``strike``, ``delete``, ``quarantine``);
- :meth:`Entry.release` never raises.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from ..config import Settings
from ..exc import StoreUnavailableError


def fingerprint(key: str) -> str:
    """A short hash that names a session in logs and quarantine without revealing its id."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def quarantine_name(key: str, blob: bytes) -> str:
    """The name a bad blob is kept under: the session's fingerprint and a hash of the blob."""
    return f"{fingerprint(key)}:{hashlib.sha256(blob).hexdigest()[:16]}"


class Entry(ABC):
    """One stored session as opened by one request.

    ``blob`` is the stored bytes, or ``None`` when the key is absent or expired. An entry
    opened for an existing key updates it only while it still exists (a session deleted
    meanwhile is never resurrected); an entry made by :meth:`Store.new` only creates.

    ``strikes`` counts the consecutive failed requests recorded for the session by
    :meth:`strike`. :meth:`Store.open` reads it together with the blob, in the same I/O or
    round trip. It is 0 for a new or absent session, and a successful :meth:`write` or
    :meth:`touch` resets it to 0, at no extra cost when it is 0 already. A store may not
    keep strikes at all (the cachelib store: no atomic read-modify-write in its API, and a
    second cache key would cost a round trip on every request); its ``strikes`` stays 0
    and :meth:`strike` does nothing.
    """

    key: str
    blob: bytes | None
    #: Set when the stored bytes are not a session at all (``blob`` is then ``None``); the
    #: reason, such as ``"unframed content"``. The interface quarantines them.
    damage: str | None = None
    #: Whether the store could be read but not written: ``blob`` is served, ``touch`` is
    #: skipped, and every change (``write``, ``delete``, ``quarantine``) raises
    #: ``StoreUnavailableError`` with the cause of ``fault``.
    degraded: bool = False
    #: Why the entry is degraded (its ``cause`` and ``where``), for the log; else ``None``.
    fault: StoreUnavailableError | None = None
    #: How many consecutive failed requests are recorded for this session (see above).
    strikes: int = 0

    @abstractmethod
    def write(self, blob: bytes, ttl: float) -> bool:
        """Store *blob*, expiring *ttl* seconds from now, with no strikes; ``False`` if the
        key is gone.

        Raises ``StoreUnavailableError`` when nothing could be written, including when the
        lock's lease ran out first.
        """

    @abstractmethod
    def touch(self, ttl: float) -> None:
        """Move the expiry to *ttl* seconds from now without rewriting the blob, and reset
        the strikes."""

    def strike(self, ttl: float) -> None:
        """Record one more failed request (the stored count becomes ``strikes + 1``) without
        changing the blob, and move the expiry to *ttl* seconds from now.

        Like :meth:`write` and :meth:`touch`, it ends the entry's use (a store that releases
        the lock in the same step does so). It does nothing for an absent session or one
        deleted meanwhile (never resurrected). Raises ``StoreUnavailableError`` as other
        changes do. This default keeps no count: a store without strikes inherits it.
        """
        return None

    @abstractmethod
    def delete(self) -> None:
        """Remove the stored blob."""

    @abstractmethod
    def quarantine(self, ttl: float) -> None:
        """Move the stored blob aside, kept *ttl* seconds for inspection."""

    @abstractmethod
    def copy_to_quarantine(self, ttl: float) -> None:
        """Keep a copy of the blob as read, for *ttl* seconds, and leave the session."""

    @abstractmethod
    def release(self) -> None:
        """Release the lock, if held. Safe to call more than once; never raises."""


class Store(ABC):
    """A place for session blobs: one backend per module, this tiny API for all."""

    #: Whether :meth:`open` with ``lock=True`` serializes concurrent requests.
    supports_locking: bool = True
    #: What :meth:`cleanup` did, for ``flask dill-session cleanup``; ``{count}`` its result.
    cleanup_summary: str = "removed {count} expired entries"

    @classmethod
    @abstractmethod
    def from_config(cls, settings: Settings, config: Mapping[str, Any]) -> Store:
        """The store *settings* and the app's *config* describe; a
        :class:`~flask_dill_session.exc.ConfigError` naming the key if they cannot."""

    @abstractmethod
    def open(self, key: str, *, lock: bool) -> Entry:
        """Read *key*, first taking its lock if *lock* (raises ``LockTimeoutError``)."""

    @abstractmethod
    def new(self, key: str) -> Entry:
        """An entry for a key that is not stored yet; writing it creates it."""

    def cleanup(self) -> int:
        """Remove expired sessions and old quarantined blobs; return how many."""
        return 0
