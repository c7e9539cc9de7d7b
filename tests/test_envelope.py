"""Envelope v3: addresses, key ids, AES-GCM encryption at rest, and v2 and v1 blobs of
earlier releases."""

from __future__ import annotations

import hashlib
import hmac
import struct
import subprocess
import sys

import pytest

from flask_dill_session.envelope import ENCRYPTED, PERMANENT, RETIRED, Envelope, Opened
from flask_dill_session.exc import BadPayloadError, DillSessionError, ForeignPayloadError

from .support import ROOT

KEY = "session:0123456789abcdef"
PAYLOAD = b"\x80\x05payload with a marker: SECRET-MARKER-7f3a" + bytes(range(64))
MARKER = b"SECRET-MARKER-7f3a"
CREATED, EXPIRES = 1_700_000_000.25, 1_700_604_800.5

# The v3 layout, spelled out independently of the module under test.
HEADER = struct.Struct(">4sBdd8s16sB")
HEADER_V2 = struct.Struct(">4sBdd8sB")
KEY_ID = slice(21, 29)
ADDRESS = hashlib.sha256(KEY.encode()).digest()[:16]
MAC_SIZE = 32
NONCE_SIZE, TAG_SIZE = 12, 16


def mac_key(secret: str) -> bytes:
    return hmac.new(secret.encode(), b"flask_dill_session.stored-session", "sha256").digest()


def key_id(secret: str) -> str:
    return hmac.new(mac_key(secret), b"key id", "sha256").digest()[:8].hex()


def name(store_key: str) -> bytes:
    raw = store_key.encode()
    return len(raw).to_bytes(2, "big") + raw


def seal(
    envelope: Envelope,
    payload: bytes = PAYLOAD,
    *,
    store_key: str = KEY,
    version: str | None = "2.3.1",
) -> bytes:
    return envelope.seal(
        store_key, payload, flags=PERMANENT, created=CREATED, expires=EXPIRES, version=version
    )


def seal_v2(secret: str, payload: bytes, *, version: bytes = b"2.3.1") -> bytes:
    """A blob exactly as releases before v3 wrote it."""
    header = HEADER_V2.pack(
        b"FDS2", PERMANENT, CREATED, EXPIRES, bytes.fromhex(key_id(secret)), len(version)
    )
    header += version
    mac = hmac.new(mac_key(secret), name(KEY) + header + payload, hashlib.sha256).digest()
    return header + payload + mac


def seal_v1(secret: str, payload: bytes, *, flags: int, expires: float | None) -> bytes:
    """A blob exactly as releases before v2 wrote it."""
    header = struct.pack(">4sBdd", b"FDS1", flags, CREATED, expires or 0.0)
    mac = hmac.new(mac_key(secret), name(KEY) + header + payload, hashlib.sha256).digest()
    return header + payload + mac


def flipped(blob: bytes, index: int, bit: int = 0) -> bytes:
    return blob[:index] + bytes([blob[index] ^ (1 << bit)]) + blob[index + 1 :]


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("encrypt", [False, True])
@pytest.mark.parametrize("version", ["2.3.1", "ünï-版本", None, ""])
def test_round_trip(encrypt: bool, version: str | None) -> None:
    envelope = Envelope("secret", encrypt=encrypt)
    opened = envelope.open(KEY, seal(envelope, version=version))
    extra = ENCRYPTED if encrypt else 0
    expected = Opened(PAYLOAD, PERMANENT | extra, CREATED, EXPIRES, True, version or None, ADDRESS)
    assert opened == expected


@pytest.mark.parametrize("encrypt", [False, True])
def test_no_flags_no_expiry_empty_payload(encrypt: bool) -> None:
    envelope = Envelope(b"secret", encrypt=encrypt)
    blob = envelope.seal(KEY, b"", flags=0, created=0.0, expires=None)
    opened = envelope.open(KEY, blob)
    assert (opened.payload, opened.flags & PERMANENT, opened.expires) == (b"", 0, None)
    assert opened.current_key and opened.version is None


def test_the_plain_layout() -> None:
    blob = seal(Envelope("secret"))
    key = bytes.fromhex(key_id("secret"))
    header = HEADER.pack(b"FDS3", PERMANENT, CREATED, EXPIRES, key, ADDRESS, 5) + b"2.3.1"
    mac = hmac.new(mac_key("secret"), header + PAYLOAD, "sha256").digest()
    assert blob == header + PAYLOAD + mac


def test_the_encrypted_layout_and_a_fresh_nonce_per_seal() -> None:
    envelope = Envelope("secret", encrypt=True)
    first, second = seal(envelope), seal(envelope)
    header = HEADER.pack(
        b"FDS3",
        PERMANENT | ENCRYPTED,
        CREATED,
        EXPIRES,
        bytes.fromhex(key_id("secret")),
        ADDRESS,
        5,
    )
    header += b"2.3.1"
    for blob in (first, second):
        assert blob.startswith(header)
        assert len(blob) == len(header) + NONCE_SIZE + len(PAYLOAD) + TAG_SIZE
    nonce = slice(len(header), len(header) + NONCE_SIZE)
    assert first[nonce] != second[nonce] and first != second


def test_the_marker_never_appears_in_an_encrypted_blob() -> None:
    assert MARKER in seal(Envelope("secret"))  # control: plain blobs are only signed
    for payload in (PAYLOAD, MARKER * 200):
        blob = seal(Envelope("secret", encrypt=True), payload)
        assert MARKER not in blob and MARKER[:8] not in blob


def test_the_version_and_flags_are_checked_when_sealing() -> None:
    envelope = Envelope("secret")
    assert envelope.open(KEY, seal(envelope, version="é" * 127)).version == "é" * 127
    with pytest.raises(ValueError, match="255"):
        seal(envelope, version="x" * 256)
    with pytest.raises(ValueError, match="flags"):
        envelope.seal(KEY, PAYLOAD, flags=ENCRYPTED, created=CREATED, expires=None)
    retired = envelope.seal(KEY, PAYLOAD, flags=RETIRED, created=CREATED, expires=None)
    assert envelope.open(KEY, retired).flags == RETIRED


# -- key ids and rotation --------------------------------------------------------------------


@pytest.mark.parametrize("encrypt", [False, True])
def test_a_blob_of_another_secret_is_foreign_and_names_its_key(encrypt: bool) -> None:
    blob = seal(Envelope("a", encrypt=encrypt))
    assert blob[KEY_ID].hex() == key_id("a")
    with pytest.raises(ForeignPayloadError) as caught:
        Envelope("b", encrypt=encrypt).open(KEY, blob)
    assert caught.value.key_id == key_id("a")
    assert key_id("a") in str(caught.value)
    assert not isinstance(caught.value, BadPayloadError)
    assert isinstance(caught.value, DillSessionError)


@pytest.mark.parametrize("encrypt", [False, True])
def test_a_fallback_opens_it_and_asks_for_a_reseal(encrypt: bool) -> None:
    old = Envelope("a", encrypt=encrypt)
    rotated = Envelope("b", ["c", "a"], encrypt=encrypt)
    opened = rotated.open(KEY, seal(old))
    assert opened.payload == PAYLOAD and opened.version == "2.3.1"
    assert not opened.current_key
    resealed = seal(rotated)
    assert resealed[KEY_ID].hex() == key_id("b")
    assert rotated.open(KEY, resealed).current_key
    assert Envelope("b", encrypt=encrypt).open(KEY, resealed).current_key
    with pytest.raises(ForeignPayloadError) as caught:
        old.open(KEY, resealed)
    assert caught.value.key_id == key_id("b")


def test_both_instances_of_a_rolling_key_change_read_each_other() -> None:
    """Step one of a rolling change: the new key is a fallback everywhere, then current."""
    before = Envelope("old", ["new"])
    after = Envelope("new", ["old"])
    for writer, reader in ((before, after), (after, before)):
        opened = reader.open(KEY, seal(writer))
        assert opened.payload == PAYLOAD and not opened.current_key


def test_a_fallback_equal_to_the_secret_is_the_current_key() -> None:
    envelope = Envelope("a", ["a"])
    assert envelope.open(KEY, seal(envelope)).current_key


# -- encryption on and off -------------------------------------------------------------------


@pytest.mark.parametrize("writer_encrypts", [False, True])
def test_switching_encryption_reads_old_blobs_and_asks_for_a_reseal(
    writer_encrypts: bool,
) -> None:
    writer = Envelope("secret", encrypt=writer_encrypts)
    reader = Envelope("secret", encrypt=not writer_encrypts)
    opened = reader.open(KEY, seal(writer))
    assert opened.payload == PAYLOAD and opened.version == "2.3.1"
    assert bool(opened.flags & ENCRYPTED) == writer_encrypts
    assert not opened.current_key
    assert reader.open(KEY, seal(reader)).current_key


# -- tampering ---------------------------------------------------------------------------


HEADER_REGIONS = {
    "flags": 4,
    "created": 9,
    "expires": 17,
    "key id": 21,
    "key id, last byte": 28,
    "address": 29,
    "address, last byte": 44,
    "version size": 45,
    "version": 47,
}
BODY_REGIONS = {  # offsets from the end of the header (+) or from the end of the blob (-)
    False: {"payload": 5, "mac": -1},
    True: {"nonce": 3, "ciphertext": NONCE_SIZE + 5, "tag": -1},
}


@pytest.mark.parametrize(
    ("encrypt", "region"),
    [(encrypt, region) for encrypt in (False, True) for region in HEADER_REGIONS]
    + [(encrypt, region) for encrypt, places in BODY_REGIONS.items() for region in places],
)
def test_tampering_with_any_region_is_bad(encrypt: bool, region: str) -> None:
    envelope = Envelope("secret", ["older"], encrypt=encrypt)
    blob = seal(envelope)
    if region in HEADER_REGIONS:
        index = HEADER_REGIONS[region]
    else:
        offset = BODY_REGIONS[encrypt][region]
        index = offset if offset < 0 else HEADER.size + len("2.3.1") + offset
    for bit in (0, 1, 7):
        with pytest.raises(BadPayloadError):
            envelope.open(KEY, flipped(blob, index % len(blob), bit))


@pytest.mark.parametrize("encrypt", [False, True])
def test_every_single_bit_flip_after_the_magic_is_bad(encrypt: bool) -> None:
    envelope = Envelope("secret", encrypt=encrypt)
    blob = seal(envelope, PAYLOAD[:20])
    for index in range(4, len(blob)):
        for bit in range(8):
            with pytest.raises(BadPayloadError):
                envelope.open(KEY, flipped(blob, index, bit))


def test_a_key_id_altered_to_a_fallbacks_id_is_bad() -> None:
    envelope = Envelope("secret", ["older"])
    blob = seal(envelope)
    forged = blob[: KEY_ID.start] + bytes.fromhex(key_id("older")) + blob[KEY_ID.stop :]
    with pytest.raises(BadPayloadError):
        envelope.open(KEY, forged)


@pytest.mark.parametrize("encrypt", [False, True])
def test_every_truncation_is_bad(encrypt: bool) -> None:
    envelope = Envelope("secret", encrypt=encrypt)
    blob = seal(envelope, PAYLOAD[:8])
    for size in range(len(blob)):
        with pytest.raises(BadPayloadError):
            envelope.open(KEY, blob[:size])
    with pytest.raises(BadPayloadError):
        envelope.open(KEY, blob + b"\x00")


@pytest.mark.parametrize("encrypt", [False, True])
def test_a_blob_moved_to_another_session_is_bad(encrypt: bool) -> None:
    envelope = Envelope("secret", encrypt=encrypt)
    blob = seal(envelope)
    for other in (KEY + "0", KEY[:-1], "session:", ""):
        with pytest.raises(BadPayloadError, match="another session"):
            envelope.open(other, blob)
    forged = blob.replace(ADDRESS, hashlib.sha256(b"other").digest()[:16])
    with pytest.raises(BadPayloadError, match="authentication failed"):
        envelope.open("other", forged)  # the address is authenticated


def test_unknown_formats() -> None:
    envelope = Envelope("secret")
    blob = seal(envelope)
    with pytest.raises(BadPayloadError, match="unknown format"):
        envelope.open(KEY, b"XYZ9" + blob[4:])
    with pytest.raises(BadPayloadError, match="unknown format"):
        envelope.open(KEY, b"FDS0" + blob[4:])
    with pytest.raises(ForeignPayloadError, match="newer") as caught:
        envelope.open(KEY, b"FDS4" + blob[4:])
    assert caught.value.key_id is None


# -- inspecting without the session id -------------------------------------------------------


@pytest.mark.parametrize("encrypt", [False, True])
def test_inspect_authenticates_and_names_the_session_without_its_id(encrypt: bool) -> None:
    envelope = Envelope("secret", encrypt=encrypt)
    blob = seal(envelope)
    opened = envelope.inspect(blob)
    assert (opened.payload, opened.address) == (PAYLOAD, ADDRESS)
    for index in (5, 30, len(blob) - 1):
        with pytest.raises(BadPayloadError):
            envelope.inspect(flipped(blob, index))
    with pytest.raises(ForeignPayloadError):
        Envelope("other").inspect(blob)


def test_inspect_leaves_blobs_of_earlier_formats_to_their_session() -> None:
    envelope = Envelope("secret")
    for blob in (seal_v2("secret", PAYLOAD), seal_v1("secret", PAYLOAD, flags=0, expires=None)):
        with pytest.raises(ForeignPayloadError, match="earlier release names no session"):
            envelope.inspect(blob)


# -- v2 and v1 blobs of earlier releases ----------------------------------------------------


def test_a_v2_blob_opens_and_asks_for_a_reseal() -> None:
    blob = seal_v2("secret", PAYLOAD)
    for envelope in (Envelope("secret"), Envelope("new", ["secret"])):
        opened = envelope.open(KEY, blob)
        assert opened == Opened(PAYLOAD, PERMANENT, CREATED, EXPIRES, False, "2.3.1", None)
    with pytest.raises(BadPayloadError):
        Envelope("secret").open(KEY + "x", blob)  # its MAC covers the store key
    with pytest.raises(ForeignPayloadError):
        Envelope("other").open(KEY, blob)
    for index in range(4, len(blob)):
        with pytest.raises(BadPayloadError):
            Envelope("secret").open(KEY, flipped(blob, index))


@pytest.mark.parametrize("encrypt", [False, True])
@pytest.mark.parametrize(("flags", "expires"), [(PERMANENT, EXPIRES), (0, None)])
def test_a_v1_blob_opens_and_asks_for_a_reseal(
    encrypt: bool, flags: int, expires: float | None
) -> None:
    blob = seal_v1("secret", PAYLOAD, flags=flags, expires=expires)
    for envelope in (Envelope("secret", encrypt=encrypt), Envelope("new", ["secret"])):
        opened = envelope.open(KEY, blob)
        assert opened == Opened(PAYLOAD, flags, CREATED, expires, False, None)


def test_a_v1_blob_no_key_authenticates_is_bad() -> None:
    blob = seal_v1("secret", PAYLOAD, flags=PERMANENT, expires=EXPIRES)
    envelope = Envelope("secret")
    with pytest.raises(BadPayloadError):
        Envelope("other", ["another"]).open(KEY, blob)
    with pytest.raises(BadPayloadError):
        envelope.open(KEY + "x", blob)
    for index in range(4, len(blob)):
        with pytest.raises(BadPayloadError):
            envelope.open(KEY, flipped(blob, index))
    for size in range(len(blob)):
        with pytest.raises(BadPayloadError):
            envelope.open(KEY, blob[:size])


# -- without cryptography ------------------------------------------------------------------

WITHOUT_CRYPTOGRAPHY = """
import sys
sys.modules["cryptography"] = None
import flask_dill_session
from flask_dill_session.envelope import Envelope
from flask_dill_session.exc import ForeignPayloadError

plain = Envelope("secret")
blob = plain.seal("k", b"data", flags=1, created=1.0, expires=None, version="1")
assert plain.open("k", blob).payload == b"data"
try:
    Envelope("secret", encrypt=True)
except ImportError as error:
    print("encrypt:", error)
for _ in range(2):
    try:
        plain.open("k", bytes.fromhex(sys.argv[1]))
    except ForeignPayloadError as error:
        print("open:", error.key_id, error)
"""


def test_without_cryptography_plain_sealing_works_and_encryption_is_refused() -> None:
    encrypted = Envelope("secret", encrypt=True).seal(
        "k", b"data", flags=1, created=1.0, expires=None
    )
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_CRYPTOGRAPHY, encrypted.hex()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    install = 'pip install "flask-dill-session[crypto]"'
    assert lines[0].startswith("encrypt:") and install in lines[0]
    for line in lines[1:]:
        assert line.startswith(f"open: {key_id('secret')} ") and install in line
