"""Authenticated, optionally encrypted, framing of stored session blobs.

Format v3 (numbers big-endian, times as doubles)::

    header    = "FDS3" | flags (1) | created (8) | expires (8, 0 = never) | key id (8)
                | address (16) | version length (1) | version (UTF-8, empty = none)
    plain     = header | payload | HMAC-SHA256(MAC key; header | payload)
    encrypted = header | nonce (12) | AES-256-GCM(payload; associated data header)

The *address* names the session the blob belongs to (:func:`.names.address` of its store
key), so a blob copied to another session fails, and a blob can be authenticated and
attributed without its session id (:meth:`Envelope.inspect`, for the command line). Flag
bit 0 is PERMANENT, bit 1 ENCRYPTED, bit 2 RETIRED (the id was replaced by ``regenerate``:
readable only for the rotation grace, see the interface). The key id, the first 8 bytes
of HMAC-SHA256(MAC key, "key id"), names the secret that sealed the blob without revealing
it, so a blob of a secret this process does not hold (another instance during a rolling
key change) is told apart from a tampered one. Formats v2 (no address; the MAC covers the
store key's length and bytes before the header) and v1 (``"FDS1" | flags | created |
expires | payload | HMAC``, no key id), written by earlier releases, still open given the
store key.

:meth:`Envelope.open` authenticates the whole blob before any byte of the payload is
returned (MACs compared in constant time), so nothing unauthenticated ever reaches an
unpickler. This module knows no Flask; ``cryptography`` is imported only to encrypt or
decrypt.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from .exc import BadPayloadError, DillSessionError, ForeignPayloadError
from .names import ADDRESS_SIZE, address

if TYPE_CHECKING:
    from ._aead import Cipher

MAGIC = b"FDS3"
MAGIC_V2 = b"FDS2"
MAGIC_V1 = b"FDS1"
PERMANENT = 1
ENCRYPTED = 2
RETIRED = 4
_SEALED_FLAGS = PERMANENT | RETIRED  # what a caller may ask seal for
# magic, flags, created, expires, key id, address, version size
_HEADER = struct.Struct(f">4sBdd8s{ADDRESS_SIZE}sB")
_HEADER_V2 = struct.Struct(">4sBdd8sB")  # magic, flags, created, expires, key id, version size
_HEADER_V1 = struct.Struct(">4sBdd")  # magic, flags, created, expires
_KEY_ID_AT = 21  # offset of the key id in a v2 header
_MAC_SIZE = hashlib.sha256().digest_size
_AEAD_OVERHEAD = 12 + 16  # AES-GCM nonce and tag
_SALT = b"flask_dill_session.stored-session"
_INSTALL = 'pip install "flask-dill-session[crypto]"'


class Opened(NamedTuple):
    """An authenticated blob, taken apart."""

    payload: bytes
    flags: int  # PERMANENT, and ENCRYPTED if it was encrypted
    created: float
    expires: float | None
    current_key: bool  # False: re-seal on the next save (see Envelope.open)
    version: str | None = None  # the app version that sealed it, if it gave one
    address: bytes | None = None  # whose blob it is (v3); None for earlier formats


def derive_key(secret: str | bytes, purpose: bytes = _SALT) -> bytes:
    """A key derived from an application secret for *purpose*: by default the MAC key of
    stored sessions; a store that names keys by a keyed hash passes its own purpose."""
    return hmac.new(_raw(secret), purpose, hashlib.sha256).digest()


def _raw(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _load_cipher() -> type[Cipher]:
    """The AES-GCM cipher class; a clear :class:`ImportError` without ``cryptography``."""
    try:
        from ._aead import Cipher
    except ImportError as error:
        message = f"encrypted sessions need the cryptography package: {_INSTALL}"
        raise ImportError(message) from error
    return Cipher


class _Key:
    """One secret: the id written into blobs, a keyed HMAC, and its AES-GCM cipher."""

    __slots__ = ("_cipher", "id", "mac", "secret")

    def __init__(self, secret: bytes) -> None:
        key = derive_key(secret)
        self.secret = secret
        self.id = hmac.digest(key, b"key id", "sha256")[:8]
        # Keyed once; each MAC starts from a copy, since keying costs more than hashing.
        self.mac = hmac.new(key, digestmod=hashlib.sha256)
        self._cipher: Cipher | None = None

    def cipher(self) -> Cipher:
        """Built on first use; :class:`ImportError` without ``cryptography``."""
        if self._cipher is None:
            self._cipher = _load_cipher()(self.secret)
        return self._cipher

    def verify(self, name: bytes, signed: bytes | memoryview, mac: bytes) -> bool:
        state = self.mac.copy()
        state.update(name)
        state.update(signed)
        return hmac.compare_digest(state.digest(), mac)


class Envelope:
    """Seals blobs with the current secret; opens those of the current secret and *fallbacks*.

    With ``encrypt=True`` payloads are sealed with AES-256-GCM, which needs ``cryptography``
    (:class:`ImportError` otherwise). Either way both kinds of blob open, encrypted ones
    wherever ``cryptography`` is installed.
    """

    def __init__(
        self, secret: str | bytes, fallbacks: Sequence[str | bytes] = (), *, encrypt: bool = False
    ) -> None:
        if isinstance(fallbacks, (str, bytes)):  # would become one-character keys
            raise TypeError("fallbacks must be a sequence of secrets, not one secret")
        if not secret or not all(fallbacks):
            raise ValueError("secrets must not be empty")
        self._keys = [_Key(_raw(each)) for each in (secret, *fallbacks)]
        self._by_id: dict[bytes, _Key] = {}
        for key in self._keys:  # a fallback equal to the secret counts as the secret
            self._by_id.setdefault(key.id, key)
        self._encrypt = encrypt
        if encrypt:
            for key in self._keys:
                key.cipher()

    def seal(
        self,
        store_key: str,
        payload: bytes,
        *,
        flags: int,
        created: float,
        expires: float | None,
        version: str | None = None,
    ) -> bytes:
        """A v3 blob of *payload* for *store_key*; *flags* is a union of PERMANENT and
        RETIRED."""
        if flags & ~_SEALED_FLAGS:
            raise ValueError(f"flags must be PERMANENT, RETIRED or 0, not {flags}")
        tag = version.encode() if version else b""
        if len(tag) > 255:
            raise ValueError("version must be at most 255 bytes in UTF-8")
        key = self._keys[0]
        flags |= ENCRYPTED if self._encrypt else 0
        header = _HEADER.pack(
            MAGIC, flags, created, expires or 0.0, key.id, address(store_key), len(tag)
        )
        header += tag
        if self._encrypt:
            return header + key.cipher().seal(header, payload)
        mac = key.mac.copy()
        mac.update(header)
        mac.update(payload)
        return b"".join((header, payload, mac.digest()))

    def open(self, store_key: str, blob: bytes) -> Opened:
        """Authenticate *blob* as stored under *store_key* and take it apart.

        :class:`BadPayloadError` (quarantine it): truncated, malformed, tampered, or moved
        from another session. :class:`ForeignPayloadError` (leave it be): sealed with a
        secret not held here, encrypted while ``cryptography`` is missing, or of a newer
        format. ``current_key`` is True only for a v3 blob sealed with the current secret and
        encrypted exactly when this envelope encrypts; any other blob should be re-sealed
        on its next save, so changing the secret or turning encryption on or off migrates
        sessions as they are used and drops none.
        """
        magic = blob[:4]
        if magic == MAGIC:
            opened = self._open(blob, _HEADER, b"")
            if opened.address != address(store_key):
                raise BadPayloadError("blob belongs to another session (moved or copied)")
            return opened
        if magic == MAGIC_V2:
            return self._open(blob, _HEADER_V2, _prefixed(store_key))
        if magic == MAGIC_V1:
            return self._open_v1(_prefixed(store_key), blob)
        raise self._unknown(magic)

    def inspect(self, blob: bytes) -> Opened:
        """Authenticate *blob* without knowing its session: for a v3 blob, as :meth:`open`
        but ``address`` says whose it is. Blobs of earlier formats name no session and raise
        :class:`ForeignPayloadError` (they open, given the store key, with :meth:`open`)."""
        magic = blob[:4]
        if magic == MAGIC:
            return self._open(blob, _HEADER, b"")
        if magic in (MAGIC_V2, MAGIC_V1):
            raise ForeignPayloadError(
                f"format {magic.decode()} of an earlier release names no session;"
                " it is authenticated when its session is next used, and then rewritten"
            )
        raise self._unknown(magic)

    @staticmethod
    def _unknown(magic: bytes) -> DillSessionError:
        if magic[:3] == b"FDS" and magic[3:].isdigit() and magic > MAGIC:
            return ForeignPayloadError(f"format {magic.decode()} is newer than this release")
        return BadPayloadError(f"unknown format {magic!r}")

    def _open(self, blob: bytes, header: struct.Struct, name: bytes) -> Opened:
        """Open a v3 blob (*header* ``_HEADER``) or a v2 blob (``_HEADER_V2``, its MAC
        covering *name*, the prefixed store key, first)."""
        if len(blob) < header.size:
            raise BadPayloadError("blob is truncated")
        fields = header.unpack_from(blob)
        flags, created, expires, key_id = fields[1:5]
        size = fields[-1]
        start = header.size + size  # of the payload, or of the nonce
        encrypted = bool(flags & ENCRYPTED)
        if len(blob) < start + (_AEAD_OVERHEAD if encrypted else _MAC_SIZE):
            raise BadPayloadError("blob is truncated")
        try:
            key = self._by_id.get(key_id)
            if key is None:
                raise self._foreign(name, blob, start, encrypted, key_id)
            payload = self._unseal(key, name, blob, start, encrypted)
        except ImportError as error:
            message = f"blob is encrypted and cryptography is not installed here: {_INSTALL}"
            raise ForeignPayloadError(message, key_id.hex()) from error
        if payload is None:
            raise BadPayloadError("authentication failed (tampered, or moved from another session)")
        try:
            version = blob[header.size : start].decode() if size else None
        except UnicodeDecodeError as error:
            raise BadPayloadError("version is not UTF-8") from error
        current = header is _HEADER and key is self._keys[0] and encrypted == self._encrypt
        where = fields[5] if header is _HEADER else None
        return Opened(payload, flags, created, expires or None, current, version, where)

    def _unseal(
        self, key: _Key, name: bytes, blob: bytes, start: int, encrypted: bool
    ) -> bytes | None:
        """The payload of *blob* if *key* authenticates it (after *name*), else None."""
        if encrypted:
            return key.cipher().open(name + blob[:start], blob[start:])
        if not key.verify(name, memoryview(blob)[:-_MAC_SIZE], blob[-_MAC_SIZE:]):
            return None
        return blob[start:-_MAC_SIZE]

    def _foreign(
        self, name: bytes, blob: bytes, start: int, encrypted: bool, key_id: bytes
    ) -> DillSessionError:
        """The error for a blob whose key id is not ours: foreign, unless one of our keys
        authenticates it under that key's own id (then only the id was altered)."""
        for key in self._keys:
            genuine = blob[:_KEY_ID_AT] + key.id + blob[_KEY_ID_AT + len(key.id) :]
            if self._unseal(key, name, genuine, start, encrypted) is not None:
                return BadPayloadError("authentication failed (key id altered)")
        message = f"sealed with a secret this process does not hold (key id {key_id.hex()})"
        return ForeignPayloadError(message, key_id.hex())

    def _open_v1(self, name: bytes, blob: bytes) -> Opened:
        if len(blob) < _HEADER_V1.size + _MAC_SIZE:
            raise BadPayloadError("blob is truncated")
        signed, mac = memoryview(blob)[:-_MAC_SIZE], blob[-_MAC_SIZE:]
        # v1 has no key id: a blob of a secret not held here cannot be told from a tampered
        # one, so both are refused as bad.
        if not any(key.verify(name, signed, mac) for key in self._keys):
            raise BadPayloadError("authentication failed (wrong key, wrong session, or tampered)")
        _, flags, created, expires = _HEADER_V1.unpack_from(blob)
        return Opened(blob[_HEADER_V1.size : -_MAC_SIZE], flags, created, expires or None, False)


def _prefixed(store_key: str) -> bytes:
    name = store_key.encode()
    return len(name).to_bytes(2, "big") + name
