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
- a failed request (:meth:`~.base.Entry.strike`) appends a strike record: a record of its
  own magic, framed and checksummed like a data record, whose payload is the count of
  consecutive failures, and sets the mtime. The count read is that of the newest intact
  strike record after the newest intact data record (0 if none), so a write resets it by
  appending its data record, and a touch appends a strike record of 0 only when the count
  is not 0 already. Compaction keeps the blob alone (and the new count, when a strike
  compacts); files without strike records read as before;
- the per-session lock is an ``flock`` on the session's own file (released by the kernel
  if the process dies, and no lock file is left behind);
- file names are a hash of the store key, never cookie text; files are 0600 in 0700
  directories and are opened with ``O_NOFOLLOW``.

Faults (see :mod:`.base` for the contract): every ``OSError`` on the way (open, lock, read,
write, touch, delete, quarantine, compaction, create, ``makedirs``) is raised as
:class:`~flask_dill_session.exc.StoreUnavailableError` by :meth:`FileSystemStore.errors`,
naming its cause and path. A failed append is cut back off under the lock, a failed create
or compaction removes its file, so a full disk never leaves a half-written session.

- **Read-only store** (``EROFS``, ``EACCES``, ``EPERM`` when opening a session file for
  writing): the file is opened read-only, without its lock, and the entry is ``degraded``:
  the session is served, its touch skipped, and any change raises.
- **Foreign files**: a file without an intact record is reported as ``damage`` (``"empty
  file"``, ``"unframed content"``, ``"torn first record"``) and can be quarantined; cleanup
  quarantines such files rather than deleting them.
- **A create in flight**: a new file is made with ``O_EXCL`` and its creator takes its lock
  before writing its first record, so a reader that waits for the lock sees the record. An
  empty file whose mtime is within ``_records.CREATE_GRACE`` seconds of now may still be getting its
  record (a reader can open it between the create and the lock): it reads as absent and is
  left alone. An older empty file was left by a creator that died, and is ``damage``.
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
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..config import DEFAULTS, Settings
from ..exc import ConfigError, LockTimeoutError, StoreUnavailableError
from ._fs_ops import FileOperations, quarantine_file_name
from ._records import RECORD, damage_of, frame, last_record, parse, strike_frame
from .base import Entry, fingerprint

__all__ = ["FileSystemStore", "frame", "last_record", "strike_frame"]

_COMPACT_AT = 8192  # bytes; compact when a file would outgrow this and 4 records
_READ = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_ONLY = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_DENIED = (errno.EROFS, errno.EACCES, errno.EPERM)  # readable, maybe, but not writable
_NOT_A_FILE = (errno.ELOOP, errno.EISDIR, errno.ENXIO)  # a symlink, directory or socket
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TMP_SUFFIX = ".tmp"
_CLEANUP_GRACE = 60.0  # seconds; never reap a file this close to its deadline
_TOUCH_STEP = 1.0  # seconds; a touch that would move the deadline by less is skipped


class FileSystemStore(FileOperations):
    """Session blobs as files below *directory*."""

    supports_index = True

    def __init__(
        self,
        directory: str,
        *,
        lock_timeout: float = DEFAULTS.lock_timeout,
        fsync: bool = DEFAULTS.fsync,
        clock: Callable[[], float] = time.time,
        quarantine_lifetime: float = DEFAULTS.quarantine_lifetime,
    ) -> None:
        self.directory = os.path.abspath(directory)
        self._prefix = os.path.join(self.directory, "")  # with its separator, for path()
        self.quarantine_dir = os.path.join(self.directory, "quarantine")
        self.lock_timeout = lock_timeout
        self.fsync = fsync
        self.clock = clock
        self.quarantine_lifetime = quarantine_lifetime
        os.makedirs(self.directory, mode=0o700, exist_ok=True)

    @classmethod
    def from_config(cls, settings: Settings, config: Mapping[str, Any]) -> FileSystemStore:
        """The store in ``SESSION_FILE_DIR``, created and probed (a file written and removed):
        a directory that cannot be used is a ``ConfigError`` naming the key and path."""
        try:
            store = cls(
                settings.file_dir,
                lock_timeout=settings.lock_timeout,
                fsync=settings.fsync,
                quarantine_lifetime=settings.quarantine_lifetime,
            )
            _probe(store.directory)
        except OSError as exc:
            cause = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError(
                f"SESSION_FILE_DIR {settings.file_dir!r} cannot hold sessions: {cause}"
            ) from None
        return store

    def path(self, key: str) -> str:
        """The file of *key*: a hash of it, never the key itself."""
        name = hashlib.blake2b(key.encode(), digest_size=20).hexdigest()
        return f"{self._prefix}{name[:2]}{os.sep}{name}"

    def new(self, key: str) -> Entry:
        return _FileEntry(self, key, self.path(key), None, None, 0, locked=False)

    def new_at(self, path: str) -> Entry:
        # The key is not known, only the file: it names nothing but quarantine copies.
        return _FileEntry(self, "", path, None, None, 0, locked=False)

    def open(self, key: str, *, lock: bool) -> Entry:
        path = self.path(key)
        waited = 0.0
        try:  # not self.errors(): this runs on every request that uses its session
            while True:
                entry, wait = self._open_once(key, path, lock=lock)
                waited += wait
                if entry is not None:
                    if waited:
                        entry.waited = waited
                    return entry
        except OSError as exc:
            raise self.unavailable("reading a session", exc, path) from exc

    @contextlib.contextmanager
    def errors(self, action: str, path: str | None = None) -> Iterator[None]:
        """Raise any ``OSError`` as :class:`StoreUnavailableError`, made by :meth:`unavailable`
        (which :meth:`open` and a write call themselves, with no generator on their path)."""
        try:
            yield
        except OSError as exc:
            raise self.unavailable(action, exc, path) from exc

    def unavailable(self, action: str, exc: OSError, path: str | None) -> StoreUnavailableError:
        """The error for *exc*, met while *action*: its cause and the path it concerns."""
        cause = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        where = exc.filename if isinstance(exc.filename, str) else path or self.directory
        return StoreUnavailableError(
            f"session store unavailable: {cause} while {action} at {where}",
            cause=cause,
            where=where,
        )

    def _open_once(self, key: str, path: str, *, lock: bool) -> tuple[Entry | None, float]:
        """:meth:`open`, or ``None`` if the file was replaced while we waited for its lock;
        and the seconds waited for the lock."""
        fd, denied = self._open_fd(path)
        if fd is None:
            return self.new(key), 0.0
        locked = lock and denied is None  # a read-only file is served without its lock
        waited = 0.0
        try:
            if locked:
                waited = self._lock(fd)
            info = os.fstat(fd)
            gone = info.st_nlink == 0 or not stat.S_ISREG(info.st_mode)
            data = b"" if gone else os.pread(fd, info.st_size, 0)
        except BaseException:
            _close_quietly(fd)
            raise
        if gone:  # deleted or compacted meanwhile; or not a regular file
            os.close(fd)
            replaced = info.st_nlink == 0 and os.path.lexists(path)
            return (None if replaced else self.new(key)), waited
        entry = self._entry(key, path, fd, data, info.st_mtime, locked=locked, denied=denied)
        return entry, waited

    def _open_fd(self, path: str) -> tuple[int | None, OSError | None]:
        """*path* opened for appending; or read-only, with the error that refused writing;
        ``None`` if there is no regular file."""
        try:
            return os.open(path, _READ), None
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        except OSError as exc:
            if exc.errno in _NOT_A_FILE:
                return None, None
            if exc.errno not in _DENIED:
                raise
            denied = exc
        try:
            return os.open(path, _READ_ONLY), denied
        except (FileNotFoundError, NotADirectoryError):
            return None, None

    def _entry(
        self,
        key: str,
        path: str,
        fd: int,
        data: bytes,
        mtime: float,
        *,
        locked: bool,
        denied: OSError | None,
    ) -> Entry:
        """The entry for the bytes *data* read from *fd*, which it then owns."""
        blob, deadline, stop, strikes = parse(data)
        damage = None if blob is not None else damage_of(data, mtime)
        expired = blob is not None and max(deadline, mtime) <= self.clock()
        if expired or (blob is None and damage is None):
            try:
                if expired and locked:
                    _unlink_quietly(path)
            finally:
                os.close(fd)
            return self.new(key)
        entry = _FileEntry(self, key, path, fd, blob, len(data), locked=locked)
        entry.expires = max(deadline, mtime)
        if strikes:
            entry.strikes = strikes
        # Bytes after the newest intact record (a torn append), or no record at all: a
        # record appended after them could never be found, so the next write compacts.
        if stop != len(data):
            entry.torn = True
        if damage is not None:
            entry.damage = damage
        if denied is not None:
            entry.degraded = True
            entry.denied = denied
            entry.fault = self.unavailable("opening a session for writing", denied, path)
        return entry

    def cleanup(self, report: Counter[str] | None = None) -> int:
        """Remove expired session files, stale temporary files, old quarantine and index
        markers of sessions gone; move files that hold no session at all (``damage``) to
        quarantine. Returns how many it removed (markers not counted)."""
        now = self.clock()
        counts = Counter[str]() if report is None else report
        with self.errors("cleaning up"):
            for entry in _files(self.directory, shards=True):
                if entry.name.endswith(_TMP_SUFFIX):
                    if _mtime(entry) < now - 3600:
                        counts["temporary files"] += _unlink_quietly(entry.path)
                elif _mtime(entry) < now - _CLEANUP_GRACE:
                    counts["expired sessions"] += self._reap(entry.path, now)
            for entry in _files(self.quarantine_dir, shards=False):
                if _mtime(entry) < now:
                    counts["quarantined blobs past their keep time"] += _unlink_quietly(entry.path)
            removed = sum(counts.values())
            counts["user index entries of sessions gone"] += self.prune_index()
            counts["revocation marks over an hour old"] += self.prune_revoked(now - 3600)
        return removed

    def _reap(self, path: str, now: float) -> int:
        """Delete *path* if it is expired, checked again under its lock (skip if busy); move
        it to quarantine if it holds no intact record."""
        try:
            fd = os.open(path, _READ)
        except OSError:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            info = os.fstat(fd)
            data = os.pread(fd, info.st_size, 0)
            blob, deadline = last_record(data)
            if not info.st_nlink or max(deadline, info.st_mtime) >= now - _CLEANUP_GRACE:
                return 0
            if blob is None and damage_of(data, info.st_mtime) is not None:
                name = quarantine_file_name("unknown", path, now, secrets.token_hex(4))
                self.keep(path, name, now + self.quarantine_lifetime)
                return 0
            return _unlink_quietly(path)
        except BlockingIOError:
            return 0
        finally:
            os.close(fd)

    def keep(self, path: str, name: str, until: float) -> bool:
        """Move *path* to quarantine as *name*, kept until *until*; ``False`` if it is gone."""
        os.makedirs(self.quarantine_dir, mode=0o700, exist_ok=True)
        target = os.path.join(self.quarantine_dir, name)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return False
        os.utime(target, (until, until))
        return True

    def keep_copy(self, record: bytes, name: str, until: float) -> None:
        """Write *record* to quarantine as *name*, kept until *until*."""
        os.makedirs(self.quarantine_dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.quarantine_dir, name), _CREATE, 0o600)
        try:
            _write_all(fd, record)
            os.utime(fd, (until, until))
        finally:
            os.close(fd)

    def _lock(self, fd: int) -> float:
        """``flock`` with a timeout: try, then poll with a growing pause. Returns the seconds
        waited since the first refused try (0.0, and no clock read, if none was refused)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return 0.0
        except BlockingIOError:
            pass
        refused = time.monotonic()
        give_up = refused + self.lock_timeout
        pause = 0.0005
        while True:
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return time.monotonic() - refused
            except BlockingIOError:
                if time.monotonic() >= give_up:
                    raise LockTimeoutError(
                        f"session lock not acquired within {self.lock_timeout:g} s"
                    ) from None


class _FileEntry(Entry):
    # Class defaults: an entry is made on every request, and sets these only when they differ.
    torn = False  # bytes after the newest intact record: the next write compacts
    expires = 0.0  # the deadline stored when opened
    denied: OSError | None = None  # why the file was opened read-only

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

    def write(self, blob: bytes, ttl: float) -> bool:
        self._check_writable("writing a session")
        deadline = self.store.clock() + ttl
        record = frame(blob, deadline)
        try:  # as in FileSystemStore.open
            if self._fd is None:
                return self._create(record, deadline)
            if not self._locked and os.fstat(self._fd).st_nlink == 0:
                return False  # deleted by another request: do not resurrect
            if self._outgrows(len(record), len(record)):
                return self._compact(record, deadline)
            self._append(self._fd, record)
            self._finish(self._fd, deadline)
        except OSError as exc:
            raise self.store.unavailable("writing a session", exc, self.path) from exc
        return True

    def touch(self, ttl: float) -> None:
        if self._fd is None or self.degraded:
            return
        deadline = self.store.clock() + ttl
        if self.strikes:
            self._mark(0, deadline, "refreshing a session's expiry")
            return
        if 0.0 <= deadline - self.expires < _TOUCH_STEP:
            return  # refreshed less than a second ago: a burst of requests, one utime
        with self.store.errors("refreshing a session's expiry", self.path):
            os.utime(self._fd, (deadline, deadline))

    def strike(self, ttl: float) -> None:
        """Append a strike record of ``strikes + 1`` and set the mtime; the interface then
        calls :meth:`release`. An unlinked file (deleted meanwhile) stays unlinked."""
        if self._fd is None or self.blob is None:
            return
        self._check_writable("recording a failed request")
        self._mark(self.strikes + 1, self.store.clock() + ttl, "recording a failed request")

    def delete(self) -> None:
        if self._fd is not None:
            self._check_writable("deleting a session")
            with self.store.errors("deleting a session", self.path):
                _unlink_quietly(self.path)

    def quarantine(self, ttl: float) -> None:
        if self._fd is None:
            return
        self._check_writable("quarantining a session")
        now = self.store.clock()
        name = quarantine_file_name(fingerprint(self.key), self.path, now, secrets.token_hex(4))
        with self.store.errors("quarantining a session", self.path):
            self.store.keep(self.path, name, now + ttl)

    def copy_to_quarantine(self, ttl: float) -> None:
        if self.blob is None:
            return
        self._check_writable("keeping a copy of a session")
        now = self.store.clock()
        name = quarantine_file_name(fingerprint(self.key), self.path, now, secrets.token_hex(4))
        with self.store.errors("keeping a copy of a session", self.path):
            self.store.keep_copy(frame(self.blob, now + ttl), name, now + ttl)

    def release(self) -> None:
        if self._fd is not None:
            _close_quietly(self._fd)  # also releases the flock
            self._fd = None

    def _check_writable(self, action: str) -> None:
        """Raise, for *action*, the error that refused writing if the entry is read-only."""
        if self.denied is not None:
            raise self.store.unavailable(action, self.denied, self.path) from self.denied

    def _outgrows(self, extra: int, record: int) -> bool:
        """Whether to compact rather than append *extra* bytes: the file is torn, or would
        outgrow both ``_COMPACT_AT`` and four data records of *record* bytes."""
        return self.torn or self._size + extra > max(_COMPACT_AT, 4 * record)

    def _mark(self, count: int, deadline: float, action: str) -> None:
        """Record *count* strikes and move the expiry to *deadline*, for *action*: append a
        strike record, or compact to the blob and (if *count*) that record. A file unlinked
        meanwhile is appended to harmlessly, never replaced."""
        assert self._fd is not None and self.blob is not None
        record = strike_frame(count, deadline)
        with self.store.errors(action, self.path):
            if self._outgrows(len(record), RECORD.size + len(self.blob)):
                if os.fstat(self._fd).st_nlink == 0:
                    return
                data = frame(self.blob, deadline)
                self._compact(data + record if count else data, deadline)
            else:
                self._append(self._fd, record)
                self._finish(self._fd, deadline)
        self.strikes = count

    def _append(self, fd: int, record: bytes) -> None:
        """Append *record*; if that fails, cut off what was written of it (under the lock:
        unlocked, another request may have appended since, and a torn tail is skipped)."""
        try:
            _write_all(fd, record)
        except OSError:
            if self._locked:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._size)
            raise
        self._size += len(record)

    def _create(self, record: bytes, deadline: float) -> bool:
        fd = self._create_file()
        if fd is None:
            return False
        try:
            self.store._lock(fd)  # a reader that waits for it sees the record (see module doc)
            _write_all(fd, record)
            self._finish(fd, deadline, new_name=True)
        except BaseException:
            with contextlib.suppress(OSError):
                _unlink_quietly(self.path)  # a half-made session file: never leave it
            raise
        finally:
            os.close(fd)
        return True

    def _create_file(self) -> int | None:
        """A new, empty file at our path; ``None`` if one exists already."""
        try:
            try:
                return os.open(self.path, _CREATE, 0o600)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
                return os.open(self.path, _CREATE, 0o600)
        except FileExistsError:
            return None

    def _compact(self, record: bytes, deadline: float) -> bool:
        tmp = f"{self.path}.{secrets.token_hex(6)}{_TMP_SUFFIX}"
        fd = os.open(tmp, _CREATE, 0o600)
        try:
            _write_all(fd, record)
            self._finish(fd, deadline)
        except BaseException:
            with contextlib.suppress(OSError):
                _unlink_quietly(tmp)  # never rename a half-written file over a good one
            raise
        finally:
            os.close(fd)
        assert self._fd is not None
        if os.fstat(self._fd).st_nlink == 0:  # deleted meanwhile (revoked, even if locked)
            _unlink_quietly(tmp)
            return False
        os.rename(tmp, self.path)
        if self.store.revoked(self.path):  # revoked after the check above: undo
            _unlink_quietly(self.path)
            return False
        if self.store.fsync:
            _fsync_dir(os.path.dirname(self.path))
        return True

    def _finish(self, fd: int, deadline: float, *, new_name: bool = False) -> None:
        os.utime(fd, (deadline, deadline))
        if self.store.fsync:
            os.fsync(fd)
            if new_name:
                _fsync_dir(os.path.dirname(self.path))


def _probe(directory: str) -> None:
    """Write and remove a file in *directory*; ``OSError`` if that cannot be done."""
    path = os.path.join(directory, f".probe.{secrets.token_hex(6)}{_TMP_SUFFIX}")
    fd = os.open(path, _CREATE, 0o600)
    try:
        _write_all(fd, b"probe")
    finally:
        os.close(fd)
        _unlink_quietly(path)


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
    written = os.write(fd, data)
    if written == len(data):  # the common case, in one call
        return
    view = memoryview(data)[written:]
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
    # Not contextlib.suppress: this runs at the end of every request.
    try:  # noqa: SIM105
        os.close(fd)
    except OSError:
        pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
