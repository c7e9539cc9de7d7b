"""AES-256-GCM for stored sessions, from the optional ``cryptography`` package.

Importing this module imports ``cryptography``; :mod:`.envelope` imports it only when it
needs to encrypt or decrypt.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_SIZE = 12
_SALT = b"flask_dill_session.encrypted-session"
_INFO = b"AES-256-GCM key"


class Cipher:
    """AES-256-GCM under a key derived from an application secret with HKDF-SHA256."""

    __slots__ = ("_aead",)

    def __init__(self, secret: bytes) -> None:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO)
        self._aead = AESGCM(hkdf.derive(secret))

    def seal(self, associated: bytes, plaintext: bytes) -> bytes:
        """``nonce | ciphertext | tag``, under a fresh random nonce."""
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def open(self, associated: bytes, sealed: bytes) -> bytes | None:
        """The plaintext of ``nonce | ciphertext | tag``, or None if the tag does not
        authenticate it and *associated*."""
        try:
            return self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], associated)
        except InvalidTag:
            return None
