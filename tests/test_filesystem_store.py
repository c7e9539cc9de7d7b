"""The filesystem store: bytes in, bytes out, with expiry; crash-safe; never evicts."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask, session

from flask_dill_session.stores.filesystem import FileSystemStore, frame

from .support import Clock

AppFactory = Callable[..., Flask]

KEY = "session:4mQ7nR2xT9vB1cK8pL5sD3fG6hJ0aZyXwVuEtSrQoNm"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> FileSystemStore:
    return FileSystemStore(str(tmp_path / "store"), clock=clock)


def put(store: FileSystemStore, key: str, blob: bytes, ttl: float = 100.0) -> bool:
    entry = store.open(key, lock=True)
    try:
        return entry.write(blob, ttl)
    finally:
        entry.release()


def get(store: FileSystemStore, key: str, *, lock: bool = False) -> bytes | None:
    entry = store.open(key, lock=lock)
    try:
        return entry.blob
    finally:
        entry.release()


def files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


# -- the basic API -----------------------------------------------------------------------


def test_write_then_read(store: FileSystemStore) -> None:
    assert get(store, KEY) is None
    assert put(store, KEY, b"first")
    assert get(store, KEY) == b"first"
    assert get(store, KEY, lock=True) == b"first"
    assert put(store, KEY, b"second")
    assert get(store, KEY) == b"second"
    assert get(store, "session:other") is None


def test_new_only_creates(store: FileSystemStore) -> None:
    entry = store.new(KEY)
    assert entry.blob is None
    assert entry.write(b"one", 100)
    entry.release()
    again = store.new(KEY)
    assert not again.write(b"two", 100)  # the key exists now: an id is never reused
    again.release()
    assert get(store, KEY) == b"one"


def test_expiry_follows_the_store_clock(store: FileSystemStore, clock: Clock) -> None:
    put(store, KEY, b"blob", ttl=60)
    clock.now += 59
    assert get(store, KEY) == b"blob"
    clock.now += 1
    assert get(store, KEY) is None  # expired entries are absent
    assert get(store, KEY, lock=True) is None
    assert not os.path.exists(store.path(KEY))  # and removed when seen under the lock


def test_touch_moves_the_expiry_without_rewriting(store: FileSystemStore, clock: Clock) -> None:
    put(store, KEY, b"blob", ttl=60)
    size = os.path.getsize(store.path(KEY))
    clock.now += 50
    entry = store.open(KEY, lock=True)
    entry.touch(60)
    entry.release()
    assert os.path.getsize(store.path(KEY)) == size
    clock.now += 50  # 100 s after the write, 50 s after the touch
    assert get(store, KEY) == b"blob"
    clock.now += 10
    assert get(store, KEY) is None


def test_write_resets_the_expiry(store: FileSystemStore, clock: Clock) -> None:
    put(store, KEY, b"one", ttl=60)
    clock.now += 50
    put(store, KEY, b"two", ttl=60)
    clock.now += 50
    assert get(store, KEY) == b"two"


def test_delete(store: FileSystemStore) -> None:
    put(store, KEY, b"blob")
    entry = store.open(KEY, lock=True)
    entry.delete()
    entry.release()
    assert get(store, KEY) is None
    assert not os.path.exists(store.path(KEY))


def test_a_deleted_session_is_not_resurrected_by_a_late_write(store: FileSystemStore) -> None:
    put(store, KEY, b"blob")
    late = store.open(KEY, lock=False)
    other = store.open(KEY, lock=False)
    other.delete()
    other.release()
    assert not late.write(b"late", 100)
    late.release()
    assert get(store, KEY) is None


def test_quarantine_moves_the_blob_aside(store: FileSystemStore, clock: Clock) -> None:
    put(store, KEY, b"suspicious")
    entry = store.open(KEY, lock=True)
    entry.quarantine(3600)
    entry.release()
    assert get(store, KEY) is None
    assert not os.path.exists(store.path(KEY))
    kept = files(Path(store.quarantine_dir))
    assert len(kept) == 1
    assert b"suspicious" in kept[0].read_bytes()
    assert kept[0].stat().st_mtime == pytest.approx(clock.now + 3600)
    assert stat.S_IMODE(os.stat(store.quarantine_dir).st_mode) == 0o700


# -- on disk -----------------------------------------------------------------------------


def test_files_are_0600_and_directories_0700(tmp_path: Path, clock: Clock) -> None:
    old_umask = os.umask(0o022)  # a usual umask, which would let others read
    try:
        store = FileSystemStore(str(tmp_path / "new" / "store"), clock=clock)
        for n in range(600):  # more keys than shard directories: files in existing ones too
            put(store, f"session:{n}", b"blob")
        for _ in range(20):  # compactions write new files
            put(store, KEY, os.urandom(1500))
    finally:
        os.umask(old_umask)
    root = Path(store.directory)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    stored = files(root)
    assert len(stored) == 601
    assert {stat.S_IMODE(path.stat().st_mode) for path in stored} == {0o600}
    shards = {path.parent for path in stored}
    assert len(shards) < len(stored)
    assert {stat.S_IMODE(shard.stat().st_mode) for shard in shards} == {0o700}


def test_file_names_are_hashes_of_the_key(store: FileSystemStore) -> None:
    keys = [KEY, "session:../../etc/passwd", "session:" + "x" * 300]
    for key in keys:
        assert put(store, key, b"blob")
    root = Path(store.directory)
    names = [str(path.relative_to(root)) for path in files(root)]
    assert len(names) == len(keys)
    for name in names:
        assert re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{40}", name), name
    for key in keys:
        assert all(key not in name and key[8:] not in name for name in names)
        assert get(store, key) == b"blob"


def test_no_cookie_text_on_disk(make_app: AppFactory, session_dir: Path) -> None:
    app = make_app()

    @app.route("/set")
    def set_value() -> str:
        session["value"] = "v"
        return "ok"

    client = app.test_client()
    client.get("/set")
    cookie = client.get_cookie("session")
    assert cookie is not None
    stored = files(session_dir)
    assert len(stored) == 1
    assert cookie.value not in str(stored[0])
    assert cookie.value.encode() not in stored[0].read_bytes()
    assert stat.S_IMODE(stored[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(session_dir.stat().st_mode) == 0o700


# -- crash safety ------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 5, 20, 30])
def test_a_torn_trailing_record_is_never_served(store: FileSystemStore, cut: int) -> None:
    put(store, KEY, b"one")
    put(store, KEY, b"two")
    with open(store.path(KEY), "ab") as file:  # a crash in the middle of an append
        file.write(frame(b"three, never completed", 2e9)[:cut])
    assert get(store, KEY) == b"two"
    assert get(store, KEY, lock=True) == b"two"


def test_a_record_with_a_bad_checksum_is_never_served(store: FileSystemStore) -> None:
    put(store, KEY, b"one")
    put(store, KEY, b"two")
    record = bytearray(frame(b"three", 2e9))
    record[-1] ^= 0xFF
    with open(store.path(KEY), "ab") as file:
        file.write(bytes(record))
    assert get(store, KEY) == b"two"


def test_writes_after_a_torn_record_are_served(store: FileSystemStore) -> None:
    put(store, KEY, b"one")
    with open(store.path(KEY), "ab") as file:
        file.write(frame(b"torn", 2e9)[:-2])
    assert put(store, KEY, b"after the crash")
    assert get(store, KEY) == b"after the crash"
    assert put(store, KEY, b"and the next")
    assert get(store, KEY) == b"and the next"


def test_a_torn_first_record_is_absent(store: FileSystemStore) -> None:
    path = Path(store.path(KEY))
    path.parent.mkdir(mode=0o700, parents=True)
    path.write_bytes(frame(b"never completed", 2e9)[:-4])
    assert get(store, KEY) is None


def test_compaction_keeps_the_latest_value(store: FileSystemStore) -> None:
    path = store.path(KEY)
    put(store, KEY, b"v0" * 200)
    inodes = {os.stat(path).st_ino}
    sizes = []
    for n in range(1, 60):
        assert put(store, KEY, f"v{n}".encode() * 200)
        sizes.append(os.path.getsize(path))
        inodes.add(os.stat(path).st_ino)
        assert get(store, KEY) == f"v{n}".encode() * 200
    assert len(inodes) > 1  # the file was rewritten at least once (inode numbers get reused)
    assert max(sizes) < 8192 + 1000  # and does not grow without bound
    assert not [p for p in files(Path(store.directory)) if p.name.endswith(".tmp")]


# -- no eviction -------------------------------------------------------------------------


def test_the_store_never_evicts_a_live_session(store: FileSystemStore) -> None:
    keys = [f"session:{n:06d}" for n in range(3000)]
    for key in keys:
        assert put(store, key, key.encode(), ttl=3600)
    assert [key for key in keys if get(store, key) != key.encode()] == []
    assert len(files(Path(store.directory))) == len(keys)


def test_thousands_of_sessions_through_the_app_all_stay_readable(
    make_app: AppFactory, session_dir: Path
) -> None:
    app = make_app()

    @app.route("/set/<int:n>")
    def set_value(n: int) -> str:
        session["n"] = n
        return "ok"

    @app.route("/get")
    def get_value() -> str:
        return str(session.get("n"))

    sids = []
    for n in range(3000):
        client = app.test_client()
        client.get(f"/set/{n}")
        cookie = client.get_cookie("session")
        assert cookie is not None
        sids.append(cookie.value)
    assert len(set(sids)) == len(sids)
    assert len(files(session_dir)) == len(sids)
    client = app.test_client()
    lost = []
    for n, sid in enumerate(sids):
        client.set_cookie("session", sid)
        if client.get("/get").text != str(n):
            lost.append(n)
    assert lost == []
