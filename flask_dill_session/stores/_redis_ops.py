"""The Redis store's operations: listing, removing, quarantine and the user index.

Not on a request's path except :meth:`RedisOperations.index`, which a save calls only
when the session's user changed. Keys (see :mod:`._keys`):

- a session's handle is its key, ``session:{<tag>}``; listing scans every primary;
- a quarantined blob's handle is its key, ``quarantine:session:{<tag>}:<fp>:<hash>``: the
  session it belongs to is the part before the second colon after the braces, so
  ``restore`` knows where it goes;
- the user index of a user is the sorted set ``users:session:{<hash of the user>}``: its
  members are the handles of the user's sessions scored by their deadlines (in
  milliseconds), and one member ``=<user>`` (scored +inf) keeps the user's value for
  listings. Members past their deadline or whose session is gone are removed when read;
  the set expires with its newest session.
"""

from __future__ import annotations

import hashlib
import math
import time
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager

from . import _clients as clients
from ._clients import Client
from ._keys import KeyNames
from .base import Item, Store

_USER_MEMBER = b"="  # the index member that holds the user's value
_USERS = "users:"  # the prefix of the user index keys


class RedisOperations(Store):
    """The operations of :class:`~.redis.RedisStore`, its base class, over the client and
    key names it declares here."""

    client: Client
    names: KeyNames
    address: str
    supports_index = True

    @abstractmethod
    def errors(self, action: str) -> AbstractContextManager[None]:
        """Raise any client error as ``StoreUnavailableError``."""

    def describe(self) -> str:
        return f"Redis at {self.address}"

    def handle(self, key: str) -> str:
        return self.names.session(key)

    def items(self) -> Iterator[Item]:
        with self.errors("listing sessions"):
            for name in self._scan(self.names.prefix + "{*}"):
                item = self._item(name)
                if item is not None:
                    yield item

    def item(self, handle: str) -> Item | None:
        with self.errors("reading a session"):
            return self._item(handle)

    def remove(self, handle: str) -> bool:
        """``DEL`` the session and its strikes: a request holding it meanwhile writes with
        ``SET XX`` (see the scripts), so nothing comes back."""
        session = self._session_name(handle)
        with self.errors("removing a session"):
            return bool(self.client.delete(session, self.names.strikes_prefix + session))

    def quarantined(self) -> Iterator[Item]:
        pattern = self.names.quarantine_prefix + self.names.prefix + "{*}:*"
        with self.errors("listing the quarantine"):
            for name in self._scan(pattern):
                item = self._item(name)
                if item is not None:
                    yield item

    def restore(self, handle: str, blob: bytes, ttl: float) -> bool:
        if not handle.startswith(self.names.quarantine_prefix):
            raise ValueError(f"not a quarantine key: {handle!r}")
        session = self._session_name(
            handle[len(self.names.quarantine_prefix) :].split("}")[0] + "}"
        )
        with self.errors("restoring a session"):
            if not self.client.set(session, blob, px=max(1, math.ceil(ttl * 1000)), nx=True):
                return False
            self.client.delete(handle)
        return True

    def discard(self, handle: str) -> bool:
        if not handle.startswith(self.names.quarantine_prefix):
            raise ValueError(f"not a quarantine key: {handle!r}")
        with self.errors("purging the quarantine"):
            return bool(self.client.delete(handle))

    def index(self, user: str, handle: str, deadline: float) -> None:
        key = self._index_key(user)
        ms = math.ceil(deadline * 1000)
        with self.errors("indexing a session by user"):
            node = clients.node_of(self.client, key)
            pipe = node.pipeline(transaction=True)
            members: dict[bytes, float] = {
                handle.encode(): ms,
                _USER_MEMBER + user.encode(): math.inf,
            }
            pipe.zadd(key, members)
            pipe.pexpireat(key, ms, gt=True)
            pipe.pexpireat(key, ms, nx=True)
            pipe.execute()

    def indexed(self, user: str | None = None) -> Iterator[tuple[str, str]]:
        with self.errors("reading the user index"):
            if user is not None:
                keys = [self._index_key(user)]
            else:
                keys = list(self._scan(_USERS + self.names.prefix + "{*}"))
            for key in keys:
                yield from self._members(key)

    def _members(self, key: str) -> Iterator[tuple[str, str]]:
        """``(user, handle)`` of the live sessions in the index *key*; prunes the rest."""
        now = math.floor(time.time() * 1000)
        node = clients.node_of(self.client, key)
        node.zremrangebyscore(key, "-inf", now)
        members: list[bytes] = list(node.zrange(key, 0, -1))  # type: ignore[arg-type]
        user = next((m[1:].decode() for m in members if m.startswith(_USER_MEMBER)), None)
        if user is None:
            return
        for member in members:
            if member.startswith(_USER_MEMBER):
                continue
            handle = member.decode()
            if self.client.exists(handle):
                yield user, handle
            else:
                node.zrem(key, member)

    def _index_key(self, user: str) -> str:
        tag = hashlib.sha256(user.encode()).hexdigest()[:32]
        return f"{_USERS}{self.names.prefix}{{{tag}}}"

    def _session_name(self, handle: str) -> str:
        if not (handle.startswith(self.names.prefix + "{") and handle.endswith("}")):
            raise ValueError(f"not a session key: {handle!r}")
        return handle

    def _item(self, name: str) -> Item | None:
        """The item of key *name*, ``None`` if it is gone or not a string."""
        node = clients.node_of(self.client, name)
        pipe = node.pipeline(transaction=False)
        pipe.get(name)
        pipe.pttl(name)
        try:
            blob, pttl = pipe.execute()
        except Exception:  # a key of another type: not ours to list
            return None
        if not isinstance(blob, bytes):
            return None
        deadline = time.time() + (pttl / 1000 if pttl and pttl > 0 else math.inf)
        return Item(name, blob, deadline, len(blob))

    def _scan(self, pattern: str) -> Iterator[str]:
        seen: set[bytes] = set()
        for node in clients.primaries(self.client):
            # decoded as the client sent them
            encoding, errors = clients.key_encoding(node.connection_pool.connection_kwargs)
            for raw in node.scan_iter(match=pattern, count=1000):
                if raw not in seen:
                    seen.add(raw)
                    yield raw.decode(encoding, errors)
