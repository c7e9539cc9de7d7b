"""The Redis store's per-session lock: a token of its own under the session's lock key, with
the lease as its ``PX`` TTL, taken in the round trip that also reads the session."""

from __future__ import annotations

import itertools
import math
import os
import secrets
import time
from collections.abc import Sequence
from typing import Any, Protocol

from redis.commands.core import Script

from ..exc import StoreUnavailableError
from . import _scripts as scripts
from ._clients import ServerClock
from ._keys import Names
from ._scripts import count, ms


class _Tokens:
    """Lock tokens, each new: a random prefix of the process (drawn again in a forked
    child, found by its pid: uWSGI forks without Python's fork hooks) and a count. They
    need no secrecy (whoever reads them could delete the lock anyway), only to differ from
    every other holder's: drawing each at random would cost a system call more."""

    def __init__(self) -> None:
        self.draw()

    def draw(self) -> None:
        self._pid = os.getpid()
        self._prefix, self._count = secrets.token_hex(16).encode(), itertools.count()

    def new(self) -> bytes:
        """A token no holder used: hex digits."""
        if os.getpid() != self._pid:
            self.draw()
        return b"%s%x" % (self._prefix, next(self._count))


_tokens = _Tokens()


class LockingStore(Protocol):
    """What the lock needs of the Redis store (which imports this module)."""

    lock_timeout: float
    lock_lease: float
    lock_poll: float
    open_script: Script
    release_script: Script
    server_clock: ServerClock
    pipelines: bool  # whether pipeline() may be called

    def pipeline(self, *commands: tuple[Any, ...]) -> list[Any]: ...

    def run(
        self, script: Script, keys: Sequence[str | bytes], args: list[Any], *, retry: bool
    ) -> Any: ...

    def call(self, script: Script, keys: Sequence[str | bytes], args: Sequence[Any]) -> Any: ...

    def late(self, action: str) -> StoreUnavailableError: ...


class SessionLock:
    """A session's lock: a token of its own under its lock key with the lease as ``PX`` TTL,
    taken in the round trip that also reads the session, tried every ``lock_poll`` seconds
    until ``lock_timeout``.

    The first try sends plain commands in one round trip where the store can pipeline
    (:meth:`_first_try`): a script costs Redis several times what ``SET`` and ``MGET``
    cost. The tries that follow (the second at once, so that an orphaned lock is taken
    over without a pause), and every try where the store's commands go through the
    client (a cluster, a client that caches replies...), run the lock-and-read script
    (:data:`~._scripts.OPEN`), which reads the session only once it holds the lock.
    """

    def __init__(self, store: LockingStore, key: str, names: Names) -> None:
        self.store = store
        self.key = key
        self.keys = list(names)  # str: encoded as the client encodes every key
        self.blob: bytes | None = None
        self.strikes = 0
        self.token: bytes | None = None  # set while held
        self.lease = ms(store.lock_lease)
        self.taken: float | None = None  # when the reply that took it came (monotonic)
        self.refused: float | None = None  # when a try was first refused (monotonic)
        self.waited = 0.0  # seconds from then until the lock was taken

    def acquire(self) -> bool:
        """Take the lock and read the session (no lock if there is none); ``False`` if
        another request held it until the lock timeout."""
        store = self.store
        give_up = time.monotonic() + store.lock_timeout
        if store.pipelines and self._first_try():
            return True
        token = _tokens.new()
        while not self._try(token):
            if time.monotonic() + store.lock_poll > give_up:
                return False
            time.sleep(store.lock_poll)
        return True

    def _first_try(self) -> bool:
        """``SET lock token NX GET PX lease`` and ``MGET`` of the session and its strikes in
        one round trip, with ``TIME`` unless the offset to the server's clock is fresh (so
        once a second or so); whether that settled it (locked and read, or no such
        session). ``False`` if another request holds the lock, or if the lock may have been
        taken after the deadline (``TIME`` shows it, as when the offset was off; without
        ``TIME``, the reply came later than the timeout less the offset's error): then it
        is released and the script decides. Raises ``StoreUnavailableError`` if ``TIME``
        shows it late and the reply came after the timeout (a stall).

        The token names the deadline and the lease (``<hex>.<deadline>.<lease>``): should
        Redis run this after the client gave up, the next request finds the lock orphaned
        and takes it over (:data:`~._scripts.OPEN`)."""
        store, clock, (session, lock, strikes) = self.store, self.store.server_clock, self.keys
        lease = self.lease
        sent = clock.now()
        fresh = clock.fresh(sent)  # before the offset: learn() sets it first
        error, deadline = clock.error, clock.deadline(sent)
        token = b"%s.%d.%d" % (_tokens.new(), deadline, lease)
        commands: list[tuple[Any, ...]] = [
            ("SET", lock, token, "NX", "GET", "PX", lease),
            ("MGET", session, strikes),
        ]
        if not fresh:
            commands.append(("TIME",))
        holder, (blob, stored), *when = store.pipeline(*commands)
        received, self.taken = clock.now(), time.monotonic()
        if holder is not None and holder != token:  # not a copy of ours, sent again
            self._refused()
            return False
        if when:
            seconds, micros = when[0]
            server_ms = int(seconds) * 1000 + int(micros) // 1000
            clock.learn(server_ms, sent, received)
            late = deadline != 0 and server_ms > deadline
        else:  # it ran before the deadline unless the reply was slower than the offset allows
            late = not clock.in_time(sent, received, error)
        if late or blob is None:
            self._release(token)
            if late and when and not clock.in_time(sent, received):
                raise store.late("locking and reading a session")
            return not late
        self.blob, self.strikes, self.token = blob, count(stored), token
        return True

    def _refused(self) -> None:
        if self.refused is None:
            self.refused = time.monotonic()

    def _try(self, token: bytes) -> bool:
        store = self.store
        args = [token, b"%d" % self.lease]
        reply = store.run(store.open_script, self.keys, args, retry=True)
        self.taken = time.monotonic()
        if reply[0] == scripts.LATE:
            raise store.late("locking and reading a session")
        if reply[0] == scripts.BUSY:
            self._refused()
            return False  # held by another request
        if self.refused is not None:
            self.waited = time.monotonic() - self.refused
        if reply[0] == scripts.DONE:
            self.blob, self.strikes, self.token = reply[2], count(reply[3]), token
        return True

    def least_left(self, timeout: float | None) -> int:
        """The least lease (ms) the lock must have left when Redis runs a call sent now for
        that call to run before the client gives up on it, *timeout* after sending; 0: any.

        Redis took the lock before :attr:`taken` and counts its lease down from then, so a
        call that finds ``lease - left`` ms gone runs at most that long after
        :attr:`taken` (plus 1 ms of rounding, and 0.1% for clocks that run apart): in time
        if that is within the *timeout* of now. This takes durations of each clock, no
        offset between them; but Redis counts TTLs by its wall clock, so a server clock
        stepped back (or a failover to a replica whose clock is behind) lets a call that
        much later through. A reply that took the lock slowly, by *d*, counts against the
        call: one Redis runs later than *timeout* - *d* after sending is refused though
        the client still waits. Unknown :attr:`taken`: every call is refused."""
        if timeout is None:
            return 0
        if self.taken is None:
            return self.lease + 1
        budget = math.floor((time.monotonic() - self.taken + timeout) * 999)
        return max(0, self.lease + 1 - budget)

    def release(self) -> bool:
        """Delete the lock if it still holds our token; whether it did."""
        token, self.token = self.token, None
        return token is None or self._release(token)

    def _release(self, token: bytes) -> bool:
        return bool(self.store.call(self.store.release_script, self.keys[1:2], [token]))
