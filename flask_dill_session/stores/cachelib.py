"""cachelib store: sessions in any :class:`cachelib.base.BaseCache` (memcached, valkey, ...).

The cache holds the authenticated blob (``bytes``) under the store key, with the idle
lifetime as its timeout. The dill codec and the MAC sit on top, as with every store.

What the generic cache API cannot give, and so this store does not do:

- **no locking** (``supports_locking = False``): concurrent requests of one session may
  lose updates, as in Flask-Session. Use the filesystem or Redis store when that matters;
- **no cheap touch**: ``BaseCache`` has no "expire" operation, so refreshing an unchanged
  session's expiry rewrites the same bytes (only after checking that they are still the
  ones this request read, so a read-only request does not undo a concurrent change);
- updates of an existing session and quarantine check, then act, in two steps (``has``
  then ``set``), not atomically;
- **no strikes**: ``strikes`` stays 0 and :meth:`~.base.Entry.strike` does nothing.
  Counting failed requests needs an atomic read-modify-write, which ``BaseCache`` lacks,
  and a count under a second cache key would cost one more round trip on every request.

The cache serializes values itself: most cachelib caches (``FileSystemCache``,
``RedisCache``, ``MongoDbCache``, ...) pickle what they store and unpickle it on read,
*before* this package can check its MAC. Write access to such a cache is therefore code
execution, whatever this package does; keep it as private as the application itself.
Timeouts are whole seconds (rounded up), since that is what cachelib takes. Any exception
of the cache, and a cache that does not store a new value, is raised as
:class:`~flask_dill_session.exc.StoreUnavailableError` naming the cause and the cache type.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

from cachelib.base import BaseCache

from ..config import Settings
from ..exc import ConfigError, DillSessionError, StoreUnavailableError
from .base import Entry, Store, quarantine_name

logger = logging.getLogger("flask_dill_session")


def _seconds(ttl: float) -> int:
    """A cachelib timeout: whole seconds, at least 1 (0 would mean "never expires")."""
    return max(1, math.ceil(ttl))


class CacheLibStore(Store):
    """Session blobs in *cache*; quarantined blobs under *quarantine_prefix*."""

    supports_locking = False

    def __init__(self, cache: BaseCache, *, quarantine_prefix: str = "quarantine:") -> None:
        self.cache = cache
        self.quarantine_prefix = quarantine_prefix
        self.name = type(cache).__name__

    @classmethod
    def from_config(cls, settings: Settings, config: Mapping[str, Any]) -> CacheLibStore:
        """``SESSION_CACHELIB`` must be a cachelib cache; warn that it has no locks."""
        cache = config.get("SESSION_CACHELIB")
        if not isinstance(cache, BaseCache):
            raise ConfigError(
                "SESSION_CACHELIB must be a cachelib cache (a cachelib.base.BaseCache) when"
                f' SESSION_DILL_BACKEND is "cachelib", got {type(cache).__name__}'
            )
        if settings.locking:
            logger.warning(
                "SESSION_DILL_LOCKING is on, but the cachelib backend (%s) has no locks:"
                " concurrent requests of one session may lose updates; use the filesystem"
                " or redis backend for locking, or set SESSION_DILL_LOCKING = False",
                type(cache).__name__,
            )
        return cls(cache, quarantine_prefix=f"quarantine:{settings.key_prefix}")

    def new(self, key: str) -> Entry:
        return _CacheEntry(self, key, None)

    def open(self, key: str, *, lock: bool) -> Entry:
        """Read *key*; *lock* is ignored: this store has no locks."""
        return _CacheEntry(self, key, self.get(key))

    def get(self, key: str) -> bytes | None:
        """The bytes stored under *key*; ``None`` if absent, expired or not bytes."""
        with self.errors("reading a session"):
            value = self.cache.get(key)
        return value if isinstance(value, bytes) else None

    @contextlib.contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Raise any exception of the cache as :class:`StoreUnavailableError` (the one place
        it is), naming its cause and the cache."""
        try:
            yield
        except DillSessionError:
            raise
        except Exception as exc:
            detail = str(exc)
            cause = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            raise self.unavailable(action, cause) from exc

    def unavailable(self, action: str, cause: str) -> StoreUnavailableError:
        """The error for *cause*, met while *action*."""
        return StoreUnavailableError(
            f"session store unavailable: {cause} while {action} ({self.name})",
            cause=cause,
            where=self.name,
        )

    def fail(self, action: str, cause: str) -> NoReturn:
        """Raise :class:`StoreUnavailableError` for *cause*, met while *action*."""
        raise self.unavailable(action, cause)


class _CacheEntry(Entry):
    def __init__(self, store: CacheLibStore, key: str, blob: bytes | None) -> None:
        self.store = store
        self.key = key
        self.blob = blob

    @property
    def _cache(self) -> Any:
        return self.store.cache

    def write(self, blob: bytes, ttl: float) -> bool:
        timeout = _seconds(ttl)
        with self.store.errors("writing a session"):
            if self.blob is None:
                if self._cache.add(self.key, blob, timeout=timeout):
                    return True
                if self._cache.has(self.key):
                    return False  # taken: the caller starts another session
                self.store.fail("writing a session", "the cache did not store it")
            if not self._cache.has(self.key):
                return False  # deleted meanwhile (logout elsewhere): do not resurrect
            if not self._cache.set(self.key, blob, timeout=timeout):
                self.store.fail("writing a session", "the cache did not store it")
        return True

    def touch(self, ttl: float) -> None:
        if self.blob is None:
            return
        with self.store.errors("refreshing a session's expiry"):
            if self.store.get(self.key) == self.blob:
                self._cache.set(self.key, self.blob, timeout=_seconds(ttl))

    def delete(self) -> None:
        if self.blob is not None:
            with self.store.errors("deleting a session"):
                self._cache.delete(self.key)

    def quarantine(self, ttl: float) -> None:
        if self.blob is None:
            return
        target = self.store.quarantine_prefix + quarantine_name(self.key, self.blob)
        with self.store.errors("quarantining a session"):
            if self.store.get(self.key) == self.blob:
                self._cache.set(target, self.blob, timeout=_seconds(ttl))
                self._cache.delete(self.key)

    def copy_to_quarantine(self, ttl: float) -> None:
        if self.blob is None:
            return
        target = self.store.quarantine_prefix + quarantine_name(self.key, self.blob)
        with self.store.errors("keeping a copy of a session"):
            self._cache.set(target, self.blob, timeout=_seconds(ttl))

    def release(self) -> None:
        """Nothing to release: this store takes no locks."""
