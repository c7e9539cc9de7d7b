"""What an operator asks of a store: its sessions, who they belong to, what is in them,
whether they still load, and revoking them. No Flask: the interface and the command line
build on it.

Sessions are named by their fingerprint (as in log lines) and the store's handle, never
by id. A blob is attributed to its session and authenticated from its header alone
(:meth:`~.codec.Codec.inspect`); blobs of earlier formats name no session, so they are
listed as ``unverified`` until their session is next used and rewritten.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .codec import Codec, Opened
from .exc import BadPayloadError, DillSessionError, ForeignPayloadError
from .names import fingerprint, fingerprint_of
from .stores.base import Item, Store

#: What :meth:`Inventory.check` finds of a stored session.
LOADS, DROPS, UNLOADABLE, UNVERIFIED, DAMAGED = (
    "loads",
    "would drop keys",
    "unloadable",
    "unverified",
    "damaged",
)


@dataclass(frozen=True)
class SessionInfo:
    """One stored session as listed: times are epoch seconds, ``None`` when unknown."""

    fingerprint: str | None  # None: the blob names no session (damaged, earlier format)
    handle: str
    user: str | None
    created: float | None
    last_active: float
    deadline: float  # the idle deadline
    size: int
    expired: bool

    def as_json(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


@dataclass(frozen=True)
class Checked:
    """A stored session loaded with the current code: the outcome, and what it says."""

    info: SessionInfo
    outcome: str  # LOADS, DROPS, UNLOADABLE, UNVERIFIED or DAMAGED
    detail: str = ""
    dropped: Mapping[str, str] = field(default_factory=dict)
    opened: Opened | None = None


class Inventory:
    """Read and revoke the sessions of *store*, sealed by *codec*; *idle_lifetime* is the
    app's session lifetime in seconds (for "last active")."""

    def __init__(
        self,
        store: Store,
        codec: Codec,
        idle_lifetime: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.codec = codec
        self.idle_lifetime = idle_lifetime
        self.clock = clock

    def sessions(self, user: str | None = None) -> Iterator[SessionInfo]:
        """Every stored session (of *user*, read from the index, if given)."""
        owners = self.owners()
        if user is None:
            for item in self.store.items():
                yield self.info(item, owners.get(item.handle))
            return
        for owner, handle in self.store.indexed(user):
            found = self.store.item(handle)
            if found is not None:
                yield self.info(found, owner)

    def info(self, item: Item, user: str | None = None) -> SessionInfo:
        """What the header of *item* says, authenticated, without unpickling it."""
        if item.blob is not None:
            try:
                sealed = self.codec.envelope.inspect(item.blob)
            except DillSessionError:
                pass
            else:
                assert sealed.address is not None
                return self._info(item, user, fingerprint_of(sealed.address), sealed.created)
        return self._info(item, user, None, None)

    def _info(
        self, item: Item, user: str | None, name: str | None, created: float | None
    ) -> SessionInfo:
        return SessionInfo(
            fingerprint=name,
            handle=item.handle,
            user=user,
            created=created,
            last_active=item.deadline - self.idle_lifetime,
            deadline=item.deadline,
            size=item.size,
            expired=item.deadline <= self.clock(),
        )

    def find(self, reference: str, key_of: Callable[[str], str | None]) -> Item | None:
        """The stored session a session id or a fingerprint (or a unique prefix of it, at
        least 6 digits) names. *key_of* gives the store key of a session id, ``None`` if
        *reference* is not one."""
        key = key_of(reference)
        if key is not None:
            return self.store.item(self.store.handle(key))
        if len(reference) < 6 or not all(c in "0123456789abcdef" for c in reference):
            return None
        found = [
            item
            for item in self.store.items()
            if (self.info(item).fingerprint or "").startswith(reference)
        ]
        if len(found) > 1:
            raise ValueError(f"{reference!r} names {len(found)} sessions: give more digits")
        return found[0] if found else None

    def check(self, item: Item, key: str | None = None, user: str | None = None) -> Checked:
        """Load *item* (of *user*) with the current code, read-only: nothing is written or
        locked. With its store *key*, a blob of an earlier format opens too. The blob is
        authenticated once, by the load itself."""
        if item.blob is None:
            return Checked(self.info(item, user), DAMAGED, item.damage or "no intact record")
        try:
            if key is not None:
                opened = self.codec.open(key, item.blob)
                name = fingerprint(key)
            else:
                address, opened = self.codec.inspect(item.blob)
                name = fingerprint_of(address)
        except ForeignPayloadError as exc:
            return Checked(self.info(item, user), UNVERIFIED, str(exc))
        except BadPayloadError as exc:
            return Checked(self.info(item, user), UNLOADABLE, str(exc))
        info = self._info(item, user, name, opened.meta.created)
        if opened.dropped:
            return Checked(info, DROPS, "", opened.dropped, opened)
        return Checked(info, LOADS, "", {}, opened)

    def revoke(self, handle: str) -> bool:
        """Delete the session *handle* now (see :meth:`~.stores.base.Store.remove`)."""
        return self.store.remove(handle)

    def revoke_user(self, user: str, keep: str | None = None) -> int:
        """Delete every indexed session of *user* but the one of handle *keep*; how many."""
        handles = [handle for _, handle in self.store.indexed(user) if handle != keep]
        return sum(self.store.remove(handle) for handle in handles)

    def stats(self) -> dict[str, Any]:
        """Counts, sizes and the oldest creation time of the stored sessions."""
        now = self.clock()
        live: list[SessionInfo] = []
        expired = 0
        for info in map(self.info, self.store.items()):  # no users: the index is not read
            if info.expired:
                expired += 1
            else:
                live.append(info)
        sizes = sorted(info.size for info in live)
        created = [info.created for info in live if info.created is not None]
        return {
            "where": self.store.describe(),
            "live": len(live),
            "expired": expired,
            "quarantined": sum(1 for _ in self.store.quarantined()),
            "bytes": sum(sizes),
            "p50_bytes": _percentile(sizes, 0.50),
            "p99_bytes": _percentile(sizes, 0.99),
            "oldest_created": min(created) if created else None,
            "oldest_age_seconds": now - min(created) if created else None,
        }

    def owners(self) -> dict[str, str]:
        """Handle -> user, from the index; empty where the store keeps none."""
        if not self.store.supports_index:
            return {}
        return {handle: user for user, handle in self.store.indexed()}


def _percentile(values: list[int], fraction: float) -> int | None:
    """The nearest-rank percentile of the sorted *values*."""
    if not values:
        return None
    return values[max(0, math.ceil(fraction * len(values)) - 1)]
