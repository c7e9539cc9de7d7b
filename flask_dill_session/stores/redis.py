"""Redis store: one string key per session, native TTL, redis-py locks, one round trip each way.

Layout, for a store key ``session:<sid>`` (the interface passes ``SESSION_KEY_PREFIX`` +
sid):

- ``session:<sid>`` holds the authenticated blob, with a ``PX`` TTL of the idle lifetime,
  so Redis itself forgets idle sessions (:meth:`RedisStore.cleanup` has nothing to do);
- ``lock:session:<sid>`` is the per-session lock of :class:`redis.lock.Lock`: a random
  token with a ``PX`` TTL of the lease, so a holder that died frees it when the lease ends;
- ``strikes:session:<sid>`` counts the consecutive failed requests of the session
  (:meth:`~flask_dill_session.stores.base.Entry.strike`), with the session's TTL. It exists
  only while the count is not 0: a write or a touch deletes it (in the same round trip,
  and only when the count read was not 0), and so do delete and quarantine;
- ``quarantine:session:<fingerprint>:<blob hash>`` is a blob that failed to load, moved
  there by ``RENAME`` and kept with its own TTL. ``<fingerprint>`` is what the warning in
  the log names (the first 12 hex digits of SHA-256 of the store key), so
  ``SCAN 0 MATCH quarantine:session:<fingerprint>:*`` finds it.

Every step is a single command or a single Lua script, so Redis applies it whole or not at
all, and a holder that lost its lock is caught in the same atomic step as its write:

- reading with the lock is one script: if the session exists and the lock is free (or
  already this request's), ``SET lock token PX lease`` and ``GET`` the session and its
  strike count; a missing session takes no lock. Without the lock, one ``MGET`` of both;
- saving a changed session is one script: check that the lock still holds this request's
  token, delete it, and ``SET session blob XX PX ttl`` (``XX``: a session deleted meanwhile
  is never resurrected). A request whose lease ran out writes nothing, and
  :meth:`~flask_dill_session.stores.base.Entry.write` raises ``StoreUnavailableError``
  (HTTP 503: the change was not saved);
- an unchanged session is refreshed by ``PEXPIRE`` and the lock deleted, in one script;
- a failed request is recorded by one script: check that the lock still holds this
  request's token and delete it, then, if the session still exists, ``SET`` the strike
  count and ``PEXPIRE`` the session (a request whose lease ran out records nothing and
  raises ``StoreUnavailableError``);
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
failed request, strike recorded (read + strike)  2
===============================================  ===========

Without locking the counts are the same (an ``MGET`` of the session and its strike count,
``SET XX PX`` or ``PEXPIRE``; with strikes to reset, a write is a pipeline of ``SET XX PX``
and ``DEL`` and a touch a script, still one round trip each).
Waiting for a lock held by another request costs one more round trip per poll (every
``lock_poll`` seconds). The first time a process runs each of the Lua scripts against a
server (after it started, or after ``SCRIPT FLUSH``), redis-py loads the script: two
extra round trips, once.

Deletes (logout, ``regenerate``, an emptied session) apply even when the lease was lost:
ending a session must not depend on a lock. Every exception of the client (unreachable,
timed out, an error reply, ``RedisClusterException``, ...) is raised as
:class:`~flask_dill_session.exc.StoreUnavailableError` naming its cause and the server's
address, answered as HTTP 503. Give the client ``socket_timeout`` and
``socket_connect_timeout`` so that a stalled Redis cannot hang requests.

Deadlines. A command the client gave up on (its ``socket_timeout`` passed) may still reach
Redis later, for instance once a stalled server runs again. So the lock-and-read and the
write scripts carry the instant the client gives up, ``socket_timeout`` after sending,
and compare it with the server's ``TIME``: past it, the first takes no lock and the
second writes nothing (and releases the lock), so a stall leaves no lock behind for the
rest of a lease. The instant is sent in the server's clock: every reply of these scripts
carries ``TIME``, from which the store learns the offset between the two clocks; a
refusal that reaches the client in time (so due to the offset, not to a stall) is retried
once with the offset just learned.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis
import redis.exceptions
from redis.commands.core import Script
from redis.lock import Lock

from ..config import DEFAULTS, Settings
from ..exc import ConfigError, LockTimeoutError, StoreUnavailableError
from . import _scripts as scripts
from .base import Entry, Store, fingerprint, quarantine_name

logger = logging.getLogger("flask_dill_session")

#: Every exception the client raises: ``RedisError`` and the rest of redis-py's exception
#: classes, some of which are not ``RedisError`` (``RedisClusterException``, ...), and
#: ``OSError`` from below it.
CLIENT_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    *(
        cls
        for cls in vars(redis.exceptions).values()
        if isinstance(cls, type)
        and issubclass(cls, Exception)
        and cls.__module__ == "redis.exceptions"
    ),
)


def _count(value: Any) -> int:
    """A strike count as stored (digits), 0 if absent or malformed."""
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _flag(strikes: int) -> int:
    """The reset argument of the write and touch scripts: 1 if there are strikes to delete."""
    return 1 if strikes else 0


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1 (``PX 0`` is an error in Redis)."""
    return max(1, math.ceil(seconds * 1000))


class ServerClock:
    """Deadlines in the Redis server's clock: ours, plus an offset learned from its replies.

    *timeout* is the client's ``socket_timeout`` (``None``: it never gives up, and calls
    carry no deadline).
    """

    def __init__(self, timeout: float | None, now: Callable[[], float] = time.time) -> None:
        self.timeout = timeout
        self.now = now
        self.offset = 0.0  # seconds the server's clock is ahead of ours

    def deadline(self, sent: float) -> int:
        """The server-clock instant (ms) a call sent at *sent* is given up; 0 for never."""
        if self.timeout is None:
            return 0
        return math.floor((sent + self.offset + self.timeout) * 1000)

    def learn(self, server_ms: int, sent: float, received: float) -> None:
        """Take the offset from a reply, if its round trip was short enough to tell it."""
        if self.timeout is not None and received - sent < self.timeout / 4:
            self.offset = server_ms / 1000 - (sent + received) / 2

    def in_time(self, sent: float, received: float) -> bool:
        """Whether a reply came before the client would have given up on it."""
        return self.timeout is None or received - sent < self.timeout


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
        lock_timeout: float = DEFAULTS.lock_timeout,
        lock_lease: float = DEFAULTS.lock_lease,
        lock_poll: float = 0.01,
        lock_prefix: str = "lock:",
        quarantine_prefix: str = "quarantine:",
        strikes_prefix: str = "strikes:",
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
        self.strikes_prefix = strikes_prefix
        self.address = describe(client)
        self.server_clock = ServerClock(
            client.connection_pool.connection_kwargs.get("socket_timeout")
        )
        self.open_script = client.register_script(scripts.OPEN)
        self.write_script = client.register_script(scripts.WRITE)
        self.touch_script = client.register_script(scripts.TOUCH)
        self.strike_script = client.register_script(scripts.STRIKE)
        self.delete_script = client.register_script(scripts.DELETE)
        self.quarantine_script = client.register_script(scripts.QUARANTINE)

    @classmethod
    def from_config(cls, settings: Settings, config: Mapping[str, Any]) -> RedisStore:
        """``SESSION_REDIS`` must be a :class:`redis.Redis` client: no default host."""
        client = config.get("SESSION_REDIS")
        if not isinstance(client, redis.Redis):
            raise ConfigError(
                "SESSION_REDIS must be a redis.Redis client when SESSION_DILL_BACKEND is"
                ' "redis" (no default host is assumed), e.g. redis.Redis.from_url(url,'
                f" socket_timeout=2, socket_connect_timeout=2); got {type(client).__name__}"
            )
        try:
            store = cls(
                client,
                lock_timeout=settings.lock_timeout,
                lock_lease=settings.lock_lease,
                quarantine_prefix=f"quarantine:{settings.key_prefix}",
            )
        except ConfigError as exc:
            raise ConfigError(f"SESSION_REDIS: {exc}") from None
        if client.connection_pool.connection_kwargs.get("socket_timeout") is None:
            logger.warning(
                "SESSION_REDIS has no socket_timeout: requests will hang while Redis at %s"
                " does not answer; give the client socket_timeout and socket_connect_timeout",
                store.address,
            )
        return store

    def lock_key(self, key: str) -> str:
        return self.lock_prefix + key

    def strikes_key(self, key: str) -> str:
        return self.strikes_prefix + key

    def new(self, key: str) -> Entry:
        return _RedisEntry(self, key, None, None)

    def open(self, key: str, *, lock: bool) -> Entry:
        if not lock:
            with self.errors("reading a session"):  # MGET reads a key of another type as nil
                value, count = self.client.mget([key, self.strikes_key(key)])
            if not isinstance(value, bytes):
                return self.new(key)
            return _RedisEntry(self, key, value, None, _count(count))
        session_lock = _SessionLock(self, key)
        with self.errors("locking and reading a session"):
            acquired = session_lock.acquire()
        if not acquired:
            raise LockTimeoutError(f"session lock not acquired within {self.lock_timeout:g} s")
        if session_lock.blob is None:  # no such session: the script took no lock
            session_lock.local.token = None
            entry = self.new(key)
        else:
            entry = _RedisEntry(self, key, session_lock.blob, session_lock, session_lock.strikes)
        entry.waited = session_lock.waited
        return entry

    def cleanup(self, report: Counter[str] | None = None) -> int:
        """Nothing to do: Redis expires idle sessions, old locks and quarantine by TTL."""
        return 0

    def run(self, script: Script, keys: list[str], args: list[Any], *, retry: bool) -> Any:
        """Call a script that takes a deadline (appended to *args*), learning the server's
        clock from its reply; if refused as late while in time, *retry* once."""
        for _ in range(2 if retry else 1):
            sent = self.server_clock.now()
            reply = script(keys=keys, args=[*args, self.server_clock.deadline(sent)])
            received = self.server_clock.now()
            self.server_clock.learn(int(reply[1]), sent, received)
            if reply[0] != scripts.LATE or not self.server_clock.in_time(sent, received):
                break
        return reply

    @contextlib.contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Raise any exception of the client as :class:`StoreUnavailableError` (the one place
        it is), naming its cause and this server."""
        try:
            yield
        except CLIENT_ERRORS as exc:
            detail = str(exc)
            raise self.unavailable(
                action, f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            ) from exc

    def unavailable(self, action: str, cause: str) -> StoreUnavailableError:
        """The error for *cause*, met while *action*."""
        return StoreUnavailableError(
            f"session store unavailable: {cause} while {action} (Redis at {self.address})",
            cause=cause,
            where=self.address,
        )

    def lease_lost(self, key: str, outcome: str = "not saved") -> StoreUnavailableError:
        """The error for a change refused because the lock's lease ran out first."""
        return StoreUnavailableError(
            f"session {fingerprint(key)} {outcome}: its lock lease ({self.lock_lease:g} s) ran"
            " out before the request ended, and another request may have changed it since"
            f" (Redis at {self.address})",
            cause="lock lease ran out",
            where=self.address,
        )

    def late(self, action: str) -> StoreUnavailableError:
        """The error for a call Redis ran after the client's deadline (so refused)."""
        timeout = self.server_clock.timeout
        return self.unavailable(action, f"Redis answered after the socket timeout ({timeout} s)")


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
        self.store = store
        self.key = key
        self.lease_ms = _ms(store.lock_lease)
        self.blob: bytes | None = None
        self.strikes = 0
        self.refused: float | None = None  # when a try was first refused (monotonic)
        self.waited = 0.0  # seconds from then until the lock was taken

    def do_acquire(self, token: str) -> bool:
        store = self.store
        keys = [self.key, self.name, store.strikes_key(self.key)]
        reply = store.run(store.open_script, keys, [token, self.lease_ms], retry=True)
        if reply[0] == scripts.LATE:
            raise store.late("locking and reading a session")
        if reply[0] == scripts.BUSY:
            if self.refused is None:
                self.refused = time.monotonic()
            return False  # held by another request
        if self.refused is not None:
            self.waited = time.monotonic() - self.refused
        done = reply[0] == scripts.DONE
        self.blob = reply[2] if done else None
        self.strikes = _count(reply[3]) if done else 0
        return True


class _RedisEntry(Entry):
    """One session as opened by one request; *lock* is the held lock, if any.

    With a lock, :meth:`write`, :meth:`touch`, :meth:`strike`, :meth:`delete` and
    :meth:`quarantine` release it in the same round trip (the interface does one of them at
    the end of the request), and :meth:`release` is then free.
    """

    def __init__(
        self,
        store: RedisStore,
        key: str,
        blob: bytes | None,
        lock: _SessionLock | None,
        strikes: int = 0,
    ) -> None:
        self.store = store
        self.key = key
        self.blob = blob
        self.strikes = strikes
        self._lock = lock
        self._locked = lock is not None  # opened under a lock: write only while holding it

    @property
    def _token(self) -> Any:
        return None if self._lock is None else self._lock.local.token

    def _keys(self) -> list[str]:
        return [self.key, self.store.lock_key(self.key), self.store.strikes_key(self.key)]

    def _released(self) -> None:
        if self._lock is not None:
            self._lock.local.token = None
            self._lock = None

    def write(self, blob: bytes, ttl: float) -> bool:
        try:
            with self.store.errors("writing a session"):
                status = self._write(blob, ttl)
        finally:
            self._released()  # released by the script; if it failed, by the lease
        if status == scripts.LOST:
            raise self.store.lease_lost(self.key)
        if status == scripts.LATE:
            raise self.store.late("writing a session")
        return status == scripts.DONE

    def _write(self, blob: bytes, ttl: float) -> int:
        client = self.store.client
        if self.blob is None:
            return (
                scripts.DONE if client.set(self.key, blob, nx=True, px=_ms(ttl)) else scripts.GONE
            )
        token = self._token
        if token is None:
            if self._locked:
                return scripts.LOST  # the lock was released already
            return scripts.DONE if self._set_existing(blob, ttl) else scripts.GONE
        script, args = self.store.write_script, [token, blob, _ms(ttl), _flag(self.strikes)]
        return int(self.store.run(script, self._keys(), args, retry=False)[0])

    def _set_existing(self, blob: bytes, ttl: float) -> bool:
        """Without a lock: ``SET XX PX``, and ``DEL`` of the strikes in the same round trip
        if there are any; whether the session still existed."""
        if not self.strikes:
            return bool(self.store.client.set(self.key, blob, xx=True, px=_ms(ttl)))
        pipe = self.store.client.pipeline(transaction=False)
        pipe.set(self.key, blob, xx=True, px=_ms(ttl))
        pipe.delete(self.store.strikes_key(self.key))
        return bool(pipe.execute()[0])

    def touch(self, ttl: float) -> None:
        if self.blob is None:
            return
        try:
            with self.store.errors("refreshing a session's expiry"):
                token = self._token
                if token is None and not self.strikes:
                    self.store.client.pexpire(self.key, _ms(ttl))
                else:
                    args = [token or "", _ms(ttl), _flag(self.strikes)]
                    self.store.touch_script(keys=self._keys(), args=args)
        finally:
            self._released()

    def strike(self, ttl: float) -> None:
        """One script: release the lock, then store ``strikes + 1`` and move the expiry of
        the session (unless it was deleted meanwhile). Raises ``StoreUnavailableError`` if
        the lock's lease ran out first (nothing recorded)."""
        if self.blob is None:
            return
        token = self._token
        try:
            with self.store.errors("recording a failed request"):
                status = scripts.LOST
                if token is not None or not self._locked:
                    args = [token or "", _ms(ttl), self.strikes + 1]
                    status = int(self.store.strike_script(keys=self._keys(), args=args))
        finally:
            self._released()
        if status == scripts.LOST:
            raise self.store.lease_lost(self.key, "failed request not recorded")
        if status == scripts.DONE:
            self.strikes += 1

    def delete(self) -> None:
        if self.blob is None:
            return
        try:
            with self.store.errors("deleting a session"):
                token = self._token
                if token is None:
                    self.store.client.delete(self.key, self.store.strikes_key(self.key))
                else:
                    self.store.delete_script(keys=self._keys(), args=[token])
        finally:
            self._released()

    def quarantine(self, ttl: float) -> None:
        if self.blob is None:
            return
        target = self.store.quarantine_prefix + quarantine_name(self.key, self.blob)
        try:
            with self.store.errors("quarantining a session"):
                self.store.quarantine_script(
                    keys=[*self._keys(), target], args=[self._token or b"", self.blob, _ms(ttl)]
                )
        finally:
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
        except CLIENT_ERRORS as exc:
            logger.error(
                "session %s: lock not released (it ends with its lease): Redis at %s: %s: %s",
                fingerprint(self.key),
                self.store.address,
                type(exc).__name__,
                exc,
            )
