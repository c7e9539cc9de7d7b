"""Strikes: the count of consecutive failed requests kept beside a session by the stores.

Real files and a real ``redis-server``: the count is read with the blob, survives across
requests, leaves the blob alone, is reset by a write or a touch at no extra cost when it is
0, and never brings a deleted session back.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import cachelib.simple
import pytest
import redis

from flask_dill_session.exc import StoreUnavailableError
from flask_dill_session.stores._keys import KeyNames
from flask_dill_session.stores.base import Entry, Store
from flask_dill_session.stores.cachelib import CacheLibStore
from flask_dill_session.stores.filesystem import (
    FileSystemStore,
    frame,
    last_record,
    strike_frame,
)
from flask_dill_session.stores.redis import RedisStore

from .support import Clock, RedisServer, Tmpfs

KEY = "session:4mQ7nR2xT9vB1cK8pL5sD3fG6hJ0aZyXwVuEtSrQoNm"
SECRET = "strikes-test-secret"  # of the Redis stores made here
NAME = KeyNames(SECRET).session(KEY)  # KEY's Redis key
BLOB = bytes(range(256)) * 3  # every byte value: compared byte for byte
GRACE = 60.0  # the filesystem store's cleanup grace


class Backend:
    """A store under test, and a look behind its back at how it keeps :data:`KEY`."""

    store: Store

    def remaining(self) -> float:
        """Seconds until the session expires."""
        raise NotImplementedError

    def remains(self) -> bool:
        """Whether anything of the session is stored: its blob, or its strikes."""
        raise NotImplementedError

    def remove(self) -> None:
        """Delete the session as another process would, ignoring its lock."""
        raise NotImplementedError


class FileBackend(Backend):
    def __init__(self, store: FileSystemStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.path = Path(store.path(KEY))

    def remaining(self) -> float:
        deadline = last_record(self.path.read_bytes())[1]
        return max(deadline, self.path.stat().st_mtime) - self.clock.now

    def remains(self) -> bool:
        return self.path.exists()

    def remove(self) -> None:
        self.path.unlink()


class RedisBackend(Backend):
    store: RedisStore

    def __init__(self, store: RedisStore, client: redis.Redis) -> None:
        self.store = store
        self.client = client

    def remaining(self) -> float:
        return int(self.client.pttl(NAME)) / 1000

    def remains(self) -> bool:
        return bool(self.client.exists(NAME, self.store.strikes_key(KEY)))

    def remove(self) -> None:
        self.client.delete(NAME)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fs_store(tmp_path: Path, clock: Clock) -> FileSystemStore:
    return FileSystemStore(str(tmp_path / "store"), lock_timeout=2, clock=clock)


@pytest.fixture
def redis_store(client: redis.Redis) -> RedisStore:
    return RedisStore(client, secret=SECRET, lock_timeout=2)


@pytest.fixture(params=["filesystem", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest, clock: Clock) -> Backend:
    if request.param == "filesystem":
        return FileBackend(request.getfixturevalue("fs_store"), clock)
    return RedisBackend(request.getfixturevalue("redis_store"), request.getfixturevalue("client"))


def put(store: Store, blob: bytes = BLOB, ttl: float = 100.0, *, lock: bool = True) -> None:
    entry = store.open(KEY, lock=lock)
    try:
        assert entry.write(blob, ttl)
    finally:
        entry.release()


def strike(store: Store, ttl: float = 1000.0, *, lock: bool = True) -> int:
    """One failed request: open, strike, release. Returns the strikes it read."""
    entry = store.open(KEY, lock=lock)
    before = entry.strikes
    try:
        entry.strike(ttl)
    finally:
        entry.release()
    return before


def touch(store: Store, ttl: float = 100.0, *, lock: bool = True) -> None:
    entry = store.open(KEY, lock=lock)
    try:
        entry.touch(ttl)
    finally:
        entry.release()


def read(store: Store, *, lock: bool = False) -> tuple[bytes | None, int]:
    """The blob and the strikes, as a request reads them."""
    entry = store.open(KEY, lock=lock)
    entry.release()
    return entry.blob, entry.strikes


# -- both stores -----------------------------------------------------------------------------


def test_a_new_or_absent_session_has_no_strikes(backend: Backend) -> None:
    store = backend.store
    assert read(store) == (None, 0)
    assert read(store, lock=True) == (None, 0)
    assert store.new(KEY).strikes == 0
    put(store)
    assert read(store) == (BLOB, 0)
    assert read(store, lock=True) == (BLOB, 0)


def test_strikes_add_up_across_requests_and_leave_the_blob_alone(backend: Backend) -> None:
    store = backend.store
    put(store, ttl=100)
    assert backend.remaining() <= 100
    assert [strike(store, ttl=1000) for _ in range(3)] == [0, 1, 2]
    assert read(store, lock=True) == (BLOB, 3)
    assert read(store, lock=False) == (BLOB, 3)
    assert 900 < backend.remaining() <= 1000  # the strike moved the expiry


def test_strikes_are_recorded_without_the_lock_too(backend: Backend) -> None:
    put(backend.store)
    strike(backend.store, lock=False)
    strike(backend.store, lock=False)
    assert read(backend.store) == (BLOB, 2)


@pytest.mark.parametrize("lock", [True, False])
def test_a_touch_resets_the_strikes(backend: Backend, lock: bool) -> None:
    store = backend.store
    put(store)
    strike(store)
    strike(store)
    touch(store, ttl=300, lock=lock)
    assert read(store) == (BLOB, 0)
    assert 200 < backend.remaining() <= 300
    strike(store)
    assert read(store) == (BLOB, 1)  # counted from 0 again


@pytest.mark.parametrize("lock", [True, False])
def test_a_write_resets_the_strikes(backend: Backend, lock: bool) -> None:
    store = backend.store
    put(store)
    strike(store)
    put(store, b"changed", lock=lock)
    assert read(store) == (b"changed", 0)
    strike(store)
    assert read(store) == (b"changed", 1)


def test_a_strike_on_a_session_deleted_by_another_request_does_nothing(
    backend: Backend,
) -> None:
    store = backend.store
    put(store)
    late = store.open(KEY, lock=False)
    other = store.open(KEY, lock=True)
    other.delete()
    other.release()
    late.strike(1000)
    late.release()
    assert not backend.remains()
    assert read(store, lock=True) == (None, 0)


def test_a_strike_on_a_session_removed_behind_its_lock_does_not_recreate_it(
    backend: Backend,
) -> None:
    store = backend.store
    put(store)
    held = store.open(KEY, lock=True)
    backend.remove()
    held.strike(1000)
    held.release()
    assert not backend.remains()
    assert read(store, lock=True) == (None, 0)


def test_a_strike_on_an_absent_session_does_nothing(backend: Backend) -> None:
    store = backend.store
    for entry in (store.new(KEY), store.open(KEY, lock=True), store.open(KEY, lock=False)):
        entry.strike(1000)
        entry.release()
    assert not backend.remains()


# -- Redis -----------------------------------------------------------------------------------


class CountingConnection(redis.Connection):
    """A connection that counts what it sends: one send is one round trip."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def commands(client: redis.Redis, action: Callable[[], object]) -> tuple[int, dict[str, int]]:
    """The round trips of *action*, and the commands Redis ran for it (in scripts too)."""

    def calls() -> dict[str, int]:
        return {k[8:]: v["calls"] for k, v in client.info("commandstats").items()}

    before = calls()
    CountingConnection.sends = 0
    action()
    sends = CountingConnection.sends
    after = calls()
    ran = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
    ran.pop("info", None)
    return sends, ran


@pytest.fixture
def counted(redis_server: RedisServer, client: redis.Redis) -> Iterator[RedisStore]:
    """A store whose client counts its round trips, with every script loaded already."""
    pool = redis.ConnectionPool(
        connection_class=CountingConnection, port=redis_server.port, socket_timeout=5
    )
    store = RedisStore(redis.Redis(connection_pool=pool), secret=SECRET, lock_timeout=2)
    for lock in (True, False):
        put(store, lock=lock)
        strike(store, lock=lock)
        touch(store, lock=lock)
        strike(store, lock=lock)
        put(store, lock=lock)
    entry = store.open(KEY, lock=True)
    entry.delete()
    put(store)
    entry = store.open(KEY, lock=True)
    entry.quarantine(10)
    put(store)
    store.open(KEY, lock=True).release()
    client.flushdb()
    yield store
    store.client.close()


@pytest.mark.redis
def test_a_write_or_touch_without_strikes_runs_no_extra_command(
    client: redis.Redis, counted: RedisStore
) -> None:
    put(counted)
    entry = counted.open(KEY, lock=True)
    assert entry.strikes == 0
    assert commands(client, lambda: entry.write(b"two", 100)) == (
        1,
        {"evalsha": 1, "pttl": 1, "getdel": 1, "set": 1},  # no DEL of strikes
    )
    entry = counted.open(KEY, lock=True)
    assert commands(client, lambda: entry.touch(100)) == (
        1,
        {"evalsha": 1, "get": 1, "del": 1, "pexpire": 1},
    )
    assert commands(client, entry.release) == (0, {})
    entry = counted.open(KEY, lock=False)
    assert commands(client, lambda: entry.write(b"three", 100)) == (1, {"set": 1})
    assert commands(client, lambda: entry.touch(100)) == (1, {"pexpire": 1})
    assert commands(client, lambda: counted.open(KEY, lock=False)) == (1, {"mget": 1})
    sends, ran = commands(client, lambda: counted.open(KEY, lock=True).release())
    # lock and read, with the strikes, in one round trip of plain commands; release. The
    # server's clock was learned by an open a moment ago: no TIME.
    assert (sends, ran) == (2, {"set": 1, "mget": 1, "evalsha": 1, "get": 1, "del": 1})
    counted.server_clock.learned -= counted.server_clock.FRESH  # a second without a reply
    sends, ran = commands(client, lambda: counted.open(KEY, lock=True).release())
    assert (sends, ran) == (2, {"set": 1, "mget": 1, "time": 1, "evalsha": 1, "get": 1, "del": 1})


@pytest.mark.redis
def test_resetting_strikes_costs_one_del_in_the_same_round_trip(
    client: redis.Redis, counted: RedisStore
) -> None:
    put(counted)
    strikes_key = counted.strikes_key(KEY)
    for lock in (True, False):
        strike(counted)
        entry = counted.open(KEY, lock=lock)
        assert entry.strikes == 1
        sends, ran = commands(client, partial(entry.write, b"two", 100))
        assert sends == 1 and (ran.get("del"), ran.get("getdel", 0)) == (1, lock)
        assert not client.exists(strikes_key)
        strike(counted)
        entry = counted.open(KEY, lock=lock)
        sends, ran = commands(client, partial(entry.touch, 100))
        assert sends == 1 and ran.get("del", 0) == 1 + lock and not client.exists(strikes_key)
        assert ran.get("pexpire") == 1
        entry.release()


@pytest.mark.redis
def test_a_strike_is_one_script_that_releases_the_lock(
    client: redis.Redis, counted: RedisStore
) -> None:
    put(counted)
    entry = counted.open(KEY, lock=True)
    assert client.keys("lock:*") == [counted.lock_key(KEY).encode()]
    sends, ran = commands(client, lambda: entry.strike(500))
    assert (sends, ran["evalsha"]) == (1, 1)
    assert client.keys("lock:*") == []
    assert commands(client, entry.release) == (0, {})
    strikes_key = counted.strikes_key(KEY)
    assert client.get(strikes_key) == b"1"
    assert 400_000 < client.pttl(strikes_key) <= 500_000
    assert 400_000 < client.pttl(NAME) <= 500_000


@pytest.mark.redis
@pytest.mark.parametrize("end", ["delete", "quarantine"])
@pytest.mark.parametrize("lock", [True, False])
def test_delete_and_quarantine_remove_the_strikes(
    client: redis.Redis, redis_store: RedisStore, end: str, lock: bool
) -> None:
    put(redis_store)
    strike(redis_store)
    entry = redis_store.open(KEY, lock=lock)
    assert entry.strikes == 1
    if end == "delete":
        entry.delete()
    else:
        entry.quarantine(100)
    entry.release()
    assert client.keys("strikes:*") == []
    assert client.keys("lock:*") == []
    assert not client.exists(NAME)
    assert len(client.keys("quarantine:*")) == (end == "quarantine")


@pytest.mark.redis
def test_a_strike_after_the_lease_ran_out_records_nothing(client: redis.Redis) -> None:
    store = RedisStore(client, secret=SECRET, lock_timeout=5, lock_lease=0.2)
    put(store)
    slow = store.open(KEY, lock=True)
    deadline = time.monotonic() + 10
    while client.exists(store.lock_key(KEY)):
        assert time.monotonic() < deadline, "the lease did not run out"
        time.sleep(0.01)
    other = store.open(KEY, lock=True)
    with pytest.raises(StoreUnavailableError, match="failed request not recorded: its lock"):
        slow.strike(100)
    slow.release()
    assert client.exists(store.lock_key(KEY))  # the next holder's lock is left alone
    assert not client.exists(store.strikes_key(KEY))
    other.release()
    assert read(store) == (BLOB, 0)


@pytest.mark.redis
def test_a_foreign_strikes_value_reads_as_none(
    client: redis.Redis, redis_store: RedisStore
) -> None:
    put(redis_store)
    strikes_key = redis_store.strikes_key(KEY)
    foreign: list[Callable[[], object]] = [
        partial(client.set, strikes_key, b"many"),
        partial(client.hset, strikes_key, "a", 1),
    ]
    for make in foreign:
        client.delete(strikes_key)
        make()
        assert read(redis_store, lock=True) == (BLOB, 0)
        assert read(redis_store, lock=False) == (BLOB, 0)
    strike(redis_store)
    assert read(redis_store) == (BLOB, 1)


# -- the filesystem --------------------------------------------------------------------------


def plant(store: FileSystemStore, data: bytes) -> Path:
    """Write *data* as the file of :data:`KEY`."""
    path = Path(store.path(KEY))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_file_without_strike_records_opens_with_no_strikes(
    fs_store: FileSystemStore, clock: Clock
) -> None:
    plant(fs_store, frame(b"one", clock.now + 100) + frame(BLOB, clock.now + 100))
    assert read(fs_store) == (BLOB, 0)
    assert read(fs_store, lock=True) == (BLOB, 0)


def test_a_strike_appends_one_small_record_and_a_touch_without_strikes_none(
    fs_store: FileSystemStore, clock: Clock
) -> None:
    put(fs_store, ttl=100)
    path = Path(fs_store.path(KEY))
    written = path.read_bytes()
    assert written == frame(BLOB, clock.now + 100)
    touch(fs_store, ttl=200)
    assert path.read_bytes() == written  # only the mtime moved
    assert path.stat().st_mtime == clock.now + 200
    strike(fs_store, ttl=300)
    assert path.read_bytes() == written + strike_frame(1, clock.now + 300)
    assert path.stat().st_mtime == clock.now + 300
    touch(fs_store, ttl=400)
    assert path.read_bytes() == written + strike_frame(1, clock.now + 300) + strike_frame(
        0, clock.now + 400
    )
    assert read(fs_store) == (BLOB, 0)


@pytest.mark.parametrize("damage", ["cut", "flipped"])
def test_a_torn_strike_record_is_skipped(
    fs_store: FileSystemStore, clock: Clock, damage: str
) -> None:
    put(fs_store)
    strike(fs_store)
    strike(fs_store)
    record = bytearray(strike_frame(9, clock.now + 100))
    if damage == "cut":
        del record[-1]
    else:
        record[-1] ^= 0xFF
    path = Path(fs_store.path(KEY))
    with open(path, "ab") as file:  # a crash in the middle of an append
        file.write(record)
    assert read(fs_store) == (BLOB, 2)
    assert last_record(path.read_bytes())[0] == BLOB
    strike(fs_store)  # after a torn tail: the file is compacted, with the count
    assert read(fs_store) == (BLOB, 3)
    assert path.read_bytes() == frame(BLOB, clock.now + 1000) + strike_frame(3, clock.now + 1000)


def test_a_torn_data_record_after_strikes_keeps_the_count(
    fs_store: FileSystemStore, clock: Clock
) -> None:
    put(fs_store)
    strike(fs_store)
    path = Path(fs_store.path(KEY))
    with open(path, "ab") as file:
        file.write(frame(b"never completed", clock.now + 100)[:-2])
    assert read(fs_store) == (BLOB, 1)
    touch(fs_store, ttl=100)  # the reset cannot be appended after the torn tail: compacted
    assert path.read_bytes() == frame(BLOB, clock.now + 100)
    assert read(fs_store) == (BLOB, 0)


def test_a_strike_that_compacts_a_file_removed_behind_its_lock_does_not_recreate_it(
    fs_store: FileSystemStore, clock: Clock
) -> None:
    put(fs_store)
    path = Path(fs_store.path(KEY))
    with open(path, "ab") as file:  # a torn tail: the next strike compacts
        file.write(strike_frame(1, clock.now)[:-1])
    held = fs_store.open(KEY, lock=True)
    path.unlink()
    held.strike(1000)
    held.release()
    assert not path.exists()
    assert [p for p in Path(fs_store.directory).rglob("*") if p.is_file()] == []


def test_compaction_after_strikes_keeps_one_data_record(
    fs_store: FileSystemStore, clock: Clock
) -> None:
    blob = b"b" * 2100
    path = Path(fs_store.path(KEY))
    put(fs_store, blob)
    for _ in range(3):
        strike(fs_store)
    for n in range(10):
        new = f"{n}".encode() * 2100
        put(fs_store, new, ttl=100)
        assert read(fs_store) == (new, 0)
        if path.read_bytes() == frame(new, clock.now + 100):
            break
    else:
        pytest.fail("the file was never compacted")


def test_strikes_that_would_outgrow_the_file_compact_it_with_the_count(
    fs_store: FileSystemStore, clock: Clock
) -> None:
    put(fs_store)
    path = Path(fs_store.path(KEY))
    sizes: list[int] = []
    while len(sizes) < 500:
        strike(fs_store, ttl=100)
        sizes.append(path.stat().st_size)
        if sizes[-1] < max(sizes):
            break
    else:
        pytest.fail("the file was never compacted")
    n = len(sizes)
    assert max(sizes) <= 8192
    assert path.read_bytes() == frame(BLOB, clock.now + 100) + strike_frame(n, clock.now + 100)
    assert read(fs_store) == (BLOB, n)


def test_cleanup_treats_a_file_ending_in_strike_records_like_any_other(
    tmp_path: Path, clock: Clock
) -> None:
    store = FileSystemStore(str(tmp_path / "store"), clock=clock)
    live, expired = "session:live", "session:expired"
    for key, ttl in ((live, 10_000.0), (expired, 100.0)):
        entry = store.new(key)
        assert entry.write(BLOB, 100)
        for _ in range(2):
            entry = store.open(key, lock=True)
            entry.strike(ttl)
            entry.release()
    clock.now += 100 + GRACE + 1  # past the data records' deadlines
    assert store.cleanup() == 1
    assert not os.path.exists(store.path(expired))
    assert os.path.exists(store.path(live))  # kept alive by its strikes' expiry
    assert not os.path.exists(store.quarantine_dir)  # nothing taken for damage
    entry = store.open(live, lock=False)
    entry.release()
    assert (entry.blob, entry.strikes) == (BLOB, 2)


def test_a_read_only_store_serves_the_strikes_and_refuses_a_strike(
    tmpfs: Tmpfs, clock: Clock
) -> None:
    store = FileSystemStore(str(tmpfs.directory / "sessions"), clock=clock)
    put(store)
    strike(store)
    before = Path(store.path(KEY)).read_bytes()
    tmpfs.read_only()
    try:
        entry = store.open(KEY, lock=True)
        try:
            assert entry.degraded and (entry.blob, entry.strikes) == (BLOB, 1)
            entry.touch(100)  # skipped, as on every degraded entry
            with pytest.raises(StoreUnavailableError) as caught:
                entry.strike(100)
            assert caught.value.cause == os.strerror(errno.EROFS)
        finally:
            entry.release()
    finally:
        tmpfs.read_write()
    assert Path(store.path(KEY)).read_bytes() == before


# -- cachelib and the default ----------------------------------------------------------------


def test_cachelib_keeps_no_strikes_and_a_strike_is_harmless() -> None:
    cache = cachelib.simple.SimpleCache()
    store = CacheLibStore(cache)
    put(store)
    entry = store.open(KEY, lock=True)
    assert entry.strikes == 0
    entry.strike(100)
    entry.release()
    assert read(store) == (BLOB, 0)
    assert cache.get(KEY) == BLOB


def test_an_entry_without_strike_support_inherits_a_harmless_strike() -> None:
    class Minimal(Entry):
        def __init__(self) -> None:
            self.key, self.blob = KEY, BLOB

        def write(self, blob: bytes, ttl: float) -> bool:
            raise AssertionError("not called")

        def touch(self, ttl: float) -> None:
            raise AssertionError("not called")

        def delete(self) -> None:
            raise AssertionError("not called")

        def quarantine(self, ttl: float) -> None:
            raise AssertionError("not called")

        def copy_to_quarantine(self, ttl: float) -> None:
            raise AssertionError("not called")

        def release(self) -> None:
            pass

    entry = Minimal()
    entry.strike(100)
    assert (entry.blob, entry.strikes) == (BLOB, 0)
