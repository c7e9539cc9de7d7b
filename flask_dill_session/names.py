"""How a stored session is named anywhere but in its cookie: never by its id.

The *address* of a store key is the first 16 bytes of its SHA-256; blobs carry it in
their authenticated header (see :mod:`.envelope`), so an operator's tools can tell whose
blob they hold without knowing any session id. The *fingerprint*, its first 12 hex
digits, names a session in log lines, the command line and quarantine.
"""

from __future__ import annotations

import functools
import hashlib

ADDRESS_SIZE = 16


@functools.lru_cache(maxsize=1024)  # a request asks twice: opening and sealing its session
def address(key: str) -> bytes:
    """The address of the store key *key*."""
    return hashlib.sha256(key.encode()).digest()[:ADDRESS_SIZE]


def fingerprint(key: str) -> str:
    """A short hash that names a session in logs and quarantine without revealing its id."""
    return address(key).hex()[:12]


def fingerprint_of(address: bytes) -> str:
    """The fingerprint of the session at *address*."""
    return address.hex()[:12]


def quarantine_name(key: str, blob: bytes) -> str:
    """The name a bad blob is kept under: the session's fingerprint and a hash of the blob."""
    return f"{fingerprint(key)}:{hashlib.sha256(blob).hexdigest()[:16]}"
