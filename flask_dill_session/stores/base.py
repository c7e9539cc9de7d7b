"""The store API: bytes in, bytes out, with expiry and per-session locks.

Stores know neither Flask nor dill. A request opens an :class:`Entry` for one key,
holds its lock (if any) while it works, and releases it at the end.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod


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
    """

    key: str
    blob: bytes | None

    @abstractmethod
    def write(self, blob: bytes, ttl: float) -> bool:
        """Store *blob*, expiring *ttl* seconds from now; ``False`` if the key is gone."""

    @abstractmethod
    def touch(self, ttl: float) -> None:
        """Move the expiry to *ttl* seconds from now without rewriting the blob."""

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
        """Release the lock, if held. Safe to call more than once."""


class Store(ABC):
    """A place for session blobs: one backend per module, this tiny API for all."""

    #: Whether :meth:`open` with ``lock=True`` serializes concurrent requests.
    supports_locking: bool = True

    @abstractmethod
    def open(self, key: str, *, lock: bool) -> Entry:
        """Read *key*, first taking its lock if *lock* (raises ``LockTimeoutError``)."""

    @abstractmethod
    def new(self, key: str) -> Entry:
        """An entry for a key that is not stored yet; writing it creates it."""

    def cleanup(self) -> int:
        """Remove expired sessions and old quarantined blobs; return how many."""
        return 0
