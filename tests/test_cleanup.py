"""The filesystem layout and its cleanup: old sessions are found, only expired ones go.

``FileSystemStore.cleanup()`` and ``flask dill-session cleanup`` remove expired sessions,
quarantined blobs past their keep time and stale temporary files, and nothing else, also
while requests are reading, writing and compacting sessions at the same time.
"""

from __future__ import annotations

import hmac
import os
import struct
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flask import Flask, session
from flask.testing import FlaskClient

from flask_dill_session.cli import cli
from flask_dill_session.envelope import derive_key
from flask_dill_session.exc import BadPayloadError
from flask_dill_session.stores.filesystem import FileSystemStore, frame, last_record

from .support import Clock, filesystem_store, interface

AppFactory = Callable[..., Flask]

DAY = 86400.0
LIFETIME = 3600.0  # the idle lifetime of the apps below
GRACE = 60.0  # the store never reaps a session closer than this to its deadline


@pytest.fixture
def clock() -> Clock:
    return Clock(1_700_000_000.0)


@pytest.fixture
def app(make_app: AppFactory, clock: Clock) -> Flask:
    return build(make_app, clock)


def build(make_app: AppFactory, clock: Clock) -> Flask:
    """An app on the test's store directory whose store runs on *clock*."""
    app = make_app(PERMANENT_SESSION_LIFETIME=LIFETIME, SESSION_DILL_ABSOLUTE_LIFETIME=None)
    filesystem_store(app).clock = clock

    @app.route("/set/<value>")
    def set_value(value: str) -> str:
        session["value"] = value
        return "ok"

    @app.route("/get")
    def get_value() -> str:
        return str(session.get("value"))

    @app.route("/count")
    def count() -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    return app


def start(app: Flask, value: str) -> str:
    """Store a session holding *value*; return its id."""
    client = app.test_client()
    assert client.get(f"/set/{value}").text == "ok"
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def read(app: Flask, sid: str) -> str:
    client = app.test_client()
    client.set_cookie("session", sid)
    return client.get("/get").text


def path_of(app: Flask, sid: str) -> Path:
    return Path(filesystem_store(app).path(interface(app).store_key(sid)))


def session_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.glob("??/*") if path.is_file())


def run_cli(app: Flask) -> str:
    result = app.test_cli_runner().invoke(cli, ["cleanup"])
    assert result.exit_code == 0, result.output
    return result.output


# -- the layout --------------------------------------------------------------------------


def test_sessions_live_in_256_shards_named_by_a_hash(app: Flask, session_dir: Path) -> None:
    sids = [start(app, f"v{n}") for n in range(40)]
    for sid in sids:
        path = path_of(app, sid)
        assert path.parent.parent == session_dir
        assert path.parent.name == path.name[:2]
        assert len(path.name) == 40 and int(path.name, 16) >= 0
        assert sid not in str(path)
    assert len({path_of(app, sid).parent for sid in sids}) > 1


def test_a_session_written_earlier_is_found_by_a_new_app(
    app: Flask, make_app: AppFactory, clock: Clock
) -> None:
    sid = start(app, "kept")
    for _ in range(60):  # appends, then compactions: the file is rewritten under its name
        client = app.test_client()
        client.set_cookie("session", sid)
        client.get("/count")
    later = build(make_app, clock)  # a new process, say, after a deploy
    assert read(later, sid) == "kept"


def test_the_record_format_on_disk_is_stable(app: Flask, clock: Clock) -> None:
    """A file framed by hand, as the format is documented, is read as before: files written
    by earlier versions stay readable."""
    sid = start(app, "original")
    path = path_of(app, sid)
    blob = last_record(path.read_bytes())[0]
    assert blob is not None
    deadline = clock.now + LIFETIME
    stamp = struct.pack("<d", deadline)
    record = (  # magic, length, CRC-32 of deadline + blob, deadline, blob (little-endian)
        b"\xfd\x53"
        + struct.pack("<I", len(blob))
        + struct.pack("<I", zlib.crc32(stamp + blob))
        + stamp
        + blob
    )
    assert record == frame(blob, deadline)
    path.write_bytes(b"\x00" * 3 + record)  # garbage first: not a record, nothing is served
    assert read(app, sid) == "None"
    path.write_bytes(record + record[:-5])  # a torn copy after it: the intact one is served
    os.utime(path, (deadline, deadline))
    assert read(app, sid) == "original"


def test_a_blob_sealed_with_plain_hmac_sha256_opens(app: Flask) -> None:
    """The MAC is HMAC-SHA256 as the ``hmac`` module computes it, so blobs sealed before
    the keyed hash states were reused still open, and a changed byte still fails."""
    sid = start(app, "sealed")
    key = interface(app).store_key(sid)
    envelope = interface(app).codec.envelope
    blob = last_record(path_of(app, sid).read_bytes())[0]
    assert blob is not None
    size = 46 + blob[45]  # the v3 header ends with the version's size and the version
    header, payload, mac = blob[:size], blob[size:-32], blob[-32:]
    expected = hmac.new(derive_key("test-secret"), header + payload, "sha256")
    assert mac == expected.digest()
    assert envelope.open(key, blob).payload == payload
    with pytest.raises(BadPayloadError):
        envelope.open(key, header + payload + bytes([mac[0] ^ 1]) + mac[1:])


def test_a_touch_within_a_second_of_the_last_refresh_is_skipped(app: Flask, clock: Clock) -> None:
    sid = start(app, "x")
    path = path_of(app, sid)
    written = path.stat().st_mtime
    assert written == pytest.approx(clock.now + LIFETIME)
    clock.now += 0.5
    assert read(app, sid) == "x"  # a burst: the deadline would move by half a second
    assert path.stat().st_mtime == written
    clock.now += 1.0
    assert read(app, sid) == "x"
    assert path.stat().st_mtime == pytest.approx(clock.now + LIFETIME)
    clock.now += LIFETIME - 0.5  # idle for the lifetime since the last refresh: still there
    assert read(app, sid) == "x"


# -- what cleanup removes ----------------------------------------------------------------


def test_cleanup_removes_only_expired_sessions(app: Flask, clock: Clock, session_dir: Path) -> None:
    old = [start(app, f"old{n}") for n in range(5)]
    clock.now += LIFETIME / 2
    fresh = [start(app, f"fresh{n}") for n in range(5)]
    touched = old[0]
    assert read(app, touched) == "old0"  # a read moves its deadline: it is not idle

    clock.now += LIFETIME / 2 + GRACE + 1  # the untouched old ones are past deadline + grace
    assert filesystem_store(app).cleanup() == 4
    assert {p.name for p in session_files(session_dir)} == {
        path_of(app, sid).name for sid in [touched, *fresh]
    }
    assert [read(app, sid) for sid in fresh] == [f"fresh{n}" for n in range(5)]
    assert read(app, touched) == "old0"
    assert filesystem_store(app).cleanup() == 0  # nothing more to do


def test_cleanup_leaves_a_session_within_the_grace_period(app: Flask, clock: Clock) -> None:
    sid = start(app, "late")
    clock.now += LIFETIME + GRACE / 2  # expired for requests, but too close for the reaper
    assert filesystem_store(app).cleanup() == 0
    assert path_of(app, sid).exists()
    clock.now += GRACE
    assert filesystem_store(app).cleanup() == 1
    assert not path_of(app, sid).exists()


def test_cleanup_keeps_a_session_whose_record_outlives_its_mtime(app: Flask, clock: Clock) -> None:
    """The deadline is the later of the file's mtime and the record's own deadline."""
    sid = start(app, "record")
    path = path_of(app, sid)
    past = clock.now - DAY
    os.utime(path, (past, past))  # as a touch with a much shorter lifetime would leave it
    clock.now += LIFETIME / 2
    assert filesystem_store(app).cleanup() == 0
    assert read(app, sid) == "record"


def test_cleanup_skips_a_session_whose_lock_is_held(app: Flask, clock: Clock) -> None:
    """A request that opened the session before it expired holds its lock: never reaped."""
    sid = start(app, "held")
    store = filesystem_store(app)
    key = interface(app).store_key(sid)
    entry = store.open(key, lock=True)  # a slow request, still working
    try:
        clock.now += LIFETIME + GRACE + 1
        assert store.cleanup() == 0
        assert path_of(app, sid).exists()
        assert entry.write(b"renewed by the slow request", LIFETIME)
    finally:
        entry.release()
    assert store.cleanup() == 0  # renewed: live again
    renewed = store.open(key, lock=False)
    assert renewed.blob == b"renewed by the slow request"
    renewed.release()


def test_cleanup_removes_expired_quarantine_only(
    make_app: AppFactory, clock: Clock, session_dir: Path
) -> None:
    app = make_app(SESSION_DILL_QUARANTINE_LIFETIME=DAY)
    filesystem_store(app).clock = clock
    interface(app).clock = clock

    @app.route("/set")
    def set_value() -> str:
        session["value"] = 1
        return "ok"

    client = app.test_client()
    client.get("/set")
    cookie = client.get_cookie("session")
    assert cookie is not None
    path = path_of(app, cookie.value)
    blob = last_record(path.read_bytes())[0]
    assert blob is not None
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])  # the MAC fails: quarantined when next read
    path.write_bytes(frame(tampered, clock.now + LIFETIME))
    os.utime(path, (clock.now + LIFETIME, clock.now + LIFETIME))
    client.get("/set")
    quarantine = session_dir / "quarantine"
    assert len(list(quarantine.iterdir())) == 1

    clock.now += DAY / 2
    assert filesystem_store(app).cleanup() == 0
    assert len(list(quarantine.iterdir())) == 1
    clock.now += DAY / 2 + 1
    assert filesystem_store(app).cleanup() == 1
    assert list(quarantine.iterdir()) == []
    assert len(session_files(session_dir)) == 1  # the new session stays


def test_cleanup_removes_stale_temporary_files_only(
    app: Flask, clock: Clock, session_dir: Path
) -> None:
    sid = start(app, "x")
    shard = path_of(app, sid).parent
    stale = shard / f"{path_of(app, sid).name}.0123456789ab.tmp"
    young = shard / f"{path_of(app, sid).name}.ba9876543210.tmp"
    for tmp in (stale, young):
        tmp.write_bytes(b"left behind by a crash during a compaction")
    os.utime(stale, (clock.now - 2 * 3600, clock.now - 2 * 3600))
    os.utime(young, (clock.now, clock.now))  # may be a compaction in progress
    assert filesystem_store(app).cleanup() == 1
    assert not stale.exists() and young.exists()
    assert read(app, sid) == "x"


def test_cleanup_ignores_what_is_not_a_session_file(app: Flask, clock: Clock) -> None:
    sid = start(app, "x")
    directory = path_of(app, sid).parent
    (directory / "subdirectory").mkdir()
    (directory.parent / "not-a-shard").write_bytes(b"")
    os.symlink("/nonexistent", directory / ("f" * 40))
    clock.now += 10 * LIFETIME
    assert filesystem_store(app).cleanup() == 1
    assert (directory / "subdirectory").is_dir()
    assert (directory.parent / "not-a-shard").exists()
    assert (directory / ("f" * 40)).is_symlink()


# -- the command -------------------------------------------------------------------------


def test_the_cleanup_command_removes_expired_sessions(
    app: Flask, clock: Clock, session_dir: Path
) -> None:
    expired = [start(app, f"old{n}") for n in range(3)]
    clock.now += LIFETIME + GRACE + 1
    live = start(app, "new")
    output = run_cli(app)
    assert output.startswith("removed 3 expired entries from FileSystemStore in ")
    assert session_files(session_dir) == [path_of(app, live)]
    assert all(read(app, sid) == "None" for sid in expired)
    assert read(app, live) == "new"
    assert run_cli(app).startswith("removed 0 expired entries")


def test_the_cleanup_command_refuses_an_app_without_dill_sessions() -> None:
    app = Flask(__name__)
    result = app.test_cli_runner().invoke(cli, ["cleanup"])
    assert result.exit_code != 0
    assert 'SESSION_TYPE = "dill"' in result.output


# -- cleanup while requests run ----------------------------------------------------------


def test_cleanup_while_requests_run_removes_no_live_session(
    make_app: AppFactory, session_dir: Path
) -> None:
    """Threads count on live sessions (appending and compacting them) while cleanup runs
    over and over; expired sessions are reaped meanwhile, and no live one is lost."""
    app = make_app(PERMANENT_SESSION_LIFETIME=LIFETIME)

    @app.route("/count")
    def count() -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    store = filesystem_store(app)
    key_of = interface(app).store_key
    past = FileSystemStore(str(session_dir), clock=lambda: store.clock() - 10 * LIFETIME)
    expired = [f"session:{'e' * 30}{n:013d}" for n in range(200)]
    for key in expired:  # written long ago, expired since
        assert past.new(key).write(b"expired", LIFETIME)

    clients = []
    for _ in range(6):
        client = app.test_client()
        assert client.get("/count").text == "1"
        clients.append(client)
    rounds = 60
    done = threading.Event()
    removed: list[int] = []

    def requests(client: FlaskClient) -> list[str]:
        return [client.get("/count").text for _ in range(rounds)]

    def reaper() -> None:
        while not done.is_set():
            removed.append(store.cleanup())

    cleaner = threading.Thread(target=reaper)
    cleaner.start()
    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            answers = list(pool.map(requests, clients))
    finally:
        done.set()
        cleaner.join()
    removed.append(store.cleanup())

    for answer in answers:  # every request saw the session its previous request wrote
        assert answer == [str(n) for n in range(2, rounds + 2)]
    assert sum(removed) == len(expired)
    assert all(not os.path.exists(store.path(key)) for key in expired)
    cookies = [client.get_cookie("session") for client in clients]
    live = {store.path(key_of(cookie.value)) for cookie in cookies if cookie is not None}
    assert len(live) == len(clients)
    assert {str(path) for path in session_files(session_dir)} == live
    assert not list(session_dir.glob("??/*.tmp"))  # compactions left nothing behind


def test_cleanup_survives_sessions_deleted_and_created_while_it_lists_them(
    session_dir: Path,
) -> None:
    """Files vanish between the listing and their ``stat`` (logouts, compactions)."""
    store = FileSystemStore(str(session_dir))
    keys = [f"session:{n}" for n in range(200)]
    for key in keys:
        assert store.new(key).write(b"live", LIFETIME)
    done = threading.Event()

    def churn() -> None:
        turn = 0
        while not done.is_set():
            key = keys[turn % len(keys)]
            turn += 1
            entry = store.open(key, lock=True)
            entry.delete()
            entry.release()
            assert store.new(key).write(b"live again", LIFETIME)

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        removed = [store.cleanup() for _ in range(400)]
    finally:
        done.set()
        churner.join()
    assert removed == [0] * 400
    assert len(session_files(session_dir)) == len(keys)
