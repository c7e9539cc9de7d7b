"""The filesystem store's operations: listing, removing, quarantine and the user index.

None of this is on a request's path except :meth:`FileOperations.index`, which a save
calls only when the session's user changed. Names, never cookie text, make every path:

- a session file is ``<shard>/<name>``, *name* the 40 hex digits of a hash of its key
  (its handle);
- a quarantined file is ``quarantine/<fingerprint>.<name>.<time>.<random>``, so the log's
  fingerprint finds it and ``restore`` knows where it belongs;
- a revoked session leaves ``revoked/<name>`` for an hour (see :meth:`FileOperations.remove`);
- the user index is ``users/<hash of the user>/<name>``: a small marker file per session
  holding the user's value as text, with the session's deadline as its mtime.
  Markers of sessions gone since are removed when read, and by cleanup.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from ._records import damage_of, last_record
from .base import Entry, Item, Store

_NAME = re.compile(r"[0-9a-f]{40}")
_QUARANTINED = re.compile(r"(?:[0-9a-f]{12}|unknown)\.([0-9a-f]{40})\.\d+\.[0-9a-f]{8}")
_OPEN = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
_MARK = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def quarantine_file_name(fingerprint: str, path: str, now: float, token: str) -> str:
    """The quarantine name of the session file *path* (see the module docstring)."""
    return f"{fingerprint}.{os.path.basename(path)}.{int(now)}.{token}"


class FileOperations(Store):
    """The operations of :class:`~.filesystem.FileSystemStore`, its base class, over the
    primitives it declares here."""

    directory: str
    quarantine_dir: str
    clock: Callable[[], float]

    @abstractmethod
    def path(self, key: str) -> str:
        """The file of *key*."""

    @abstractmethod
    def errors(self, action: str, path: str | None = None) -> AbstractContextManager[None]:
        """Raise any ``OSError`` as ``StoreUnavailableError``."""

    @abstractmethod
    def new_at(self, path: str) -> Entry:
        """An entry that creates the session file *path*, for a session known by its file
        alone; its write returns ``False`` if the file exists."""

    @abstractmethod
    def _lock(self, fd: int) -> float:
        """``flock`` *fd* within the lock timeout; the seconds waited."""

    def describe(self) -> str:
        return self.directory

    def handle(self, key: str) -> str:
        return os.path.basename(self.path(key))

    def items(self) -> Iterator[Item]:
        with self.errors("listing sessions"):
            for name, path in self.session_files():
                item = _read_item(name, path)
                if item is not None:
                    yield item

    def item(self, handle: str) -> Item | None:
        path = self._named(handle)
        with self.errors("reading a session", path):
            return _read_item(handle, path)

    def session_files(self) -> Iterator[tuple[str, str]]:
        """``(name, path)`` of every session file."""
        for shard in _listing(self.directory):
            if len(shard) != 2:
                continue
            for name in _listing(os.path.join(self.directory, shard)):
                if _NAME.fullmatch(name):
                    yield name, os.path.join(self.directory, shard, name)

    def remove(self, handle: str) -> bool:
        """Leave a revocation mark, then unlink: a request holding the file meanwhile may
        still compact it (a new file by rename), and removes that file when it sees the
        mark (see :meth:`revoked`). Nothing waits for the holder."""
        path = self._named(handle)
        mark = os.path.join(self.directory, "revoked", handle)
        with self.errors("removing a session", path):
            if not os.path.lexists(path):
                return False
            _write_marker(mark)
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
        return True

    def revoked(self, path: str) -> bool:
        """Whether the session file *path* was revoked (checked after a compaction, which
        then unlinks what it renamed into place)."""
        return os.path.exists(os.path.join(self.directory, "revoked", os.path.basename(path)))

    def prune_revoked(self, before: float) -> int:
        """Remove revocation marks made before *before*; return how many."""
        top = os.path.join(self.directory, "revoked")
        removed = 0
        for name in _listing(top):
            mark = os.path.join(top, name)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(mark).st_mtime < before:
                    os.unlink(mark)
                    removed += 1
        return removed

    def quarantined(self) -> Iterator[Item]:
        with self.errors("listing the quarantine", self.quarantine_dir):
            for name in _listing(self.quarantine_dir):
                item = _read_item(name, os.path.join(self.quarantine_dir, name))
                if item is not None:
                    yield item

    def restore(self, handle: str, blob: bytes, ttl: float) -> bool:
        match = _QUARANTINED.fullmatch(handle)
        if match is None:
            raise ValueError(f"not a quarantined file name: {handle!r}")
        source = os.path.join(self.quarantine_dir, handle)
        target = self._named(match.group(1))
        with self.errors("restoring a session", target):
            if not os.path.exists(source):
                return False
            if not self.new_at(target).write(blob, ttl):  # created as a session's first write
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(source)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, "revoked", match.group(1)))
        return True

    def discard(self, handle: str) -> bool:
        if "/" in handle or handle.startswith("."):
            raise ValueError(f"not a quarantined file name: {handle!r}")
        with self.errors("purging the quarantine", self.quarantine_dir):
            try:
                os.unlink(os.path.join(self.quarantine_dir, handle))
            except FileNotFoundError:
                return False
        return True

    def index(self, user: str, handle: str, deadline: float) -> None:
        marker = os.path.join(self.directory, "users", _user_hash(user), handle)
        with self.errors("indexing a session by user", marker):
            _write_marker(marker, user.encode(), deadline)

    def indexed(self, user: str | None = None) -> Iterator[tuple[str, str]]:
        top = os.path.join(self.directory, "users")
        folders = [_user_hash(user)] if user is not None else _listing(top)
        with self.errors("reading the user index", top):
            for folder in folders:
                for name in _listing(os.path.join(top, folder)):
                    found = self._marker(os.path.join(top, folder, name), name)
                    if found is not None:
                        yield found, name

    def prune_index(self) -> int:
        """Remove the index markers of sessions that are gone; return how many."""
        top = os.path.join(self.directory, "users")
        removed = 0
        for folder in _listing(top):
            for name in _listing(os.path.join(top, folder)):
                if self._marker(os.path.join(top, folder, name), name) is None:
                    removed += 1
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(top, folder))  # only if empty
        return removed

    def _marker(self, marker: str, name: str) -> str | None:
        """The user a marker names, or ``None`` after removing a marker whose session is
        gone (or that is not a marker)."""
        session = self._named(name) if _NAME.fullmatch(name) else None
        try:
            if session is not None and os.path.exists(session):
                with open(marker, "rb") as file:
                    return file.read().decode("utf-8", "replace")
            os.unlink(marker)
        except FileNotFoundError:
            pass
        return None

    def _named(self, name: str) -> str:
        """The path of the session file *name*; ``ValueError`` for anything else."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a session file name: {name!r}")
        return os.path.join(self.directory, name[:2], name)


def _read_item(name: str, path: str) -> Item | None:
    """The item of the file *path*, ``None`` if it is gone or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.EISDIR, errno.ENXIO):
            return None
        raise
    try:
        info = os.fstat(fd)
        data = os.pread(fd, info.st_size, 0)
    finally:
        os.close(fd)
    blob, deadline = last_record(data)
    why = None if blob is not None else damage_of(data, info.st_mtime)
    return Item(name, blob, max(deadline, info.st_mtime), len(data), why)


def _write_marker(path: str, content: bytes = b"", mtime: float | None = None) -> None:
    """Write the small file *path* (its directory made if need be), *mtime* its mtime."""
    try:
        fd = os.open(path, _MARK, 0o600)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, _MARK, 0o600)
    try:
        if content:
            os.write(fd, content)
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)


def _listing(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _user_hash(user: str) -> str:
    return hashlib.sha256(user.encode()).hexdigest()[:32]
