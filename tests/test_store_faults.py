"""Store faults, made for real: a full disk, a read-only file system, immutable and foreign
files, a stalled Redis, a lost lease, client errors outside ``RedisError``.

Every failure must surface as ``StoreUnavailableError`` naming its cause and where, never
leave a half-written session, and never leave a lock behind. The disk tests mount a small
tmpfs (root only): they are skipped where mounting is refused, and fail instead when
``FDS_REQUIRE_MOUNT=1``.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cachelib
import pytest
import redis
from flask import Flask, session
from flask.testing import FlaskClient
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from flask_dill_session.exc import LockTimeoutError, StoreUnavailableError
from flask_dill_session.stores._keys import KeyNames
from flask_dill_session.stores._lock import SessionLock
from flask_dill_session.stores._records import MAGIC, damage_of, parse, strike_frame
from flask_dill_session.stores.base import Entry, fingerprint
from flask_dill_session.stores.cachelib import CacheLibStore
from flask_dill_session.stores.filesystem import FileSystemStore, frame, last_record
from flask_dill_session.stores.redis import CLIENT_ERRORS, RedisStore, ServerClock

from .apps.redis_app import redis_client
from .support import (
    RedisServer,
    Tmpfs,
    filesystem_store,
    free_port,
    interface,
    redis_store_of,
)
from .test_redis import counter_app

AppFactory = Callable[..., Flask]

KEY = "session:4mQ7nR2xT9vB1cK8pL5sD3fG6hJ0aZyXwVuEtSrQoNm"
OTHER = "session:Zq8wE3rT6yU1iO4pA7sD0fG2hJ5kL9xCvBnM-_aQwEr"
SECRET = "fault-test-secret"  # of the Redis stores made here
NAME, OTHER_NAME = (KeyNames(SECRET).session(key) for key in (KEY, OTHER))
NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"
READ_ONLY = os.strerror(errno.EROFS)  # "Read-only file system"
PAGE = 4096


# -- fixtures and helpers --------------------------------------------------------------------


def put(store: FileSystemStore, key: str, blob: bytes) -> None:
    entry = store.open(key, lock=True)
    try:
        assert entry.write(blob, 100)
    finally:
        entry.release()


def get(store: FileSystemStore, key: str) -> bytes | None:
    entry = store.open(key, lock=False)
    entry.release()
    return entry.blob


def stored_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


def session_app(make_app: AppFactory, **config: Any) -> Flask:
    app = make_app(**config)

    @app.route("/set/<value>")
    def set_value(value: str) -> str:
        session["v"] = value
        return "ok"

    @app.route("/big")
    def big() -> str:
        session["v"] = "x" * 3 * PAGE  # more than a page: needs new blocks
        return "ok"

    @app.route("/get")
    def get_value() -> str:
        return str(session.get("v"))

    return app


def key_of(app: Flask, client: FlaskClient) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return interface(app).store_key(cookie.value)


def assert_names(exc: StoreUnavailableError, cause: str, where: str) -> None:
    """The error names its cause and where, as attributes and in its message."""
    assert exc.cause.startswith(cause), (exc.cause, cause)
    assert exc.where.startswith(where), (exc.where, where)
    assert cause in str(exc) and exc.where in str(exc)


# -- a full disk ---------------------------------------------------------------------------


def test_a_full_disk_answers_503_naming_the_cause_then_recovers(
    tmpfs: Tmpfs, make_app: AppFactory
) -> None:
    directory = tmpfs.directory / "sessions"
    app = session_app(make_app, SESSION_FILE_DIR=str(directory))
    store = filesystem_store(app)
    alice = app.test_client()
    assert alice.get("/set/one").status_code == 200
    filler = tmpfs.fill()

    assert alice.get("/get").text == "one"  # reads (and touches) need no space
    assert alice.get("/big").status_code == 503
    bob = app.test_client()
    assert bob.get("/set/two").status_code == 503
    with pytest.raises(StoreUnavailableError) as caught:
        store.new(OTHER).write(b"x" * 100, 100)
    assert_names(caught.value, NO_SPACE, store.path(OTHER))
    assert all(last_record(path.read_bytes())[0] for path in stored_files(directory))

    filler.unlink()
    assert alice.get("/big").status_code == 200
    assert alice.get("/get").text == "x" * 3 * PAGE
    assert bob.get("/set/two").status_code == 200
    assert bob.get("/get").text == "two"


@pytest.mark.parametrize("write", ["append", "create", "compaction"])
def test_a_disk_that_fills_in_the_middle_of_a_write_keeps_the_stored_record(
    tmpfs: Tmpfs, write: str
) -> None:
    """One page is free, the record needs three: the write stops half-way with ENOSPC."""
    store = FileSystemStore(str(tmpfs.directory / "sessions"))
    put(store, KEY, b"before")
    path = Path(store.path(KEY))
    if write == "compaction":
        with open(path, "ab") as file:  # a torn tail: the next write compacts
            file.write(frame(b"torn", 2e9)[:-3])
    reserve = tmpfs.directory / "reserve"
    reserve.write_bytes(b"r" * PAGE)
    tmpfs.fill()
    reserve.unlink()
    before = path.read_bytes()

    key = OTHER if write == "create" else KEY
    entry = store.open(key, lock=True)
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            entry.write(os.urandom(3 * PAGE), 100)
    finally:
        entry.release()
    assert_names(caught.value, NO_SPACE, store.path(key))
    assert path.read_bytes() == before
    assert get(store, KEY) == b"before"
    assert not os.path.lexists(store.path(OTHER))
    assert [p.name for p in stored_files(Path(store.directory))] == [path.name]


# -- a read-only file system -------------------------------------------------------------


def test_a_read_only_store_serves_reads_and_refuses_changes(
    tmpfs: Tmpfs, make_app: AppFactory
) -> None:
    app = session_app(make_app, SESSION_FILE_DIR=str(tmpfs.directory / "sessions"))
    store = filesystem_store(app)
    alice = app.test_client()
    assert alice.get("/set/one").status_code == 200
    key = key_of(app, alice)
    path = store.path(key)
    tmpfs.read_only()
    try:
        assert alice.get("/get").text == "one"
        assert alice.get("/set/two").status_code == 503
        assert app.test_client().get("/set/new").status_code == 503  # no session can start
        assert_degraded(store, key, path)
    finally:
        tmpfs.read_write()
    assert alice.get("/set/two").status_code == 200
    assert alice.get("/get").text == "two"
    entry = store.open(key, lock=True)
    entry.release()
    assert not entry.degraded and entry.fault is None


def assert_degraded(store: FileSystemStore, key: str, path: str) -> None:
    """Opened read-only: blob served, touch skipped, every change refused naming EROFS."""
    mtime = os.stat(path).st_mtime
    entry = store.open(key, lock=True)
    try:
        assert entry.degraded and entry.blob is not None and entry.damage is None
        assert entry.fault is not None
        assert_names(entry.fault, READ_ONLY, path)
        entry.touch(10_000)
        assert os.stat(path).st_mtime == mtime
        changes: list[Callable[[], object]] = [
            lambda: entry.write(b"changed", 100),
            entry.delete,
            lambda: entry.quarantine(100),
        ]
        for change in changes:
            with pytest.raises(StoreUnavailableError) as caught:
                change()
            assert_names(caught.value, READ_ONLY, path)
    finally:
        entry.release()
    assert os.stat(path).st_mtime == mtime


def test_an_immutable_session_file_is_served_read_only(tmp_path: Path) -> None:
    """``chattr +i``: opening for writing fails with EPERM even for root (which a 0400 file
    would not do); the session is still served, and changes are refused."""
    store = FileSystemStore(str(tmp_path / "sessions"))
    put(store, KEY, b"kept")
    path = store.path(KEY)
    if subprocess.run(["chattr", "+i", path], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    try:
        entry = store.open(KEY, lock=True)
        try:
            assert (entry.blob, entry.degraded) == (b"kept", True)
            with pytest.raises(StoreUnavailableError) as caught:
                entry.write(b"changed", 100)
            assert_names(caught.value, os.strerror(errno.EPERM), path)
        finally:
            entry.release()
    finally:
        subprocess.run(["chattr", "-i", path], check=True)
    assert get(store, KEY) == b"kept"


# -- foreign files ---------------------------------------------------------------------------


def foreign(variant: str) -> bytes:
    if variant == "empty file":
        return b""
    if variant == "random bytes":
        return b"\x00" + os.urandom(200)
    if variant == "raw pickle":
        return pickle.dumps({"user": "mallory"})
    if variant == "garbage before a record":
        return b"\x00" * 3 + frame(b"blob", 2e9)
    if variant == "torn first record":
        return frame(b"never completed", 2e9)[:-4]
    if variant == "a torn first header":  # a crash within the first 18 bytes written
        return frame(b"never completed", 2e9)[:10]
    if variant == "a strike record after a torn head":
        # Stepping back from the strike record leaves 5 bytes, too few for a header: the
        # search for one must not wrap around to the end (whose CRC ends in a record's
        # first byte here, which it would then read past).
        record = next(r for d in range(10**6) if (r := strike_frame(1, d))[9] == MAGIC[0])
        return MAGIC + b"\x00" * 3 + record
    if variant == "bad checksum":
        return frame(b"flipped", 2e9)[:-1] + b"?"
    return b"\xfd"  # "torn header": the first byte of a record


DAMAGE = {
    "empty file": "empty file",
    "random bytes": "unframed content",
    "raw pickle": "unframed content",
    "garbage before a record": "unframed content",
    "torn first record": "torn first record",
    "a torn first header": "torn first record",
    "a strike record after a torn head": "torn first record",
    "bad checksum": "torn first record",
    "torn header": "torn first record",
}


def plant(store: FileSystemStore, key: str, data: bytes, age: float = 3600) -> Path:
    """Write *data* as the file of *key*, last modified *age* seconds ago."""
    path = Path(store.path(key))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(data)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


@pytest.mark.parametrize("lock", [True, False], ids=["locked", "unlocked"])
@pytest.mark.parametrize("variant", list(DAMAGE))
def test_a_foreign_file_is_reported_as_damage_and_quarantined(
    tmp_path: Path, variant: str, lock: bool
) -> None:
    store = FileSystemStore(str(tmp_path / "sessions"))
    data = foreign(variant)
    path = plant(store, KEY, data)
    entry = store.open(KEY, lock=lock)
    try:
        assert (entry.blob, entry.damage, entry.degraded) == (None, DAMAGE[variant], False)
        entry.quarantine(3600)
    finally:
        entry.release()
    assert not path.exists()
    (kept,) = stored_files(Path(store.quarantine_dir))
    assert kept.name.startswith(fingerprint(KEY) + ".")
    assert kept.read_bytes() == data
    assert kept.stat().st_mtime == pytest.approx(time.time() + 3600, abs=60)


def test_no_bytes_in_a_session_file_make_reading_it_raise() -> None:
    """Files of records torn, cut, flipped and prefixed at random: each reads as a blob or
    as none (damage), never as an exception that would fail every request of a session."""
    rng = random.Random(20261124)
    for _ in range(30000):
        records = [
            frame(rng.randbytes(rng.randint(0, 40)), 2e9 * rng.random())
            if rng.random() < 0.6
            else strike_frame(rng.randint(0, 9), 2e9 * rng.random())
            for _ in range(rng.randint(0, 4))
        ]
        data = bytearray(b"".join(records))
        for _ in range(rng.randint(0, 3)):
            change = rng.random()
            if change < 0.3:
                data = data[: rng.randint(0, len(data))]
            elif change < 0.6 and data:
                data[rng.randrange(len(data))] = rng.choice([MAGIC[0], MAGIC[1], 0x54, 0])
            elif change < 0.8:
                data = bytearray(rng.choice([MAGIC, b"\xfd\x54", rng.randbytes(3)])) + data
            else:
                data = data[rng.randint(0, len(data)) :]
        blob, _, _, _ = parse(bytes(data))
        assert blob is not None or damage_of(bytes(data), 0.0) is not None or not data


def test_a_session_file_with_an_intact_record_is_no_damage(tmp_path: Path) -> None:
    store = FileSystemStore(str(tmp_path / "sessions"))
    put(store, KEY, b"fine")
    with open(store.path(KEY), "ab") as file:
        file.write(b"\x00torn tail")
    entry = store.open(KEY, lock=True)
    entry.release()
    assert (entry.blob, entry.damage) == (b"fine", None)
    assert get(store, OTHER) is None
    assert store.open(OTHER, lock=True).damage is None


def test_an_empty_file_that_may_be_a_create_in_flight_reads_as_absent(tmp_path: Path) -> None:
    """A creator writes its first record right after its O_EXCL create, holding the lock:
    a young empty file is left alone, only an old one is damage."""
    store = FileSystemStore(str(tmp_path / "sessions"))
    path = plant(store, KEY, b"", age=0)
    entry = store.open(KEY, lock=True)
    entry.release()
    assert (entry.blob, entry.damage) == (None, None)
    assert path.exists() and path.read_bytes() == b""
    assert not store.new(KEY).write(b"mine", 100)  # the key is taken: never written twice
    then = time.time() - 3600
    os.utime(path, (then, then))
    entry = store.open(KEY, lock=True)
    entry.release()
    assert entry.damage == "empty file"


def test_cleanup_quarantines_damaged_files_instead_of_deleting_them(tmp_path: Path) -> None:
    store = FileSystemStore(str(tmp_path / "sessions"), quarantine_lifetime=600)
    damaged = plant(store, KEY, pickle.dumps("foreign"))
    young = plant(store, "session:young", b"\x00young and damaged", age=0)
    expired = plant(store, OTHER, frame(b"old", time.time() - 3600))
    assert store.cleanup() == 1
    assert not expired.exists()  # an expired session is removed
    assert young.exists()  # within the grace period: not looked at yet
    assert not damaged.exists()
    (kept,) = stored_files(Path(store.quarantine_dir))
    assert kept.read_bytes() == pickle.dumps("foreign")
    assert kept.name.startswith(f"unknown.{damaged.name}.")  # no session names it
    assert kept.stat().st_mtime == pytest.approx(time.time() + 600, abs=60)


def test_any_os_error_on_the_way_is_a_store_error(tmp_path: Path) -> None:
    """Here EEXIST: the quarantine directory's name is taken by a file."""
    store = FileSystemStore(str(tmp_path / "sessions"))
    plant(store, KEY, b"\x00 unframed")
    Path(store.quarantine_dir).write_text("not a directory")
    entry = store.open(KEY, lock=True)
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            entry.quarantine(100)
    finally:
        entry.release()
    assert_names(caught.value, os.strerror(errno.EEXIST), store.quarantine_dir)


# -- Redis: deadlines, leases, client errors ---------------------------------------------


@pytest.fixture
def frozen_redis(redis_server: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, which it may freeze (SIGSTOP)."""
    server = RedisServer(tmp_path / "private-redis")
    yield server
    server.stop()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.01)


class Gate:
    """Holds ``/hold/<step>`` requests: each loads the session, adds *step*, signals that it
    did, and waits until :meth:`go` before its response (and its save)."""

    def __init__(self) -> None:
        self.loaded, self.finish = threading.Event(), threading.Event()
        self.responses: list[Any] = []
        self.thread: threading.Thread | None = None

    def hold(self, step: int) -> str:
        session["x"] += step
        self.loaded.set()
        assert self.finish.wait(30)
        return str(session["x"])

    def start(self, app: Flask, sid: str, step: int) -> None:
        """Send ``/hold/<step>`` from a thread; return once it loaded the session."""
        browser = app.test_client()
        browser.set_cookie("session", sid)
        self.thread = threading.Thread(
            target=lambda: self.responses.append(browser.get(f"/hold/{step}")), daemon=True
        )
        self.thread.start()
        assert self.loaded.wait(30)

    def go(self) -> Any:
        """Let the held request end; its response."""
        assert self.thread is not None
        self.finish.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self.responses[0]


def redis_app(make_app: AppFactory, client: redis.Redis, gate: Gate, **config: Any) -> Flask:
    """The Redis tests' counter app, with the gate's held view."""
    app = counter_app(make_app, client, **config)
    app.add_url_rule("/hold/<int:step>", view_func=gate.hold)
    return app


def sid_of(browser: FlaskClient) -> str:
    cookie = browser.get_cookie("session")
    assert cookie is not None
    return cookie.value


@pytest.mark.redis
def test_requests_that_time_out_on_a_stalled_redis_leave_no_lock(
    frozen_redis: RedisServer, make_app: AppFactory
) -> None:
    """Their commands run once Redis runs again, after their deadline: the write writes
    nothing and frees its lock, the lock-and-read takes no lock. The session is usable at
    once, not 503 for the rest of a 60 s lease.

    Two app instances (as two app servers), each with its own client: a client reuses the
    connection that just timed out, whose reconnection then waits for the frozen server,
    so one client sends one command to the frozen server, not two."""
    url = f"redis://127.0.0.1:{frozen_redis.port}/0"
    gate = Gate()
    apps = [
        redis_app(make_app, redis_client(url, timeout=0.5), gate, SESSION_DILL_LOCK_TIMEOUT=1)
        for _ in range(2)
    ]
    browsers = [app.test_client() for app in apps]
    assert browsers[0].get("/count").text == "1"
    sid = sid_of(browsers[0])
    browsers[1].set_cookie("session", sid)
    for expected, browser in zip(("2", "3"), browsers, strict=True):
        assert browser.get("/count").text == expected  # both connected, scripts loaded
    gate.start(apps[0], sid, step=1000)  # holds the lock
    frozen_redis.freeze()
    try:
        assert gate.go().status_code == 503  # its write timed out
        assert browsers[1].get("/count").status_code == 503  # its lock-and-read timed out
    finally:
        frozen_redis.thaw()
    assert browsers[1].get("/count").text == "4"  # not 503: no lock left; nor 1004
    checker = redis.Redis(port=frozen_redis.port, socket_timeout=5)
    assert checker.keys("lock:*") == []
    assert browsers[0].get("/get").text == "4"


@pytest.mark.redis
def test_a_lock_taken_after_its_request_gave_up_is_taken_over(frozen_redis: RedisServer) -> None:
    """The first try locks with plain commands, whatever the time: run by a stalled Redis
    once the client has given up, its ``SET NX`` still takes the lock. Its token names its
    deadline, so the next request finds it orphaned and takes it over at once."""
    url = f"redis://127.0.0.1:{frozen_redis.port}/0"
    gave_up = RedisStore(redis_client(url, timeout=0.5), secret=SECRET)
    assert gave_up.new(KEY).write(b"v0", 60)
    gave_up.open(KEY, lock=True).release()  # connected
    lock_key = gave_up.lock_key(KEY)
    checker = redis.Redis(port=frozen_redis.port, socket_timeout=5)
    frozen_redis.freeze()
    try:
        with pytest.raises(StoreUnavailableError, match="Timeout"):
            gave_up.open(KEY, lock=True)
    finally:
        frozen_redis.thaw()
    wait_until(lambda: checker.exists(lock_key) == 1, "the late SET NX")
    orphan = checker.get(lock_key)
    assert isinstance(orphan, bytes) and orphan.count(b".") == 2  # <hex>.<deadline>.<lease>
    store = RedisStore(redis_client(url), secret=SECRET, lock_timeout=1)
    entry = store.open(KEY, lock=True)  # not LockTimeoutError: taken over
    assert entry.blob == b"v0"
    assert checker.get(lock_key) not in (None, orphan)
    assert entry.write(b"v1", 60)
    assert checker.get(NAME) == b"v1"
    assert not checker.exists(lock_key)


@pytest.mark.redis
@pytest.mark.parametrize(("shift", "holds"), [(5000, True), (-5000, False), (None, True)])
def test_only_a_lock_taken_after_its_deadline_is_orphaned(
    client: redis.Redis, shift: int | None, holds: bool
) -> None:
    """A lock set in place of a first try's, its token naming a deadline 5 s after now
    (taken in time), 5 s before now (taken late), or none (0: a client that never gives
    up): only the late one is taken over."""
    store = RedisStore(client, secret=SECRET, lock_timeout=0.3)
    assert store.new(KEY).write(b"v0", 60)
    seconds, micros = client.time()
    deadline = 0 if shift is None else seconds * 1000 + micros // 1000 + shift
    token = b"%s.%d.60000" % (b"ab" * 16, deadline)
    client.set(store.lock_key(KEY), token, px=60_000)
    if holds:
        with pytest.raises(LockTimeoutError):
            store.open(KEY, lock=True)
        assert client.get(store.lock_key(KEY)) == token
        client.delete(store.lock_key(KEY))
    else:
        entry = store.open(KEY, lock=True)
        assert entry.blob == b"v0"
        entry.release()
        assert not client.exists(store.lock_key(KEY))


@pytest.mark.redis
def test_a_holder_whose_lease_ran_out_gets_503_and_the_next_write_stands(
    client: redis.Redis, make_app: AppFactory
) -> None:
    gate = Gate()
    config = {"SESSION_DILL_LOCK_LEASE": 0.5, "SESSION_DILL_LOCK_TIMEOUT": 5}
    app = redis_app(make_app, client, gate, **config)
    browser = app.test_client()
    assert browser.get("/count").text == "1"
    sid = sid_of(browser)
    gate.start(app, sid, step=100)
    lock_key = redis_store_of(app).lock_key(f"session:{sid}")
    wait_until(lambda: not client.exists(lock_key), "the end of the lease")
    assert browser.get("/count").text == "2"  # took the lock the holder lost, and wrote
    response = gate.go()
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert browser.get("/get").text == "2"
    assert browser.get("/count").text == "3"


@pytest.mark.redis
def test_a_clock_offset_is_learned_when_a_lock_is_refused_as_late(client: redis.Redis) -> None:
    store = RedisStore(client, secret=SECRET, lock_timeout=5)
    assert store.new(KEY).write(b"v0", 60)
    store.server_clock.offset = -3600.0  # believed an hour behind: every deadline is past
    entry = store.open(KEY, lock=True)  # refused as late, in time: learned, and retried
    assert entry.blob == b"v0"
    assert abs(store.server_clock.offset) < 1
    assert client.exists(store.lock_key(KEY))
    assert entry.write(b"v1", 60)
    assert client.get(NAME) == b"v1"


@pytest.mark.redis
@pytest.mark.parametrize("pipelines", [True, False], ids=["first try", "lock-and-read script"])
def test_a_write_run_after_its_request_gave_up_writes_nothing(
    client: redis.Redis, pipelines: bool
) -> None:
    """The write script measures the time from the lock's TTL: a lock with less of its
    lease left than the time since it was taken plus the client's timeout allow was taken
    too long ago for the write to be in time. Here the lease left is cut as if the lock had
    been taken 6 s ago (the client's timeout is 5 s). Locked by the first try's commands,
    or by the script (as through a cluster client)."""
    store = RedisStore(client, secret=SECRET, lock_timeout=5)
    store.pipelines = pipelines
    lock_key = store.lock_key(KEY)
    assert store.new(KEY).write(b"v0", 60)
    entry = store.open(KEY, lock=True)
    client.pexpire(lock_key, 60_000 - 6_000)
    with pytest.raises(StoreUnavailableError, match="after the socket timeout") as caught:
        entry.write(b"v1", 60)
    assert caught.value.where == store.address
    assert client.get(NAME) == b"v0"
    assert not client.exists(lock_key)  # released all the same
    in_time = store.open(KEY, lock=True)
    client.pexpire(lock_key, 60_000 - 4_000)  # taken 4 s ago: in time
    assert in_time.write(b"v2", 60)
    assert client.get(NAME) == b"v2"


@pytest.mark.redis
def test_a_lock_not_known_to_be_taken_lets_no_write_through(client: redis.Redis) -> None:
    """Without the instant its lock was taken, a write could not tell whether the client
    still waits: it asks for more lease than there is (refused), unless the client never
    gives up."""
    store = RedisStore(client, secret=SECRET)
    lock = SessionLock(store, KEY, store.names.of(KEY))
    assert lock.least_left(5.0) == lock.lease + 1
    assert lock.least_left(None) == 0


@pytest.mark.redis
@pytest.mark.parametrize("ttl", [5_000, None])
def test_a_write_that_lost_its_lock_puts_the_holders_lock_back_as_it_was(
    client: redis.Redis, ttl: int | None
) -> None:
    """The write script reads and deletes the lock in one call: a lock it finds held by
    another is set again, with the TTL it had (or none)."""
    store = RedisStore(client, secret=SECRET, lock_timeout=5)
    lock_key = store.lock_key(KEY)
    assert store.new(KEY).write(b"v0", 60)
    entry = store.open(KEY, lock=True)
    client.set(lock_key, b"another", px=ttl)
    with pytest.raises(StoreUnavailableError, match="no longer held"):
        entry.write(b"v1", 60)
    assert client.get(NAME) == b"v0"
    assert client.get(lock_key) == b"another"
    left = client.pttl(lock_key)
    assert left == -1 if ttl is None else 4_000 < left <= ttl
    client.delete(lock_key)


def test_the_offset_is_fresh_for_a_second_after_a_quick_reply() -> None:
    """Within it, the first try to lock sends no ``TIME``. A reply slow enough to blur the
    offset teaches nothing; a client that never gives up needs no offset."""
    clock = ServerClock(timeout=2.0)
    assert not clock.fresh(1000.0)  # never learned
    clock.learn(1_000_050, sent=1000.0, received=1000.1)
    assert clock.offset == pytest.approx(0.0)
    assert clock.error == pytest.approx(0.05)  # half the round trip
    assert clock.fresh(1000.1) and clock.fresh(1001.0)
    assert clock.fresh(1000.0)  # sent by another thread just before the reply came
    assert not clock.fresh(1001.2)
    clock.learn(1_005_000, sent=1003.0, received=1004.0)  # a second on the way: unused
    assert not clock.fresh(1004.0)
    assert ServerClock(timeout=None).fresh(0.0)


@pytest.mark.redis
def test_a_first_try_slower_than_the_offset_allows_leaves_the_lock_to_the_script(
    client: redis.Redis,
) -> None:
    """Without ``TIME``, the first try keeps its lock only if the reply came sooner than the
    timeout less the offset's error: else Redis may have run it after the deadline its
    token names, and a waiter could take the lock over. Then it releases the lock, and the
    lock-and-read script (which checks the deadline in Redis) takes it."""
    store = RedisStore(client, secret=SECRET, lock_timeout=5)
    assert store.new(KEY).write(b"v0", 60)
    store.open(KEY, lock=True).release()  # the offset is learned
    clock = store.server_clock
    assert clock.fresh(clock.now())
    clock.error = 5.0  # as off as the timeout: no reply is surely in time
    client.config_resetstat()
    entry = store.open(KEY, lock=True)
    assert entry.blob == b"v0"
    assert client.info("commandstats")["cmdstat_evalsha"]["calls"] == 2  # release; script
    token = client.get(store.lock_key(KEY))
    assert isinstance(token, bytes) and b"." not in token  # the script's own token
    entry.release()


@pytest.mark.redis
def test_a_client_without_socket_timeout_sends_no_deadline(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port, socket_timeout=None)
    store = RedisStore(client, secret=SECRET, lock_timeout=5)
    store.server_clock.offset = -3600.0  # would be late, if there were a deadline
    assert store.server_clock.deadline(time.time()) == 0
    assert store.new(OTHER).write(b"v0", 60)
    entry = store.open(OTHER, lock=True)
    assert entry.write(b"v1", 60)
    assert client.get(OTHER_NAME) == b"v1"
    client.delete(OTHER_NAME)


@pytest.mark.redis
def test_a_redis_cluster_exception_is_a_store_error(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    """``RedisClusterException`` is no ``RedisError``: a cluster client pointed at a server
    that is not a cluster raises it."""
    store = RedisStore(client, secret=SECRET)
    assert not issubclass(RedisClusterException, redis.RedisError)
    with pytest.raises(StoreUnavailableError) as caught, store.errors("connecting"):
        RedisCluster(host="127.0.0.1", port=redis_server.port)
    assert isinstance(caught.value.__cause__, RedisClusterException)
    assert_names(caught.value, "RedisClusterException: ", store.address.split("/")[0])


def test_every_exception_class_of_the_client_is_a_store_error() -> None:
    """Those of redis.exceptions (``MovedError``, ``TryAgainError``, ``ClusterDownError``,
    ``RedisClusterException``, timeouts...) and of its other modules (Sentinel's
    ``MasterNotFoundError``...), whatever their base class."""
    import redis.cluster
    import redis.sentinel

    modules = (redis.exceptions, redis.cluster, redis.sentinel, redis.client, redis.connection)
    found = {
        cls
        for module in modules
        for cls in vars(module).values()
        if isinstance(cls, type)
        and issubclass(cls, Exception)
        and cls.__module__.startswith("redis")
    }
    assert {redis.exceptions.MovedError, redis.exceptions.TryAgainError} <= found
    assert [cls.__name__ for cls in found if not issubclass(cls, CLIENT_ERRORS)] == []


@pytest.mark.redis
@pytest.mark.parametrize("operation", ["open", "locked open", "create", "touch", "delete"])
def test_every_operation_on_a_stopped_redis_is_a_store_error(
    frozen_redis: RedisServer, operation: str
) -> None:
    client = redis_client(f"redis://127.0.0.1:{frozen_redis.port}/0", timeout=0.5)
    store = RedisStore(client, secret=SECRET, lock_timeout=1)
    assert store.new(KEY).write(b"v0", 60)
    entry = store.open(KEY, lock=False)
    frozen_redis.stop()
    calls: dict[str, Callable[[], object]] = {
        "open": lambda: store.open(KEY, lock=False),
        "locked open": lambda: store.open(KEY, lock=True),
        "create": lambda: store.new(OTHER).write(b"v", 60),
        "touch": lambda: entry.touch(60),
        "delete": entry.delete,
    }
    with pytest.raises(StoreUnavailableError) as caught:
        calls[operation]()
    assert caught.value.where == store.address
    assert caught.value.cause.startswith("ConnectionError: ")
    assert "Connection refused" in str(caught.value)


def test_a_failing_cachelib_cache_is_a_store_error(make_app: AppFactory) -> None:
    cache = cachelib.RedisCache(host="127.0.0.1", port=free_port())  # nothing listens
    store = CacheLibStore(cache)
    with pytest.raises(StoreUnavailableError) as caught:
        store.open(KEY, lock=False)
    assert_names(caught.value, "ConnectionError: ", "RedisCache")
    assert isinstance(caught.value.__cause__, redis.ConnectionError)
    app = make_app(SESSION_DILL_BACKEND="cachelib", SESSION_CACHELIB=cache)

    @app.route("/set")
    def set_value() -> str:
        session["v"] = 1
        return "ok"

    assert app.test_client().get("/set").status_code == 503


def test_entries_have_no_damage_and_are_not_degraded_by_default() -> None:
    assert (Entry.damage, Entry.degraded, Entry.fault) == (None, False, None)
