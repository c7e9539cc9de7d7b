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

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from ..config import Settings
from ..exc import StoreUnavailableError, UnsupportedError
from ..names import fingerprint, quarantine_name

__all__ = ["Entry", "Item", "Store", "fingerprint", "quarantine_name"]


@dataclass(frozen=True, slots=True)
class Item:
    """One stored blob as the operations commands see it, named by the store's own
    *handle* (a file name, a Redis key), never by a session id."""

    handle: str
    blob: bytes | None  # None: the stored bytes are no session at all (see damage)
    deadline: float  # a session's idle deadline; a quarantined blob's keep-until time
    size: int  # bytes the store holds for it
    damage: str | None = None


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
    #: Seconds :meth:`Store.open` waited for the lock while another request held it,
    #: from its first refused try; 0.0 when it got the lock at once (read no clock then).
    waited: float = 0.0

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
    #: Whether :meth:`index` and :meth:`indexed` work (``SESSION_DILL_USER_KEY``).
    supports_index: bool = False
    #: What :meth:`cleanup` did, for ``flask dill-session cleanup``; ``{count}`` its result.
    cleanup_summary: str = "removed {count} expired entries"

    @classmethod
    @abstractmethod
    def from_config(cls, settings: Settings, config: Mapping[str, Any]) -> Store:
        """The store *settings* and the app's *config* describe; a
        :class:`~flask_dill_session.exc.ConfigError` naming the key if they cannot."""

    @abstractmethod
    def open(self, key: str, *, lock: bool) -> Entry:
        """Read *key*, first taking its lock if *lock* (raises ``LockTimeoutError``); the
        entry's ``waited`` is how long it waited for the lock."""

    @abstractmethod
    def new(self, key: str) -> Entry:
        """An entry for a key that is not stored yet; writing it creates it."""

    def cleanup(self, report: Counter[str] | None = None) -> int:
        """Remove expired sessions and old quarantined blobs; return how many, and count
        them by kind in *report* if given."""
        return 0

    # -- operations (the command line); none is on a request's path --------------------
    # A store that cannot do one raises UnsupportedError (via _unsupported).

    def describe(self) -> str:
        """Where the sessions are, for messages: a directory, a Redis address."""
        return type(self).__name__

    def handle(self, key: str) -> str:
        """The store's own name for the session stored under *key*."""
        self._unsupported("name stored sessions")

    def items(self) -> Iterator[Item]:
        """Every stored session, the expired ones not yet removed included."""
        self._unsupported("list stored sessions")

    def item(self, handle: str) -> Item | None:
        """The stored session *handle*, ``None`` if it is gone."""
        self._unsupported("read sessions by name")

    def remove(self, handle: str) -> bool:
        """Delete the session *handle* now; a request holding it meanwhile never writes it
        back. ``False`` if it was gone."""
        self._unsupported("delete sessions by name")

    def quarantined(self) -> Iterator[Item]:
        """Every blob kept in quarantine."""
        self._unsupported("list its quarantine")

    def restore(self, handle: str, blob: bytes, ttl: float) -> bool:
        """Store *blob*, taken from the quarantined *handle*, back as its session, expiring
        *ttl* seconds from now, and drop it from quarantine; ``False`` if that session
        exists again (nothing changed) or the quarantined blob is gone."""
        self._unsupported("restore from quarantine")

    def discard(self, handle: str) -> bool:
        """Delete the quarantined blob *handle*; ``False`` if it was gone."""
        self._unsupported("purge its quarantine")

    def index(self, user: str, handle: str, deadline: float) -> None:
        """Record that the session *handle*, live until about *deadline*, belongs to
        *user*. Entries of sessions gone since are pruned when read."""
        self._unsupported("index sessions by user")

    def indexed(self, user: str | None = None) -> Iterator[tuple[str, str]]:
        """``(user, handle)`` for every indexed session of *user* (of every user if
        ``None``) that still exists."""
        self._unsupported("index sessions by user")

    def _unsupported(self, what: str) -> NoReturn:
        raise UnsupportedError(f"{self.describe()} cannot {what}")
