"""Authenticated framing of stored session blobs.

A blob is ``header | payload | mac``. The header holds the format version, flags, and the
creation and absolute expiry times; the MAC is HMAC-SHA256 over the store key, the header
and the payload, keyed by a key derived from the application secret for this purpose
alone. :meth:`Envelope.open` checks the MAC in constant time before any byte of the
payload is returned, so nothing unauthenticated ever reaches an unpickler. This module
knows no Flask.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from typing import NamedTuple

from .exc import BadPayloadError

MAGIC = b"FDS1"
PERMANENT = 1
_HEADER = struct.Struct(">4sBdd")  # magic, flags, created, expires (0 = never)
_MAC_SIZE = hashlib.sha256().digest_size
_SALT = b"flask_dill_session.stored-session"


class Opened(NamedTuple):
    """An authenticated blob, taken apart."""

    payload: bytes
    flags: int
    created: float
    expires: float | None
    current_key: bool  # False: made with a fallback key, re-seal on the next save


def derive_key(secret: str | bytes) -> bytes:
    """The MAC key for stored sessions, derived from an application secret."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(raw, _SALT, hashlib.sha256).digest()


class Envelope:
    """Seals and opens blobs with the current secret; also opens those of *fallbacks*."""

    def __init__(self, secret: str | bytes, fallbacks: Sequence[str | bytes] = ()) -> None:
        if isinstance(fallbacks, (str, bytes)):  # would become one-character keys
            raise TypeError("fallbacks must be a sequence of secrets, not one secret")
        if not secret or not all(fallbacks):
            raise ValueError("secrets must not be empty")
        self._keys = [derive_key(secret), *(derive_key(key) for key in fallbacks)]
        # Keyed once; each MAC starts from a copy, since keying costs more than hashing.
        self._macs = [hmac.new(key, digestmod=hashlib.sha256) for key in self._keys]

    def seal(
        self, store_key: str, payload: bytes, *, flags: int, created: float, expires: float | None
    ) -> bytes:
        header = _HEADER.pack(MAGIC, flags, created, expires or 0.0)
        return header + payload + self._mac(self._macs[0], store_key, header, payload)

    def open(self, store_key: str, blob: bytes) -> Opened:
        """Authenticate *blob* as stored under *store_key*; raise :class:`BadPayloadError`."""
        if len(blob) < _HEADER.size + _MAC_SIZE:
            raise BadPayloadError("blob is truncated")
        header = blob[: _HEADER.size]
        payload = blob[_HEADER.size : -_MAC_SIZE]
        mac = blob[-_MAC_SIZE:]
        matches = [
            hmac.compare_digest(mac, self._mac(keyed, store_key, header, payload))
            for keyed in self._macs
        ]
        if not any(matches):
            raise BadPayloadError("authentication failed (wrong key, wrong session, or tampered)")
        magic, flags, created, expires = _HEADER.unpack(header)
        if magic != MAGIC:
            raise BadPayloadError(f"unknown format {magic!r}")
        return Opened(payload, flags, created, expires or None, matches[0])

    @staticmethod
    def _mac(keyed: hmac.HMAC, store_key: str, header: bytes, payload: bytes) -> bytes:
        name = store_key.encode()
        mac = keyed.copy()
        mac.update(len(name).to_bytes(2, "big") + name)
        mac.update(header)
        mac.update(payload)
        return mac.digest()
