"""Filesystem store: one append-only file per session, in 256 hashed shard directories.

Why not cachelib's ``FileSystemCache``: it replaces the whole file by rename on every
write (ext4 flushes data on such a rename: ~250 µs), evicts live entries once its
threshold is reached, keeps a shared count file that loses updates across processes,
and has no locks. Here:

- a write appends one framed record (length, CRC-32, deadline, blob) and sets the file's
  mtime to the idle deadline; a torn append fails its CRC and the previous record is
  served, so a crash loses at most the write it interrupted;
- once a file holds several records it is compacted by writing a new file and renaming
  it over the old one, so the rename cost is paid once per many writes;
- a touch is one ``utime`` (skipped when the deadline moved less than a second ago); a
  read is one ``open`` + ``fstat`` + ``pread``;
- the per-session lock is an ``flock`` on the session's own file (released by the kernel
  if the process dies, and no lock file is left behind);
- file names are a hash of the store key, never cookie text; files are 0600 in 0700
  directories and are opened with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import math
import os
import secrets
import stat
import struct
import time
import zlib
from collections.abc import Callable, Iterator

from ..exc import LockTimeoutError
from .base import Entry, Store, fingerprint

_MAGIC = b"\xfd\x53"
_RECORD = struct.Struct("<2sIId")  # magic, length, crc32(deadline + blob), deadline
_DEADLINE = struct.Struct("<d")
_HEAD = struct.Struct("<2sI")  # the start of a record: magic, length
_STAMPED = _RECORD.size - _DEADLINE.size  # where the checksummed bytes of a record begin
_COMPACT_AT = 8192  # bytes; compact when a file would outgrow this and 4 records
_READ = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TMP_SUFFIX = ".tmp"
_CLEANUP_GRACE = 60.0  # seconds; never reap a file this close to its deadline
_TOUCH_STEP = 1.0  # seconds; a touch that would move the deadline by less is skipped


def frame(blob: bytes, deadline: float) -> bytes:
    """One record: header and blob, checksummed so a torn write is detected."""
    stamp = _DEADLINE.pack(deadline)
    crc = zlib.crc32(blob, zlib.crc32(stamp))
    return _RECORD.pack(_MAGIC, len(blob), crc, deadline) + blob


def last_record(data: bytes) -> tuple[bytes | None, float]:
    """The newest intact record's blob and deadline, or ``(None, 0.0)``."""
    blob, deadline, _ = _parse(data)
    return blob, deadline


def _parse(data: bytes) -> tuple[bytes | None, float, int]:
    """:func:`last_record`, and the offset where that record ends (0 if there is none)."""
    starts: list[int] = []
    keep = starts.append
    pos, end, size, unpack = 0, len(data), _RECORD.size, _HEAD.unpack_from
    while pos + size <= end:  # walk the headers; check only the newest records' CRCs
        magic, length = unpack(data, pos)
        if magic != _MAGIC or pos + size + length > end:
            break
        keep(pos)
        pos += size + length
    view = memoryview(data)
    for pos in reversed(starts):
        _, length, crc, deadline = _RECORD.unpack_from(data, pos)
        stop = pos + size + length
        if zlib.crc32(view[pos + _STAMPED : stop]) == crc:  # the deadline, then the blob
            return data[pos + size : stop], deadline, stop
    return None, 0.0, 0


class FileSystemStore(Store):
    """Session blobs as files below *directory*."""

    def __init__(
        self,
        directory: str,
        *,
        lock_timeout: float = 10.0,
        fsync: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = os.path.abspath(directory)
        self.quarantine_dir = os.path.join(self.directory, "quarantine")
        self.lock_timeout = lock_timeout
        self.fsync = fsync
        self.clock = clock
        os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def path(self, key: str) -> str:
        """The file of *key*: a hash of it, never the key itself."""
        name = hashlib.blake2b(key.encode(), digest_size=20).hexdigest()
        return os.path.join(self.directory, name[:2], name)

    def new(self, key: str) -> Entry:
        return _FileEntry(self, key, self.path(key), None, None, 0, locked=False)

    def open(self, key: str, *, lock: bool) -> Entry:
        path = self.path(key)
        while True:
            try:
                fd = os.open(path, _READ)
            except (FileNotFoundError, NotADirectoryError):
                return self.new(key)
            except OSError as exc:
                # a symlink, directory or socket planted where a session file belongs
                if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                    return self.new(key)
                raise
            try:
                if lock:
                    self._lock(fd)
                info = os.fstat(fd)
                if info.st_nlink == 0:  # deleted, or compacted, while we waited
                    os.close(fd)
                    if os.path.lexists(path):
                        continue
                    return self.new(key)
                if not stat.S_ISREG(info.st_mode):
                    os.close(fd)
                    return self.new(key)
                data = os.pread(fd, info.st_size, 0)
            except BaseException:
                _close_quietly(fd)
                raise
            blob, deadline, stop = _parse(data)
            if blob is None or max(deadline, info.st_mtime) <= self.clock():
                if lock and blob is not None:
                    _unlink_quietly(path)
                os.close(fd)
                return self.new(key)
            entry = _FileEntry(self, key, path, fd, blob, len(data), locked=lock)
            entry.expires = max(deadline, info.st_mtime)
            # Bytes after the newest intact record (a torn append): a record appended after
            # them could never be found, so the next write compacts instead.
            entry.torn = stop != len(data)
            return entry

    def cleanup(self) -> int:
        """Remove expired session files, stale temporary files and old quarantine."""
        now = self.clock()
        removed = 0
        for entry in _files(self.directory, shards=True):
            if entry.name.endswith(_TMP_SUFFIX):
                if _mtime(entry) < now - 3600:
                    removed += _unlink_quietly(entry.path)
            elif _mtime(entry) < now - _CLEANUP_GRACE:
                removed += self._reap(entry.path, now)
        for entry in _files(self.quarantine_dir, shards=False):
            if _mtime(entry) < now:
                removed += _unlink_quietly(entry.path)
        return removed

    def _reap(self, path: str, now: float) -> int:
        """Delete *path* if it is expired, checked again under its lock (skip if busy)."""
        try:
            fd = os.open(path, _READ)
        except OSError:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            info = os.fstat(fd)
            _, deadline = last_record(os.pread(fd, info.st_size, 0))
            if info.st_nlink and max(deadline, info.st_mtime) < now - _CLEANUP_GRACE:
                return _unlink_quietly(path)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
        return 0

    def _lock(self, fd: int) -> None:
        """``flock`` with a timeout: try, then poll with a growing pause."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        give_up = time.monotonic() + self.lock_timeout
        pause = 0.0005
        while True:
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= give_up:
                    raise LockTimeoutError(
                        f"session lock not acquired within {self.lock_timeout:g} s"
                    ) from None


class _FileEntry(Entry):
    def __init__(
        self,
        store: FileSystemStore,
        key: str,
        path: str,
        fd: int | None,
        blob: bytes | None,
        size: int,
        *,
        locked: bool,
    ) -> None:
        self.store = store
        self.key = key
        self.path = path
        self.blob = blob
        self._fd = fd
        self._size = size
        self._locked = locked
        self.torn = False
        self.expires = 0.0  # the deadline stored when opened

    def write(self, blob: bytes, ttl: float) -> bool:
        deadline = self.store.clock() + ttl
        record = frame(blob, deadline)
        if self._fd is None:
            return self._create(record, deadline)
        if not self._locked and os.fstat(self._fd).st_nlink == 0:
            return False  # deleted by another request: do not resurrect
        if self.torn or self._size + len(record) > max(_COMPACT_AT, 4 * len(record)):
            return self._compact(record, deadline)
        _write_all(self._fd, record)
        self._size += len(record)
        self._finish(self._fd, deadline)
        return True

    def touch(self, ttl: float) -> None:
        if self._fd is not None:
            deadline = self.store.clock() + ttl
            if 0.0 <= deadline - self.expires < _TOUCH_STEP:
                return  # refreshed less than a second ago: a burst of requests, one utime
            os.utime(self._fd, (deadline, deadline))

    def delete(self) -> None:
        if self._fd is not None:
            _unlink_quietly(self.path)

    def quarantine(self, ttl: float) -> None:
        if self._fd is None:
            return
        target, until = self._quarantine_target(ttl)
        try:
            os.rename(self.path, target)
        except FileNotFoundError:
            return
        os.utime(target, (until, until))

    def copy_to_quarantine(self, ttl: float) -> None:
        if self.blob is None:
            return
        target, until = self._quarantine_target(ttl)
        fd = os.open(target, _CREATE, 0o600)
        try:
            _write_all(fd, frame(self.blob, until))
            os.utime(fd, (until, until))
        finally:
            os.close(fd)

    def _quarantine_target(self, ttl: float) -> tuple[str, float]:
        """A new quarantine path for this session (named by its fingerprint, as logged)."""
        now = self.store.clock()
        os.makedirs(self.store.quarantine_dir, mode=0o700, exist_ok=True)
        name = f"{fingerprint(self.key)}.{int(now)}.{secrets.token_hex(4)}"
        return os.path.join(self.store.quarantine_dir, name), now + ttl

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also releases the flock
            self._fd = None

    def _create(self, record: bytes, deadline: float) -> bool:
        try:
            fd = os.open(self.path, _CREATE, 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            fd = os.open(self.path, _CREATE, 0o600)
        except FileExistsError:
            return False
        try:
            _write_all(fd, record)
            self._finish(fd, deadline, new_name=True)
        except BaseException:
            _unlink_quietly(self.path)  # a half-made session file: never leave it
            raise
        finally:
            os.close(fd)
        return True

    def _compact(self, record: bytes, deadline: float) -> bool:
        tmp = f"{self.path}.{secrets.token_hex(6)}{_TMP_SUFFIX}"
        fd = os.open(tmp, _CREATE, 0o600)
        try:
            _write_all(fd, record)
            self._finish(fd, deadline)
        except BaseException:
            _unlink_quietly(tmp)  # never rename a half-written file over a good one
            raise
        finally:
            os.close(fd)
        assert self._fd is not None
        if not self._locked and os.fstat(self._fd).st_nlink == 0:
            _unlink_quietly(tmp)
            return False
        os.rename(tmp, self.path)
        if self.store.fsync:
            _fsync_dir(os.path.dirname(self.path))
        return True

    def _finish(self, fd: int, deadline: float, *, new_name: bool = False) -> None:
        os.utime(fd, (deadline, deadline))
        if self.store.fsync:
            os.fsync(fd)
            if new_name:
                _fsync_dir(os.path.dirname(self.path))


def _files(directory: str, *, shards: bool) -> Iterator[os.DirEntry[str]]:
    """Regular files of *directory* (or of its two-letter shard directories)."""
    try:
        top = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for item in top:
        if not shards:
            if item.is_file(follow_symlinks=False):
                yield item
        elif len(item.name) == 2 and item.is_dir(follow_symlinks=False):
            with os.scandir(item.path) as inner:
                for file in inner:
                    if file.is_file(follow_symlinks=False):
                        yield file


def _mtime(entry: os.DirEntry[str]) -> float:
    """The mtime of a listed file, or infinity if it is gone already (renamed, deleted)."""
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return math.inf


def _write_all(fd: int, data: bytes) -> None:
    """Write all of *data*; a short write (disk full, quota, size limit) raises OSError."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:
            raise OSError(errno.ENOSPC, "no space left for the session")
        view = view[written:]


def _unlink_quietly(path: str) -> int:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return 0
    return 1


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
