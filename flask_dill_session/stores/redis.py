"""Redis store: one string key per session, native TTL, redis-py locks, one round trip each way.

Layout, for a store key ``session:<sid>`` (the interface passes ``SESSION_KEY_PREFIX`` +
sid):

- ``session:<sid>`` holds the authenticated blob, with a ``PX`` TTL of the idle lifetime,
  so Redis itself forgets idle sessions (:meth:`RedisStore.cleanup` has nothing to do);
- ``lock:session:<sid>`` is the per-session lock of :class:`redis.lock.Lock`: a random
  token with a ``PX`` TTL of the lease, so a holder that died frees it when the lease ends;
- ``quarantine:session:<fingerprint>:<blob hash>`` is a blob that failed to load, moved
  there by ``RENAME`` and kept with its own TTL. ``<fingerprint>`` is what the warning in
  the log names (the first 12 hex digits of SHA-256 of the store key), so
  ``SCAN 0 MATCH quarantine:session:<fingerprint>:*`` finds it.

Every step is a single command or a single Lua script, so Redis applies it whole or not at
all, and a holder that lost its lock is caught in the same atomic step as its write:

- reading with the lock is one script: ``SET lock token NX PX lease``, then ``GET`` the
  session; if the session does not exist the lock is dropped again at once;
- saving a changed session is one script: check that the lock still holds this request's
  token, ``SET session blob XX PX ttl`` (``XX``: a session deleted meanwhile is never
  resurrected) and delete the lock. A request whose lease ran out writes nothing;
- an unchanged session is refreshed by ``PEXPIRE`` and the lock deleted, in one script;
- a new session is created by ``SET session blob NX PX ttl`` and needs no lock.

Round trips per request, with locking (``SESSION_DILL_LOCKING``, the default):

===============================================  ===========
request                                          round trips
===============================================  ===========
does not use ``session``                         0
new session (no cookie), written                 1
existing session, changed (read + write)         2
existing session, unchanged (read + touch)       2
unknown or expired id, new session written       2
``destroy`` / ``regenerate`` (read + delete)     2 (+1 to write the new id)
===============================================  ===========

Without locking the counts are the same (a plain ``GET``, ``SET XX PX`` or ``PEXPIRE``).
Waiting for a lock held by another request costs one more round trip per poll (every
``lock_poll`` seconds). The first time a process runs each of the Lua scripts against a
server (after it started, or after ``SCRIPT FLUSH``), redis-py loads the script: two
extra round trips, once.

Deletes (logout, ``regenerate``, an emptied session) apply even when the lease was lost:
ending a session must not depend on a lock. Redis errors (unreachable, timed out, an
error reply) are logged with their cause on the ``flask_dill_session`` logger and raised
as :class:`~flask_dill_session.exc.StoreUnavailableError`, answered as HTTP 503. Give the
client ``socket_timeout`` and ``socket_connect_timeout`` so that a stalled Redis cannot
hang requests.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import redis
from redis.lock import Lock

from ..exc import ConfigError, LockTimeoutError, StoreUnavailableError
from .base import Entry, Store, fingerprint, quarantine_name

logger = logging.getLogger("flask_dill_session")

# KEYS: session, lock. ARGV: token, lease (ms).
# Returns 0 when the lock is busy; else the blob (lock kept) or nil (no session, no lock).
_OPEN = """
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 0
end
if redis.call('TYPE', KEYS[1]).ok == 'string' then
    return redis.call('GET', KEYS[1])
end
redis.call('DEL', KEYS[2])
return false
"""

# KEYS: session, lock. ARGV: token, blob, ttl (ms).
# Returns -1 when the lock is no longer ours (nothing written), 0 when the session is
# gone (nothing written), 1 when written. The lock is released either way if ours.
_WRITE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
    return -1
end
redis.call('DEL', KEYS[2])
if redis.call('SET', KEYS[1], ARGV[2], 'XX', 'PX', ARGV[3]) then
    return 1
end
return 0
"""

# KEYS: session, lock. ARGV: token, ttl (ms). Refresh the expiry, release the lock if ours.
_TOUCH = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
    redis.call('DEL', KEYS[2])
end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""

# KEYS: session, lock. ARGV: token. Delete the session, release the lock if ours.
_DELETE = """
redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[2]) == ARGV[1] then
    redis.call('DEL', KEYS[2])
end
return 1
"""

# KEYS: session, lock, quarantine. ARGV: token ('' = none), blob as read, ttl (ms).
# Move the blob aside only if it is still the one that was read; release the lock if ours.
_QUARANTINE = """
local moved = 0
if redis.call('TYPE', KEYS[1]).ok == 'string' and redis.call('GET', KEYS[1]) == ARGV[2] then
    redis.call('RENAME', KEYS[1], KEYS[3])
    redis.call('PEXPIRE', KEYS[3], ARGV[3])
    moved = 1
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
    redis.call('DEL', KEYS[2])
end
return moved
"""


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1 (``PX 0`` is an error in Redis)."""
    return max(1, math.ceil(seconds * 1000))


def describe(client: redis.Redis) -> str:
    """Where *client* connects, for log lines: ``host:port/db`` or the socket path."""
    kwargs = client.connection_pool.connection_kwargs
    place = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    return f"{place}/{kwargs.get('db', 0)}"


class RedisStore(Store):
    """Session blobs in Redis, with per-session locks made by :class:`redis.lock.Lock`.

    *client* must be a :class:`redis.Redis` made with ``decode_responses=False``.
    *lock_timeout* is how long a request waits for a session's lock before
    :class:`~flask_dill_session.exc.LockTimeoutError` (HTTP 503); *lock_lease* how long a
    holder may keep it before it is considered dead; *lock_poll* the pause between tries.
    """

    supports_locking = True

    def __init__(
        self,
        client: redis.Redis,
        *,
        lock_timeout: float = 10.0,
        lock_lease: float = 60.0,
        lock_poll: float = 0.01,
        lock_prefix: str = "lock:",
        quarantine_prefix: str = "quarantine:",
    ) -> None:
        if not isinstance(client, redis.Redis):
            raise ConfigError(f"a redis.Redis client is required, got {type(client).__name__}")
        if client.get_encoder().decode_responses:
            raise ConfigError(
                "the Redis client must be made with decode_responses=False:"
                " sessions are stored as bytes"
            )
        self.client = client
        self.lock_timeout = lock_timeout
        self.lock_lease = lock_lease
        self.lock_poll = lock_poll
        self.lock_prefix = lock_prefix
        self.quarantine_prefix = quarantine_prefix
        self.address = describe(client)
        self.open_script = client.register_script(_OPEN)
        self.write_script = client.register_script(_WRITE)
        self.touch_script = client.register_script(_TOUCH)
        self.delete_script = client.register_script(_DELETE)
        self.quarantine_script = client.register_script(_QUARANTINE)

    def lock_key(self, key: str) -> str:
        return self.lock_prefix + key

    def new(self, key: str) -> Entry:
        return _RedisEntry(self, key, None, None)

    def open(self, key: str, *, lock: bool) -> Entry:
        if not lock:
            with self.errors("reading a session"):
                try:
                    value = self.client.get(key)
                except redis.ResponseError as exc:
                    if not str(exc).startswith("WRONGTYPE"):
                        raise
                    value = None  # not a string: not one of our sessions
            return _RedisEntry(self, key, value if isinstance(value, bytes) else None, None)
        session_lock = _SessionLock(self, key)
        with self.errors("locking and reading a session"):
            acquired = session_lock.acquire()
        if not acquired:
            raise LockTimeoutError(f"session lock not acquired within {self.lock_timeout:g} s")
        if session_lock.blob is None:  # no such session: the script took no lock
            session_lock.local.token = None
            return self.new(key)
        return _RedisEntry(self, key, session_lock.blob, session_lock)

    def cleanup(self) -> int:
        """Nothing to do: Redis expires idle sessions, old locks and quarantine by TTL."""
        return 0

    @contextlib.contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Turn a Redis failure into :class:`StoreUnavailableError`, logging its cause."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.error(
                "session store unavailable: Redis at %s did not answer while %s: %s: %s",
                self.address,
                action,
                type(exc).__name__,
                exc,
            )
            raise StoreUnavailableError("session store unavailable, try again shortly") from exc
        except redis.RedisError as exc:
            logger.error(
                "session store error: Redis at %s failed while %s: %s: %s",
                self.address,
                action,
                type(exc).__name__,
                exc,
            )
            raise StoreUnavailableError("session store unavailable, try again shortly") from exc


class _SessionLock(Lock):
    """redis-py's lock whose acquiring step also reads the session, in one script."""

    def __init__(self, store: RedisStore, key: str) -> None:
        super().__init__(
            store.client,
            store.lock_key(key),
            timeout=store.lock_lease,
            sleep=store.lock_poll,
            blocking_timeout=store.lock_timeout,
            thread_local=False,  # the entry belongs to one request, not to a thread
        )
        self.key = key
        self.lease_ms = _ms(store.lock_lease)
        self.script = store.open_script
        self.blob: bytes | None = None

    def do_acquire(self, token: str) -> bool:
        result = self.script(keys=[self.key, self.name], args=[token, self.lease_ms])
        if isinstance(result, int):
            return False  # held by another request
        self.blob = result if isinstance(result, bytes) else None
        return True


class _RedisEntry(Entry):
    """One session as opened by one request; *lock* is the held lock, if any.

    With a lock, :meth:`write`, :meth:`touch`, :meth:`delete` and :meth:`quarantine`
    release it in the same round trip (the interface does one of them at the end of the
    request), and :meth:`release` is then free.
    """

    def __init__(
        self, store: RedisStore, key: str, blob: bytes | None, lock: _SessionLock | None
    ) -> None:
        self.store = store
        self.key = key
        self.blob = blob
        self._lock = lock
        self._locked = lock is not None  # opened under a lock: write only while holding it

    @property
    def _token(self) -> Any:
        return None if self._lock is None else self._lock.local.token

    def _keys(self) -> list[str]:
        return [self.key, self.store.lock_key(self.key)]

    def _released(self) -> None:
        if self._lock is not None:
            self._lock.local.token = None
            self._lock = None

    def write(self, blob: bytes, ttl: float) -> bool:
        client = self.store.client
        with self.store.errors("writing a session"):
            if self.blob is None:
                return bool(client.set(self.key, blob, nx=True, px=_ms(ttl)))
            token = self._token
            if token is None and not self._locked:
                return bool(client.set(self.key, blob, xx=True, px=_ms(ttl)))
            status = -1
            if token is not None:
                status = self.store.write_script(keys=self._keys(), args=[token, blob, _ms(ttl)])
        self._released()
        if status == -1:
            logger.warning(
                "session %s not saved: its lock lease (%g s) ran out before the request"
                " ended, and another request may have changed it since",
                fingerprint(self.key),
                self.store.lock_lease,
            )
        return bool(status == 1)

    def touch(self, ttl: float) -> None:
        if self.blob is None:
            return
        with self.store.errors("refreshing a session's expiry"):
            token = self._token
            if token is None:
                self.store.client.pexpire(self.key, _ms(ttl))
            else:
                self.store.touch_script(keys=self._keys(), args=[token, _ms(ttl)])
        self._released()

    def delete(self) -> None:
        if self.blob is None:
            return
        with self.store.errors("deleting a session"):
            token = self._token
            if token is None:
                self.store.client.delete(self.key)
            else:
                self.store.delete_script(keys=self._keys(), args=[token])
        self._released()

    def quarantine(self, ttl: float) -> None:
        if self.blob is None:
            return
        target = self.store.quarantine_prefix + quarantine_name(self.key, self.blob)
        with self.store.errors("quarantining a session"):
            self.store.quarantine_script(
                keys=[*self._keys(), target], args=[self._token or b"", self.blob, _ms(ttl)]
            )
        self._released()

    def copy_to_quarantine(self, ttl: float) -> None:
        if self.blob is None:
            return
        target = self.store.quarantine_prefix + quarantine_name(self.key, self.blob)
        with self.store.errors("keeping a copy of a session"):
            self.store.client.set(target, self.blob, px=_ms(ttl))

    def release(self) -> None:
        """Release the lock if still held; never raises (the lease frees it anyway)."""
        lock, self._lock = self._lock, None
        if lock is None or lock.local.token is None:
            return
        try:
            lock.release()
        except redis.exceptions.LockNotOwnedError:
            logger.warning(
                "session %s: lock lease (%g s) ran out before the request ended",
                fingerprint(self.key),
                self.store.lock_lease,
            )
        except redis.RedisError as exc:
            logger.error(
                "session %s: lock not released (it ends with its lease): Redis at %s: %s: %s",
                fingerprint(self.key),
                self.store.address,
                type(exc).__name__,
                exc,
            )
