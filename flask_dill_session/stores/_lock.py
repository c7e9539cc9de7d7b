"""The Redis store's per-session lock: a random token under the session's lock key, with
the lease as its ``PX`` TTL, taken by the script that also reads the session."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any, Protocol

from redis.commands.core import Script

from ..exc import StoreUnavailableError
from . import _scripts as scripts
from ._keys import Names
from ._scripts import count, ms


class LockingStore(Protocol):
    """What the lock needs of the Redis store (which imports this module)."""

    lock_timeout: float
    lock_lease: float
    lock_poll: float
    open_script: Script
    release_script: Script

    def run(
        self, script: Script, keys: Sequence[str | bytes], args: list[Any], *, retry: bool
    ) -> tuple[Any, int | None]: ...

    def call(self, script: Script, keys: Sequence[str | bytes], args: Sequence[Any]) -> Any: ...

    def late(self, action: str) -> StoreUnavailableError: ...


class SessionLock:
    """A session's lock: a random token under its lock key with the lease as ``PX`` TTL,
    taken by the script that also reads the session, tried every ``lock_poll`` seconds
    until ``lock_timeout``."""

    def __init__(self, store: LockingStore, key: str, names: Names) -> None:
        self.store = store
        self.key = key
        self.keys = list(names)  # str: encoded as the client encodes every key
        self.blob: bytes | None = None
        self.strikes = 0
        self.token: bytes | None = None  # set while held
        self.refused: float | None = None  # when a try was first refused (monotonic)
        self.waited = 0.0  # seconds from then until the lock was taken

    def acquire(self) -> bool:
        """Take the lock and read the session (no lock if there is none); ``False`` if
        another request held it until the lock timeout."""
        store, token = self.store, secrets.token_hex(16).encode()
        give_up = time.monotonic() + store.lock_timeout
        while not self._try(token):
            if time.monotonic() + store.lock_poll > give_up:
                return False
            time.sleep(store.lock_poll)
        return True

    def _try(self, token: bytes) -> bool:
        store = self.store
        args = [token, b"%d" % ms(store.lock_lease)]
        reply, _ = store.run(store.open_script, self.keys, args, retry=True)
        if reply[0] == scripts.LATE:
            raise store.late("locking and reading a session")
        if reply[0] == scripts.BUSY:
            if self.refused is None:
                self.refused = time.monotonic()
            return False  # held by another request
        if self.refused is not None:
            self.waited = time.monotonic() - self.refused
        if reply[0] == scripts.DONE:
            self.blob, self.strikes, self.token = reply[2], count(reply[3]), token
        return True

    def release(self) -> bool:
        """Delete the lock if it still holds our token; whether it did."""
        token, self.token = self.token, None
        return token is None or bool(
            self.store.call(self.store.release_script, self.keys[1:2], [token])
        )
