"""The session file's records: framed, checksummed, read from the end of the file.

A record is ``magic | length | CRC-32 | deadline | payload`` (little-endian); the CRC
covers the deadline and the payload, so a torn append is detected. A data record holds a
blob; a strike record (its own magic) holds the count of failed requests since the data
record before it. A file is appended to, so its newest records are at its end.
"""

from __future__ import annotations

import struct
import time
import zlib

MAGIC = b"\xfd\x53"  # a data record: the blob
STRIKES = b"\xfd\x54"  # a strike record: failed requests since the data record before it
RECORD = struct.Struct("<2sIId")  # magic, length, crc32(deadline + payload), deadline
_COUNT = struct.Struct("<I")  # the payload of a strike record
_DEADLINE = struct.Struct("<d")
_HEAD = struct.Struct("<2sI")  # the start of a record: magic, length
CREATE_GRACE = 10.0  # seconds; an empty file younger than this may be a create in flight
_STAMPED = RECORD.size - _DEADLINE.size  # where the checksummed bytes of a record begin


def frame(blob: bytes, deadline: float) -> bytes:
    """One data record: header and blob, checksummed so a torn write is detected."""
    return _framed(MAGIC, blob, deadline)


def strike_frame(count: int, deadline: float) -> bytes:
    """One strike record: *count* failed requests since the data record before it, and the
    expiry the strike set (which the file's mtime carries)."""
    return _framed(STRIKES, _COUNT.pack(min(count, 0xFFFFFFFF)), deadline)


def _framed(magic: bytes, payload: bytes, deadline: float) -> bytes:
    stamp = _DEADLINE.pack(deadline)
    crc = zlib.crc32(payload, zlib.crc32(stamp))
    return RECORD.pack(magic, len(payload), crc, deadline) + payload


def last_record(data: bytes) -> tuple[bytes | None, float]:
    """The newest intact data record's blob and deadline, or ``(None, 0.0)``."""
    blob, deadline, _, _ = parse(data)
    return blob, deadline


def parse(data: bytes) -> tuple[bytes | None, float, int, int]:
    """:func:`last_record`; the offset where the newest intact record of either kind ends
    (0 if there is no data record); and the strikes: the count of the newest intact strike
    record after the data record, 0 if none. Torn records of either kind are skipped."""
    if data[:2] == MAGIC:  # a file of ours: its newest records are at the end
        found = _parse_from_end(data)
        if found is not None:
            return found
    return _parse_from_start(data)


def _parse_from_end(data: bytes) -> tuple[bytes, float, int, int] | None:
    """:func:`parse` in the common case, whatever the number of records: step back from
    the end of the file, record by record; ``None`` when the file does not end with an
    intact record (a torn append), which only the walk from the start can sort out."""
    end = pos = len(data)
    strikes = -1
    while True:
        start = _record_ending_at(data, pos)
        if start is None:
            return None
        magic, length, _, deadline = RECORD.unpack_from(data, start)
        if magic == MAGIC:
            return data[start + RECORD.size : pos], deadline, end, max(strikes, 0)
        if strikes < 0 and length == _COUNT.size:
            strikes = _COUNT.unpack_from(data, start + RECORD.size)[0]
        pos = start


def _record_ending_at(data: bytes, end: int) -> int | None:
    """The start of the intact record that ends exactly at *end*, if there is one: the
    nearest byte before it that opens a header whose length and CRC fit."""
    size, lead = RECORD.size, MAGIC[0]
    if end < size:  # no room for a header (and a negative bound would count from the end)
        return None
    start = data.rfind(lead, 0, end - size + 1)
    while start >= 0:
        magic, length, crc, _ = RECORD.unpack_from(data, start)
        if (
            start + size + length == end
            and magic in (MAGIC, STRIKES)
            and zlib.crc32(memoryview(data)[start + _STAMPED : end]) == crc
        ):
            return start
        start = data.rfind(lead, 0, start)
    return None


def _parse_from_start(data: bytes) -> tuple[bytes | None, float, int, int]:
    """:func:`parse` by walking every record header from the start of the file."""
    starts: list[int] = []
    keep = starts.append
    pos, end, size, unpack = 0, len(data), RECORD.size, _HEAD.unpack_from
    blob_magic, strike_magic = MAGIC, STRIKES
    while pos + size <= end:  # walk the headers; check only the newest records' CRCs
        magic, length = unpack(data, pos)
        if (magic != blob_magic and magic != strike_magic) or pos + size + length > end:
            break
        keep(pos)
        pos += size + length
    view = memoryview(data)
    stop, strikes = 0, -1
    for pos in reversed(starts):
        magic, length, crc, deadline = RECORD.unpack_from(data, pos)
        after = pos + size + length
        if zlib.crc32(view[pos + _STAMPED : after]) != crc:  # the deadline, then the payload
            continue
        if magic == blob_magic:
            return data[pos + size : after], deadline, stop or after, max(strikes, 0)
        stop = stop or after
        if strikes < 0 and length == _COUNT.size:
            strikes = _COUNT.unpack_from(data, pos + size)[0]
    return None, 0.0, 0, 0


def damage_of(data: bytes, mtime: float) -> str | None:
    """Why *data*, a file's bytes without an intact record, is no session; ``None`` for an
    empty file that may be a create in flight (see the filesystem store's docstring)."""
    if not data:
        return None if abs(time.time() - mtime) < CREATE_GRACE else "empty file"
    if data.startswith(MAGIC) or MAGIC.startswith(data):
        return "torn first record"
    return "unframed content"
