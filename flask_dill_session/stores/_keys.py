"""The Redis store's key names: a keyed hash of the store key in a hash tag, never the id.

A session stored under ``session:<sid>`` (``SESSION_KEY_PREFIX`` + id) lives in Redis as::

    session:{<tag>}                            the blob
    lock:session:{<tag>}                       its lock
    strikes:session:{<tag>}                    its count of failed requests
    quarantine:session:{<tag>}:<fp>:<hash>     a blob that failed to load

``<tag>`` is 32 hex digits of BLAKE2b keyed with a key derived from the app's secret
(:func:`~flask_dill_session.envelope.derive_key`), over the store key. Who can read key
names (``SCAN``, ``MONITOR``, an RDB file) learns no id to replay, and cannot tell which
key is whose without the secret. The braces are a Redis Cluster hash tag: the keys of one
session share a slot, so every script touches one slot, while sessions spread over every
master. ``<fp>`` is the fingerprint the log names; ``<hash>`` that of the blob.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import NamedTuple

from ..envelope import derive_key
from .base import quarantine_name

PURPOSE = b"flask_dill_session.redis-key-name"
_ID = re.compile(r"[A-Za-z0-9_-]{16,}")  # what follows the prefix in a key of an earlier release


class Names(NamedTuple):
    """The keys of one session; all in the slot of its tag."""

    session: str
    lock: str
    strikes: str


class KeyNames:
    """Names the keys of sessions for the secret and its *fallbacks*, under *prefix*.

    The names of the fallbacks' keys, and the store key itself (the name an earlier
    release used), are where a session may still be found: :meth:`former`.
    """

    def __init__(
        self,
        secret: str | bytes,
        fallbacks: Sequence[str | bytes] = (),
        *,
        prefix: str = "session:",
        lock_prefix: str = "lock:",
        strikes_prefix: str = "strikes:",
        quarantine_prefix: str = "quarantine:",
    ) -> None:
        if not secret or not all(fallbacks):
            raise ValueError("secrets must not be empty")
        self._keys = [derive_key(each, PURPOSE) for each in (secret, *fallbacks)]
        self.prefix = prefix
        self.lock_prefix = lock_prefix
        self.strikes_prefix = strikes_prefix
        self.quarantine_prefix = quarantine_prefix

    def session(self, key: str, secret: int = 0) -> str:
        """The key of the blob stored under *key*, named with the *secret*-th secret."""
        tag = hashlib.blake2b(key.encode(), key=self._keys[secret], digest_size=16).hexdigest()
        return f"{self.prefix}{{{tag}}}"

    def of(self, key: str) -> Names:
        session = self.session(key)
        return Names(session, self.lock_prefix + session, self.strikes_prefix + session)

    def quarantine(self, key: str, blob: bytes) -> str:
        """Where a bad *blob* read under *key* is kept: its session's slot, fingerprint,
        blob hash."""
        return f"{self.quarantine_prefix}{self.session(key)}:{quarantine_name(key, blob)}"

    def former(self, key: str) -> list[str]:
        """Where *key*'s blob may be if not under its name: the key of an earlier release
        (the store key itself), then its names under the fallback secrets."""
        return [key, *(self.session(key, n) for n in range(1, len(self._keys)))]

    def is_former(self, name: str) -> bool:
        """Whether *name* is a session key of an earlier release: the prefix and an id."""
        return name.startswith(self.prefix) and _ID.fullmatch(name[len(self.prefix) :]) is not None
