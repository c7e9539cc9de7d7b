"""Redis store: one string key per session, native TTL, per-session locks, one round trip
each way. Works on one Redis, on Sentinel (``master_for``) and on Redis Cluster.

Keys (:mod:`._keys`): a session lives under a keyed hash of its store key in a hash tag,
``session:{<tag>}``, with ``lock:session:{<tag>}``, ``strikes:session:{<tag>}`` and
``quarantine:session:{<tag>}:<fingerprint>:<blob hash>`` in the same cluster slot. The
blob has a ``PX`` TTL of the idle lifetime, so Redis itself forgets idle sessions; the
lock is its holder's token with a ``PX`` TTL of the lease (a holder that died frees it when
the lease ends); the strike count (:meth:`~flask_dill_session.stores.base.Entry.strike`)
exists only while not 0.

Every step is a single command or a single Lua script on the keys of one session (so of
one slot), applied whole or not at all, but for the first try to lock, a pipeline whose
first command takes the lock (the read that follows is then under it); a holder that lost
its lock is caught in the same atomic step as its write:

- reading with the lock is one round trip of plain commands (:mod:`._lock`): ``SET lock
  token NX GET PX lease`` and ``MGET`` of the session and its strike count (and ``TIME``
  when the server's clock was not learned in the last second); a missing session's lock
  is released at once. While another request holds the lock, the polls run a script that
  takes the lock only if it is free (or orphaned), and reads the session only then.
  Without the lock, one ``MGET`` of both;
- saving a changed session is one script: check that the lock still holds this request's
  token, delete it, and ``SET session blob XX PX ttl`` (``XX``: a session deleted meanwhile
  is never resurrected), unless the lock has less of its lease left than a write in time
  would find (:meth:`~._lock.SessionLock.least_left`). A request whose lock is gone (its
  lease ran out, or a failover lost it) writes nothing, and
  :meth:`~flask_dill_session.stores.base.Entry.write` raises ``StoreUnavailableError``
  (HTTP 503: the change was not saved);
- an unchanged session is refreshed by ``PEXPIRE`` and the lock deleted, in one script;
- a failed request is recorded by one script (the same lock check, then the count);
- a new session is created by ``SET session blob NX PX ttl`` and needs no lock.

A session not found under its key may be under a former key (:mod:`._former`): the key
an earlier release gave it, or its name under a fallback secret. It is moved, once.

Round trips per request, with locking (``SESSION_DILL_LOCKING``, the default):

===============================================  ===========
request                                          round trips
===============================================  ===========
does not use ``session``                         0
new session (no cookie), written                 1
existing session, changed (read + write)         2
existing session, unchanged (read + touch)       2
unknown or expired id, new session written       4 (+1 per fallback secret)
``destroy`` / ``regenerate`` (read + delete)     2 (+1 to write the new id)
failed request, strike recorded (read + strike)  2
===============================================  ===========

Without locking the counts are the same, but for an unknown id: 3 (no lock to release).
Waiting for a lock held by another request costs one more round trip at once (the
lock-and-read script, which takes over an orphaned lock), then one per poll (every
``lock_poll`` seconds). The first time a process runs each script against a server (after
it started, or after ``SCRIPT FLUSH``), redis-py loads it: two extra round trips, once.
``WAIT`` (``SESSION_DILL_REDIS_WAIT``) is sent after a write or a delete on the same
connection, in the same round trip.

Deletes (logout, ``regenerate``, an emptied session) apply even when the lock was lost:
ending a session must not depend on a lock. Every exception of the client (unreachable,
timed out, an error reply, ``MOVED`` or ``TRYAGAIN`` that redis-py did not follow,
``RedisClusterException``, no master known to Sentinel...) is raised as
:class:`~flask_dill_session.exc.StoreUnavailableError` naming its cause and where, answered
as HTTP 503. Give the client ``socket_timeout`` and ``socket_connect_timeout``.

Deadlines: the lock-and-read script carries the instant the client gives up, in the
server's clock (:class:`~._clients.ServerClock`); past it, it does nothing. The first try's
token names it: a lock that try took past it is orphaned, and the next request takes it
over. The write script tells the time by the lock's TTL instead: a lock held longer than
the client waits for the write was taken too long ago.

A request's commands go on connections of the store's own, made with the client pool's
connection class and settings (:mod:`._connections`): redis-py's way through the client
costs more CPU than the command.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from redis.commands.core import Script

from ..config import DEFAULTS, Settings
from ..exc import ConfigError, LockTimeoutError, StoreUnavailableError
from . import _clients as clients
from . import _scripts as scripts
from ._clients import CLIENT_ERRORS, Client, ServerClock, describe
from ._connections import own_connections
from ._former import FormerKeys
from ._keys import KeyNames, Names
from ._lock import SessionLock
from ._redis_ops import RedisOperations
from .base import Entry, fingerprint

__all__ = ["CLIENT_ERRORS", "RedisStore", "ServerClock", "describe"]

logger = logging.getLogger("flask_dill_session")


def _flag(strikes: int) -> int:
    """The reset argument of the touch script: 1 if there are strikes to delete."""
    return 1 if strikes else 0


class RedisStore(RedisOperations):
    """Session blobs in Redis, with per-session locks.

    *client* is a ``redis.Redis`` (also Sentinel's ``master_for(...)``) or a
    ``redis.cluster.RedisCluster``, made with ``decode_responses=False``; any object with
    the methods the store calls will do. Keys are named by a keyed hash made with *secret*
    (and looked up under the names of *fallbacks*), under *key_prefix*. *wait*, as
    ``(replicas, ms)``, sends ``WAIT`` after each write and delete and raises
    ``StoreUnavailableError`` when fewer replicas confirmed it. *lock_timeout* is how long
    a request waits for a session's lock before
    :class:`~flask_dill_session.exc.LockTimeoutError` (HTTP 503); *lock_lease* how long a
    holder may keep it before it is considered dead; *lock_poll* the pause between tries.
    """

    supports_locking = True
    cleanup_summary = "moved {count} sessions stored under their ids to hashed keys"

    def __init__(
        self,
        client: Client,
        *,
        secret: str | bytes,
        fallbacks: Sequence[str | bytes] = (),
        key_prefix: str = DEFAULTS.key_prefix,
        wait: tuple[int, int] | None = DEFAULTS.redis_wait,
        lock_timeout: float = DEFAULTS.lock_timeout,
        lock_lease: float = DEFAULTS.lock_lease,
        lock_poll: float = 0.01,
        lock_prefix: str = "lock:",
        quarantine_prefix: str = "quarantine:",
        strikes_prefix: str = "strikes:",
    ) -> None:
        clients.check(client)
        self.client = client
        self.names = KeyNames(
            secret,
            fallbacks,
            prefix=key_prefix,
            lock_prefix=lock_prefix,
            strikes_prefix=strikes_prefix,
            quarantine_prefix=quarantine_prefix,
        )
        self.wait = wait
        self.lock_timeout = lock_timeout
        self.lock_lease = lock_lease
        self.lock_poll = lock_poll
        self.address = describe(client)
        self.server_clock = ServerClock(clients.socket_timeout(client))
        self.open_script = client.register_script(scripts.OPEN)
        self.write_script = client.register_script(scripts.WRITE)
        self.touch_script = client.register_script(scripts.TOUCH)
        self.strike_script = client.register_script(scripts.STRIKE)
        self.delete_script = client.register_script(scripts.DELETE)
        self.quarantine_script = client.register_script(scripts.QUARANTINE)
        self.release_script = client.register_script(scripts.RELEASE)
        self.former = FormerKeys(client, self.names)
        self._own = own_connections(client)
        self.pipelines = self._own is not None

    @classmethod
    def from_config(cls, settings: Settings, config: Mapping[str, Any]) -> RedisStore:
        """``SESSION_REDIS`` must be a redis-py client: no default host."""
        client = config.get("SESSION_REDIS")
        try:
            store = cls(
                client,  # type: ignore[arg-type]  # checked by the store
                secret=settings.secret_key,
                fallbacks=settings.secret_key_fallbacks,
                key_prefix=settings.key_prefix,
                wait=settings.redis_wait,
                lock_timeout=settings.lock_timeout,
                lock_lease=settings.lock_lease,
            )
        except ConfigError as exc:
            raise ConfigError(
                f"SESSION_REDIS: {exc}; no default host is assumed when SESSION_DILL_BACKEND"
                ' is "redis", e.g. redis.Redis.from_url(url, socket_timeout=2,'
                " socket_connect_timeout=2)"
            ) from None
        timeout = store.server_clock.timeout
        if timeout is None:
            logger.warning(
                "SESSION_REDIS has no socket_timeout: requests will hang while Redis at %s"
                " does not answer; give the client socket_timeout and socket_connect_timeout",
                store.address,
            )
        elif store.wait is not None and store.wait[1] >= timeout * 1000:
            raise ConfigError(
                f"SESSION_DILL_REDIS_WAIT waits up to {store.wait[1]} ms, not less than the"
                f" client's socket_timeout ({timeout:g} s): a lagging replica would time the"
                " client out; wait less, or give the client a longer socket_timeout"
            )
        if clients.is_cluster(store.client) and "{" in settings.key_prefix:
            logger.warning(
                "SESSION_KEY_PREFIX %r holds '{': Redis Cluster hashes the prefix's braces"
                " instead of each session's tag, so every session goes to one master",
                settings.key_prefix,
            )
        return store

    # -- key names ---------------------------------------------------------------------

    def session_key(self, key: str) -> str:
        """The Redis key of the session stored under *key*."""
        return self.names.session(key)

    def lock_key(self, key: str) -> str:
        return self.names.of(key).lock

    def strikes_key(self, key: str) -> str:
        return self.names.of(key).strikes

    def quarantine_key(self, key: str, blob: bytes) -> str:
        return self.names.quarantine(key, blob)

    # -- the store API ---------------------------------------------------------------------

    def new(self, key: str) -> Entry:
        return _RedisEntry(self, key, self.names.of(key), None, None)

    def open(self, key: str, *, lock: bool) -> Entry:
        return self._open(key, self.names.of(key), lock, look_elsewhere=True)

    def _open(self, key: str, names: Names, lock: bool, *, look_elsewhere: bool) -> Entry:
        if not lock:
            with self.errors("reading a session"):  # MGET reads a key of another type as nil
                keys = (names.session, names.strikes)
                value, stored = self.send("MGET", *keys, keys=keys)
            if isinstance(value, bytes):
                return _RedisEntry(self, key, names, value, None, scripts.count(stored))
        else:
            session_lock = SessionLock(self, key, names)
            with self.errors("locking and reading a session"):
                acquired = session_lock.acquire()
            if not acquired:
                raise LockTimeoutError(f"session lock not acquired within {self.lock_timeout:g} s")
            if session_lock.blob is not None:
                blob, strikes = session_lock.blob, session_lock.strikes
                entry = _RedisEntry(self, key, names, blob, session_lock, strikes)
                entry.waited = session_lock.waited
                return entry
        if look_elsewhere and self._adopt(key, names.session):
            return self._open(key, names, lock, look_elsewhere=False)
        return _RedisEntry(self, key, names, None, None)

    def _adopt(self, key: str, name: str) -> bool:
        """Move *key*'s blob to *name* from a former key; whether one held it."""
        with self.errors("looking for a session under its former keys"):
            return self.former.adopt(key, name)

    def cleanup(self, report: Counter[str] | None = None) -> int:
        """Move the sessions an earlier release stored under their ids to their hashed keys,
        scanning every primary; how many moved. Redis expires the rest by TTL itself."""
        with self.errors("moving sessions stored under their ids"):
            return self.former.sweep()

    # -- calls ---------------------------------------------------------------------------

    def run(
        self, script: Script, keys: Sequence[str | bytes], args: list[Any], *, retry: bool
    ) -> Any:
        """Call a script that takes a deadline (appended to *args*) and replies with the
        server's time after its status, learning the clock from it; if refused as late
        while in time, *retry* once. Its reply."""
        for _ in range(2 if retry else 1):
            sent = self.server_clock.now()
            reply = self.call(script, keys, [*args, b"%d" % self.server_clock.deadline(sent)])
            received = self.server_clock.now()
            self.server_clock.learn(int(reply[1]), sent, received)
            if reply[0] != scripts.LATE or not self.server_clock.in_time(sent, received):
                break
        return reply

    def call(self, script: Script, keys: Sequence[str | bytes], args: Sequence[Any]) -> Any:
        """Run *script*: on the store's own connections (:mod:`._connections`), or through a
        cluster client (:func:`._clients.run_script`)."""
        if self._own is not None:
            return self._own.evalsha(script, keys, args)
        return clients.run_script(self.client, script, keys, args)

    def send(self, *command: Any, keys: Sequence[str]) -> Any:
        """Send one command on the store's own connections, or through the client, told its
        *keys* as redis-py's own methods tell it (a cluster routes by them, a cache keys its
        replies by them). Callers use the reply's truth or items only: the client may have
        turned ``b"OK"`` into ``True``."""
        if self._own is not None:
            return self._own.execute(*command)
        return self.client.execute_command(*command, keys=keys)  # type: ignore[no-untyped-call]

    def pipeline(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send *commands* in one round trip on the store's own connections (only where
        :attr:`pipelines`); their replies, as for :meth:`send`."""
        assert self._own is not None
        return self._own.pipeline(*commands)

    def replicated(
        self, name: str | bytes, commands: Sequence[tuple[Any, ...]], script: Script | None = None
    ) -> tuple[list[Any], int]:
        """:func:`._clients.send_and_wait` with the configured ``WAIT``."""
        assert self.wait is not None
        return clients.send_and_wait(self.client, name, commands, self.wait, script)

    def confirm(self, key: str, acked: int | None, what: str) -> None:
        """Raise if ``WAIT`` found fewer replicas than asked for behind the change *what*."""
        if acked is None or self.wait is None or acked >= self.wait[0]:
            return
        replicas, ms = self.wait
        raise StoreUnavailableError(
            f"session {fingerprint(key)} {what} on the master, but {acked} of the {replicas}"
            f" replicas asked for (SESSION_DILL_REDIS_WAIT) confirmed it within {ms} ms: a"
            f" failover may lose it (Redis at {self.address})",
            cause=f"{acked} of {replicas} replicas confirmed the change within {ms} ms",
            where=self.address,
        )

    # -- errors --------------------------------------------------------------------------

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

    def lock_lost(self, key: str, outcome: str = "not saved") -> StoreUnavailableError:
        """The error for a change refused because the request no longer held the lock."""
        return StoreUnavailableError(
            f"session {fingerprint(key)} {outcome}: its lock was no longer held (its lease of"
            f" {self.lock_lease:g} s ran out, or a failover lost it) and another request may"
            f" have changed it since (Redis at {self.address})",
            cause="lock lost",
            where=self.address,
        )

    def late(self, action: str) -> StoreUnavailableError:
        """The error for a call Redis ran after the client's deadline (so refused)."""
        timeout = self.server_clock.timeout
        return self.unavailable(action, f"Redis answered after the socket timeout ({timeout} s)")


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
        names: Names,
        blob: bytes | None,
        lock: SessionLock | None,
        strikes: int = 0,
    ) -> None:
        self.store = store
        self.key = key
        self.names = names
        self.blob = blob
        self.strikes = strikes
        self._lock = lock
        self._locked = lock is not None  # opened under a lock: write only while holding it

    @property
    def _token(self) -> Any:
        return None if self._lock is None else self._lock.token

    def _released(self) -> None:
        if self._lock is not None:
            self._lock.token = None
            self._lock = None

    def write(self, blob: bytes, ttl: float) -> bool:
        try:
            with self.store.errors("writing a session"):
                status, acked = self._write(blob, ttl)
        finally:
            self._released()  # released by the script; if it failed, by the lease
        if status == scripts.LOST:
            raise self.store.lock_lost(self.key)
        if status == scripts.LATE:
            raise self.store.late("writing a session")
        if status == scripts.DONE:
            self.store.confirm(self.key, acked, "written")
        return status == scripts.DONE

    def _write(self, blob: bytes, ttl: float) -> tuple[int, int | None]:
        """The write's status, and how many replicas confirmed it (``None``: not asked)."""
        if self.blob is None:
            return self._set(blob, ttl, create=True)
        lock = self._lock
        if lock is None or lock.token is None:
            if self._locked:
                return scripts.LOST, None  # the lock was released already
            return self._set(blob, ttl, create=False)
        store, script = self.store, self.store.write_script
        keys = lock.keys if self.strikes else lock.keys[:2]
        args = (lock.token, blob, scripts.ms(ttl), lock.least_left(store.server_clock.timeout))
        if store.wait is None:
            return int(store.call(script, keys, args)), None
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        (status,), acked = store.replicated(keys[0], [command], script)
        return int(status), acked

    def _set(self, blob: bytes, ttl: float, *, create: bool) -> tuple[int, int | None]:
        """``SET NX`` (*create*) or ``SET XX`` (without a lock), and ``DEL`` of the strikes in
        the same round trip if there are any."""
        name, store, ms = self.names.session, self.store, scripts.ms(ttl)
        acked = None
        if store.wait is not None:
            condition = "NX" if create else "XX"
            commands: list[tuple[Any, ...]] = [("SET", name, blob, condition, "PX", ms)]
            if self.strikes:
                commands.append(("DEL", self.names.strikes))
            replies, acked = store.replicated(name, commands)
            done = replies[0]
        elif not self.strikes:
            done = store.send("SET", name, blob, "NX" if create else "XX", "PX", ms, keys=[name])
        else:
            pipe = store.client.pipeline(transaction=False)
            pipe.set(name, blob, px=ms, nx=create, xx=not create)
            pipe.delete(self.names.strikes)
            done = pipe.execute()[0]
        return (scripts.DONE if done else scripts.GONE), acked

    def touch(self, ttl: float) -> None:
        if self.blob is None:
            return
        try:
            with self.store.errors("refreshing a session's expiry"):
                token = self._token
                if token is None and not self.strikes:
                    name = self.names.session
                    self.store.send("PEXPIRE", name, scripts.ms(ttl), keys=[name])
                else:
                    args = [token or "", scripts.ms(ttl), _flag(self.strikes)]
                    self.store.call(self.store.touch_script, list(self.names), args)
        finally:
            self._released()

    def strike(self, ttl: float) -> None:
        """One script: release the lock, then store ``strikes + 1`` and move the expiry of
        the session (unless it was deleted meanwhile). Raises ``StoreUnavailableError`` if
        the lock was lost first (nothing recorded)."""
        if self.blob is None:
            return
        token = self._token
        try:
            with self.store.errors("recording a failed request"):
                status = scripts.LOST
                if token is not None or not self._locked:
                    args = [token or "", scripts.ms(ttl), self.strikes + 1]
                    status = int(self.store.call(self.store.strike_script, list(self.names), args))
        finally:
            self._released()
        if status == scripts.LOST:
            raise self.store.lock_lost(self.key, "failed request not recorded")
        if status == scripts.DONE:
            self.strikes += 1

    def delete(self) -> None:
        if self.blob is None:
            return
        store, names, acked = self.store, self.names, None
        try:
            with store.errors("deleting a session"):
                token = self._token
                if token is None:
                    command: tuple[Any, ...] = ("DEL", names.session, names.strikes)
                    script = None
                else:
                    command = ("EVALSHA", store.delete_script.sha, 3, *names, token)
                    script = store.delete_script
                if store.wait is not None:
                    acked = store.replicated(names.session, [command], script)[1]
                elif script is None:
                    store.client.delete(names.session, names.strikes)
                else:
                    store.call(script, list(names), [token])
        finally:
            self._released()
        store.confirm(self.key, acked, "deleted")

    def quarantine(self, ttl: float) -> None:
        if self.blob is None:
            return
        target = self.store.quarantine_key(self.key, self.blob)
        try:
            with self.store.errors("quarantining a session"):
                keys, args = [*self.names, target], [self._token or b"", self.blob, scripts.ms(ttl)]
                self.store.call(self.store.quarantine_script, keys, args)
        finally:
            self._released()

    def copy_to_quarantine(self, ttl: float) -> None:
        if self.blob is None:
            return
        target = self.store.quarantine_key(self.key, self.blob)
        with self.store.errors("keeping a copy of a session"):
            self.store.client.set(target, self.blob, px=scripts.ms(ttl))

    def release(self) -> None:
        """Release the lock if still held; never raises (the lease frees it anyway)."""
        lock, self._lock = self._lock, None
        if lock is None or lock.token is None:
            return
        try:
            released = lock.release()
        except CLIENT_ERRORS as exc:
            logger.error(
                "session %s: lock not released (it ends with its lease): Redis at %s: %s: %s",
                fingerprint(self.key),
                self.store.address,
                type(exc).__name__,
                exc,
            )
            return
        if not released:
            logger.warning(
                "session %s: lock lost (lease of %g s ran out, or a failover) before the"
                " request ended",
                fingerprint(self.key),
                self.store.lock_lease,
            )
