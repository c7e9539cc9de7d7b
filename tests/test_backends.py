"""One behaviour suite, run over every backend: filesystem, Redis (one server, and a
3-master cluster), and two cachelib caches.

Time is moved by hand: the interface's clock and the store's clock (the filesystem store's
``clock``; cachelib's module clocks). Redis keeps its own clock, which a test cannot move;
there, moving time shrinks every key's TTL by the same amount, which is what the passing of
time does to them (``test_redis.py`` also lets a short TTL run out for real).
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import cachelib
import cachelib.file
import cachelib.simple
import pytest
from flask import Flask, session
from flask.testing import FlaskClient

from flask_dill_session import ConfigError, DillSessionInterface
from flask_dill_session.envelope import Envelope
from flask_dill_session.session import DillSession
from flask_dill_session.stores.base import Store, quarantine_name
from flask_dill_session.stores.filesystem import FileSystemStore, last_record
from flask_dill_session.stores.redis import RedisStore

from .apps.roundtrip_app import KINDS, matches, values
from .support import Clock, CountingStore, interface

AppFactory = Callable[..., Flask]

LIFETIME = 1000.0  # idle lifetime (PERMANENT_SESSION_LIFETIME), seconds
COOKIE = "session"
PREFIX = "session:"
BACKENDS = ["filesystem", "redis", "redis-cluster", "cachelib-file", "cachelib-simple"]
LOCKING_BACKENDS = ["filesystem", "redis", "redis-cluster"]  # cachelib has no locks


@dataclass
class Backend:
    """One backend under test: its config, its clock, and direct access to its medium."""

    name: str
    config: dict[str, Any]
    clock: Clock
    redis: Any = None  # the client (redis.Redis or RedisCluster) of the Redis backends
    cache: Any = None  # the cachelib cache
    locking: bool = True
    quarantine_dir: Path | None = None
    apps: list[Flask] = field(default_factory=list)
    names: Any = None  # the Redis store, which names the keys

    def install(self, app: Flask) -> None:
        interface = app.session_interface
        assert isinstance(interface, DillSessionInterface)
        interface.clock = self.clock
        if isinstance(interface.store, FileSystemStore):
            interface.store.clock = self.clock
        if isinstance(interface.store, RedisStore):
            self.names = interface.store  # every app here names keys with the same secret
        self.apps.append(app)

    def advance(self, seconds: float) -> None:
        """Let *seconds* pass for the interface and for the store."""
        self.clock.now += seconds
        if self.redis is not None:
            shrink_ttls(self.redis, seconds)

    def plant(self, app: Flask, key: str, blob: bytes) -> None:
        """Write *blob* straight into the medium under *key*, as an intruder could."""
        if self.redis is not None:
            self.redis.set(self.names.session_key(key), blob, px=int(LIFETIME * 1000))
        elif self.cache is not None:
            self.cache.set(key, blob, timeout=int(LIFETIME))
        else:
            entry = store_of(app).open(key, lock=True)
            try:
                assert entry.write(blob, LIFETIME)
            finally:
                entry.release()

    def stored(self, app: Flask, key: str) -> bytes | None:
        """The bytes the medium holds under *key*, read without our store."""
        if self.redis is not None:
            value = self.redis.get(self.names.session_key(key))
        elif self.cache is not None:
            value = self.cache.get(key)
        else:
            entry = store_of(app).open(key, lock=False)
            value = entry.blob
            entry.release()
        assert value is None or isinstance(value, bytes)
        return value

    def in_quarantine(self, app: Flask, key: str, blob: bytes) -> bool:
        """Whether *blob* (once stored under *key*) sits in the quarantine area."""
        if self.quarantine_dir is not None:
            return any(
                last_record(path.read_bytes())[0] == blob
                for path in self.quarantine_dir.glob("*")
                if path.is_file()
            )
        if self.redis is not None:
            return bool(self.redis.get(self.names.quarantine_key(key, blob)) == blob)
        return bool(self.cache.get(f"quarantine:{PREFIX}" + quarantine_name(key, blob)) == blob)


def shrink_ttls(client: Any, seconds: float) -> None:
    """Move the Redis server's notion of time: every TTL loses *seconds*."""
    lost = int(seconds * 1000)
    for key in client.scan_iter():
        ttl = client.pttl(key)
        if ttl >= 0:  # -1: no expiry, -2: gone meanwhile
            if ttl <= lost:
                client.delete(key)
            else:
                client.pexpire(key, ttl - lost)


def store_of(app: Flask) -> Store:
    interface = app.session_interface
    assert isinstance(interface, DillSessionInterface)
    return interface.store


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest,
    session_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Backend:
    return make_backend(request.param, request, session_dir, tmp_path, monkeypatch)


@pytest.fixture(params=LOCKING_BACKENDS)
def locking_backend(
    request: pytest.FixtureRequest,
    session_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Backend:
    return make_backend(request.param, request, session_dir, tmp_path, monkeypatch)


def make_backend(
    name: str,
    request: pytest.FixtureRequest,
    session_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Backend:
    clock = Clock()
    if name == "filesystem":
        return Backend(
            name,
            {"SESSION_DILL_BACKEND": "filesystem"},
            clock,
            quarantine_dir=session_dir / "quarantine",
        )
    if name.startswith("redis"):
        client = request.getfixturevalue("cluster_client" if name == "redis-cluster" else "client")
        return Backend(
            name, {"SESSION_DILL_BACKEND": "redis", "SESSION_REDIS": client}, clock, client
        )
    # cachelib reads the time through its modules' ``time``: give it ours.
    monkeypatch.setattr(cachelib.simple, "time", clock)
    monkeypatch.setattr(cachelib.file, "time", clock)
    cache: cachelib.BaseCache
    if name == "cachelib-file":
        cache = cachelib.FileSystemCache(str(tmp_path / "cache"), threshold=0)
    else:
        cache = cachelib.SimpleCache(threshold=10_000)
    config = {
        "SESSION_DILL_BACKEND": "cachelib",
        "SESSION_CACHELIB": cache,
        "SESSION_DILL_LOCKING": False,
    }
    return Backend(name, config, clock, cache=cache, locking=False)


def build(backend: Backend, make_app: AppFactory, **config: Any) -> Flask:
    settings: dict[str, Any] = {
        "PERMANENT_SESSION_LIFETIME": timedelta(seconds=LIFETIME),
        "SESSION_DILL_LOCK_TIMEOUT": 5,
        **backend.config,
        **config,
    }
    app = make_app(**settings)
    backend.install(app)

    @app.post("/values")
    def store_values() -> str:
        session.update(values())
        return "stored"

    @app.get("/values")
    def check_values() -> dict[str, bool]:
        missing = object()
        return {kind: matches(kind, session.get(kind, missing)) for kind in KINDS}

    @app.get("/set/<name>/<int:value>")
    def set_value(name: str, value: int) -> str:
        session[name] = value
        return "ok"

    @app.get("/get/<name>")
    def get_value(name: str) -> str:
        return repr(session.get(name))

    @app.get("/inc")
    def increment() -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    @app.get("/noop")
    def noop() -> str:
        return "ok"

    @app.get("/logout")
    def logout() -> str:
        assert isinstance(session, DillSession)
        interface(app).destroy(session)
        return "bye"

    @app.get("/regenerate")
    def regenerate() -> str:
        assert isinstance(session, DillSession)
        interface(app).regenerate(session)
        return "new id"

    @app.get("/boom")
    def boom() -> str:
        session["n"] = session.get("n", 0) + 1
        raise RuntimeError("boom")

    return app


def sid_of(client: FlaskClient) -> str | None:
    cookie = client.get_cookie(COOKIE)
    return None if cookie is None else cookie.value


def started(client: FlaskClient, name: str = "a", value: int = 1) -> str:
    """Store ``name = value`` in a new session; its id."""
    assert client.get(f"/set/{name}/{value}").status_code == 200
    sid = sid_of(client)
    assert sid is not None
    return sid


# -- round trip ------------------------------------------------------------------------


def test_round_trip_of_every_value_kind(backend: Backend, make_app: AppFactory) -> None:
    app = build(backend, make_app)
    client = app.test_client()
    assert client.post("/values").status_code == 200
    # A second app on the same medium: nothing is kept in memory between the two.
    other = build(backend, make_app).test_client()
    other.set_cookie(COOKIE, sid_of(client) or "")
    result = other.get("/values").get_json()
    assert result == dict.fromkeys(KINDS, True)


def test_the_store_holds_an_authenticated_blob_not_the_objects(
    backend: Backend, make_app: AppFactory
) -> None:
    app = build(backend, make_app)
    client = app.test_client()
    sid = started(client, "a", 7)
    blob = backend.stored(app, PREFIX + sid)
    assert blob is not None
    opened = Envelope("test-secret").open(PREFIX + sid, blob)
    assert pickle.loads(opened.payload) == {"a": 7}


# -- strict mode -----------------------------------------------------------------------


def test_an_unknown_session_id_is_never_adopted(backend: Backend, make_app: AppFactory) -> None:
    app = build(backend, make_app)
    client = app.test_client()
    forged = interface(app).generate_sid()
    client.set_cookie(COOKIE, forged)
    assert client.get("/get/a").text == "None"
    assert sid_of(client) is None  # the unknown id is dropped, and nothing was stored
    client.set_cookie(COOKIE, forged)
    assert client.get("/set/a/5").status_code == 200
    sid = sid_of(client)
    assert sid is not None and sid != forged
    assert backend.stored(app, PREFIX + forged) is None
    assert backend.stored(app, PREFIX + sid) is not None
    assert client.get("/get/a").text == "5"


# -- expiry ----------------------------------------------------------------------------


def test_idle_expiry_is_refreshed_by_activity(backend: Backend, make_app: AppFactory) -> None:
    app = build(backend, make_app)
    client = app.test_client()
    sid = started(client)
    for _ in range(3):  # reads only: the touch keeps the session alive
        backend.advance(LIFETIME - 100)
        assert client.get("/get/a").text == "1"
    assert sid_of(client) == sid
    backend.advance(LIFETIME + 5)
    assert client.get("/get/a").text == "None"
    assert backend.stored(app, PREFIX + sid) is None
    assert client.get("/set/a/2").status_code == 200
    assert sid_of(client) != sid


def test_absolute_expiry_ends_an_active_session(backend: Backend, make_app: AppFactory) -> None:
    app = build(backend, make_app, SESSION_DILL_ABSOLUTE_LIFETIME=2.5 * LIFETIME)
    client = app.test_client()
    sid = started(client)
    backend.advance(LIFETIME - 100)
    assert client.get("/inc").text == "1"
    backend.advance(LIFETIME - 100)
    assert client.get("/inc").text == "2"
    backend.advance(LIFETIME - 100)  # active all along, but older than the absolute limit
    assert client.get("/get/n").text == "None"
    assert client.get("/inc").text == "1"
    assert sid_of(client) != sid


# -- authentication and quarantine -------------------------------------------------------


class Trap:
    """Unpickling this creates a marker file: proof that foreign bytes were run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("attack", ["raw pickle", "wrong key", "copied from another id"])
def test_a_forged_blob_is_never_loaded_and_is_quarantined(
    backend: Backend,
    make_app: AppFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    attack: str,
) -> None:
    app = build(backend, make_app)
    victim = app.test_client()
    victim_sid = started(victim, "a", 1)
    key = PREFIX + victim_sid
    marker = tmp_path / "pwned"
    evil = b"p" + pickle.dumps({"a": Trap(marker)})
    if attack == "raw pickle":
        blob = evil
    elif attack == "wrong key":  # under the real key's id (bytes 21-29), which any blob shows
        genuine = backend.stored(app, key)
        assert genuine is not None
        guessed = Envelope("another-secret").seal(key, evil, flags=1, created=0.0, expires=None)
        blob = guessed[:21] + genuine[21:29] + guessed[29:]
    else:
        other_sid = started(app.test_client(), "a", 666)
        stolen = backend.stored(app, PREFIX + other_sid)
        assert stolen is not None
        blob = stolen
    backend.plant(app, key, blob)

    with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
        assert victim.get("/get/a").text == "None"
    assert not marker.exists()
    assert backend.in_quarantine(app, key, blob)
    assert backend.stored(app, key) is None
    warnings = [r for r in caplog.records if r.name == "flask_dill_session"]
    assert len(warnings) == 1 and "quarantined" in warnings[0].getMessage()
    assert victim_sid not in warnings[0].getMessage()
    assert victim.get("/set/a/2").status_code == 200
    assert sid_of(victim) != victim_sid
    assert victim.get("/get/a").text == "2"


# -- lazy write --------------------------------------------------------------------------


def test_an_unchanged_session_is_touched_not_rewritten(
    backend: Backend, make_app: AppFactory
) -> None:
    app = build(backend, make_app)
    counting = CountingStore(store_of(app))
    interface(app).store = counting
    client = app.test_client()
    sid = started(client)
    assert counting.ops() == Counter(write=1)
    blob = backend.stored(app, PREFIX + sid)

    counting.calls.clear()
    assert client.get("/get/a").text == "1"
    assert counting.ops() == Counter(open=1, touch=1)
    assert backend.stored(app, PREFIX + sid) == blob

    counting.calls.clear()
    assert client.get("/noop").text == "ok"
    assert counting.ops() == Counter()

    counting.calls.clear()
    assert client.get("/set/a/2").status_code == 200
    assert counting.ops() == Counter(open=1, write=1)
    assert backend.stored(app, PREFIX + sid) != blob


# -- locking -----------------------------------------------------------------------------


def test_cachelib_has_no_locks(make_app: AppFactory, tmp_path: Path) -> None:
    cache = cachelib.FileSystemCache(str(tmp_path / "cache"), threshold=0)
    app = make_app(SESSION_DILL_BACKEND="cachelib", SESSION_CACHELIB=cache)
    assert interface(app).locking is False


def test_concurrent_increments_lose_nothing(locking_backend: Backend, make_app: AppFactory) -> None:
    backend = locking_backend
    app = build(backend, make_app)
    sid = started(app.test_client(), "n", 0)
    threads, rounds = 8, 25
    errors: list[BaseException] = []

    def work() -> None:
        client = app.test_client()
        client.set_cookie(COOKIE, sid)
        try:
            for _ in range(rounds):
                assert client.get("/inc").status_code == 200
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    client = app.test_client()
    client.set_cookie(COOKIE, sid)
    assert client.get("/get/n").text == str(threads * rounds)


def test_a_held_lock_gives_503_with_retry_after(
    locking_backend: Backend, make_app: AppFactory
) -> None:
    backend = locking_backend
    app = build(backend, make_app, SESSION_DILL_LOCK_TIMEOUT=0.2)
    client = app.test_client()
    sid = started(client)
    held = store_of(app).open(PREFIX + sid, lock=True)
    try:
        response = client.get("/inc")
        assert response.status_code == 503
        assert response.headers["Retry-After"].isdigit()
    finally:
        held.release()
    assert client.get("/get/n").text == "None"  # the refused request wrote nothing
    assert client.get("/inc").text == "1"
    assert client.get("/get/a").text == "1"


def test_an_exception_in_the_view_releases_the_lock(backend: Backend, make_app: AppFactory) -> None:
    app = build(backend, make_app, SESSION_DILL_LOCK_TIMEOUT=0.5)
    client = app.test_client()
    started(client)
    with pytest.raises(RuntimeError):
        client.get("/boom")
    assert client.get("/inc").text == "1"  # not blocked, and the failed request saved nothing


# -- destroy and regenerate ----------------------------------------------------------------


def test_destroy_deletes_now_and_is_not_undone_by_a_request_in_flight(
    backend: Backend, make_app: AppFactory
) -> None:
    app = build(backend, make_app)
    client = app.test_client()
    sid = started(client)
    in_flight = store_of(app).open(PREFIX + sid, lock=False)  # read before the logout
    response = client.get("/logout")
    assert response.status_code == 200
    assert "session=;" in response.headers["Set-Cookie"]
    assert backend.stored(app, PREFIX + sid) is None
    assert not in_flight.write(b"stale data of a request that started before the logout", LIFETIME)
    in_flight.release()
    assert backend.stored(app, PREFIX + sid) is None
    client.set_cookie(COOKIE, sid)
    assert client.get("/get/a").text == "None"


def test_regenerate_keeps_the_data_under_a_new_id(backend: Backend, make_app: AppFactory) -> None:
    app = build(backend, make_app, SESSION_DILL_ROTATION_GRACE=None)
    client = app.test_client()
    old = started(client, "a", 3)
    assert client.get("/regenerate").status_code == 200
    new = sid_of(client)
    assert new is not None and new != old
    assert client.get("/get/a").text == "3"
    assert backend.stored(app, PREFIX + old) is None
    stale = app.test_client()
    stale.set_cookie(COOKIE, old)
    assert stale.get("/get/a").text == "None"


def test_the_old_id_is_read_only_during_the_rotation_grace(
    backend: Backend, make_app: AppFactory
) -> None:
    app = build(backend, make_app)  # the default grace: 10 s
    client = app.test_client()
    old = started(client, "a", 3)
    assert client.get("/regenerate").status_code == 200
    stale = app.test_client()
    stale.set_cookie(COOKIE, old)
    response = stale.get("/set/a/4")
    assert "Set-Cookie" not in response.headers
    assert stale.get("/get/a").text == "3", "read-only: its write was dropped"
    assert client.get("/get/a").text == "3"
    backend.advance(11)
    assert stale.get("/get/a").text == "None", "after the grace the old id is unknown"
    assert client.get("/get/a").text == "3"


# -- configuration -------------------------------------------------------------------------


def test_cachelib_needs_a_cache(make_app: AppFactory) -> None:
    with pytest.raises(ConfigError, match="SESSION_CACHELIB"):
        make_app(SESSION_DILL_BACKEND="cachelib")
    with pytest.raises(ConfigError, match="SESSION_CACHELIB"):
        make_app(SESSION_DILL_BACKEND="cachelib", SESSION_CACHELIB={})


def test_cachelib_warns_once_at_startup_that_it_cannot_lock(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
        app = make_app(SESSION_DILL_BACKEND="cachelib", SESSION_CACHELIB=cachelib.SimpleCache())
        client = app.test_client()
        client.get("/")
    warnings = [r.getMessage() for r in caplog.records if r.name == "flask_dill_session"]
    assert len(warnings) == 1
    assert "SESSION_DILL_LOCKING" in warnings[0] and "no locks" in warnings[0]
    assert interface(app).locking is False
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
        make_app(
            SESSION_DILL_BACKEND="cachelib",
            SESSION_CACHELIB=cachelib.SimpleCache(),
            SESSION_DILL_LOCKING=False,
        )
    assert [r for r in caplog.records if r.name == "flask_dill_session"] == []
