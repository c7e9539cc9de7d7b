"""Signals: each sent once per event, from the app, with the documented arguments, through
real requests on the filesystem and Redis stores; with nobody listening, nothing is sent
and no argument is computed."""

from __future__ import annotations

import fcntl
import importlib
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blinker
import pytest
import redis
from flask import Flask, session
from flask.testing import FlaskClient

import flask_dill_session
from flask_dill_session import (
    DillSession,
    LockTimeoutError,
    StoreUnavailableError,
    signals,
)
from flask_dill_session.stores import filesystem
from flask_dill_session.stores.base import fingerprint

from .apps.redis_app import redis_client
from .support import Tmpfs, free_port, interface

AppFactory = Callable[..., Flask]
Events = list[tuple[str, dict[str, Any]]]
COOKIE = "session"

SIGNALS = signals.ALL


@dataclass
class Gate:
    """Lets a test hold a request inside its view, with the session's lock."""

    loaded: threading.Event = field(default_factory=threading.Event)
    finish: threading.Event = field(default_factory=threading.Event)


@contextmanager
def recorded(app: Flask) -> Iterator[Events]:
    """Every signal sent while inside, in order: its name and arguments (the sender must be
    *app*)."""
    events: Events = []
    with ExitStack() as stack:
        for signal in SIGNALS:

            def receive(sender: Any, _name: str = signal.name, **arguments: Any) -> None:
                assert sender is app
                events.append((_name, arguments))

            stack.enter_context(signal.connected_to(receive))
        yield events


def build(make_app: AppFactory, gate: Gate | None = None, **config: Any) -> Flask:
    app = make_app(**config)

    @app.get("/set/<value>")
    def set_value(value: str) -> str:
        session["v"] = value
        return value

    @app.get("/get")
    def get_value() -> str:
        return str(session.get("v"))

    @app.get("/quiet")
    def quiet() -> str:
        return "the session is not used"

    @app.get("/login")
    def login() -> str:
        assert isinstance(session, DillSession)
        interface(app).regenerate(session)
        session["user"] = "alice"
        return "in"

    @app.get("/logout")
    def logout() -> str:
        assert isinstance(session, DillSession)
        interface(app).destroy(session)
        return "out"

    @app.get("/empty")
    def empty() -> str:
        session.clear()
        return "emptied"

    @app.get("/hold")
    def hold() -> str:
        assert gate is not None
        session["v"] = "held"
        gate.loaded.set()
        assert gate.finish.wait(20)
        return "held"

    return app


@pytest.fixture(params=["filesystem", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The config of a store with locks: the filesystem, or a real redis-server."""
    if request.param == "filesystem":
        return {}
    client: redis.Redis = request.getfixturevalue("client")
    return {"SESSION_DILL_BACKEND": "redis", "SESSION_REDIS": client}


def sid_of(client: FlaskClient) -> str:
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return cookie.value


def name_of(app: Flask, sid: str) -> str:
    """The session's fingerprint, as the log and the signals name it."""
    return fingerprint(interface(app).store_key(sid))


def stored(app: Flask, sid: str) -> bytes:
    entry = interface(app).store.open(interface(app).store_key(sid), lock=False)
    entry.release()
    assert entry.blob is not None
    return entry.blob


def started(app: Flask, client: FlaskClient, value: str = "a") -> str:
    assert client.get(f"/set/{value}").status_code == 200
    return sid_of(client)


def test_a_new_session_is_created_then_saved(make_app: AppFactory, backend: dict[str, Any]) -> None:
    app = build(make_app, **backend)
    client = app.test_client()
    with recorded(app) as events:
        assert client.get("/set/a").text == "a"
    sid = sid_of(client)
    name = name_of(app, sid)
    size = len(stored(app, sid))
    assert events == [
        ("session-created", {"fingerprint": name}),
        ("session-saved", {"fingerprint": name, "written": True, "size": size}),
    ]
    assert sid not in repr(events)  # named by a hash, never by its id


def test_a_changed_session_is_written_and_an_unchanged_one_refreshed(
    make_app: AppFactory, backend: dict[str, Any]
) -> None:
    app = build(make_app, **backend)
    client = app.test_client()
    sid = started(app, client)
    name = name_of(app, sid)
    with recorded(app) as events:
        client.get("/set/b")
    assert events == [
        ("session-saved", {"fingerprint": name, "written": True, "size": len(stored(app, sid))})
    ]
    with recorded(app) as events:
        assert client.get("/get").text == "b"
    assert events == [("session-saved", {"fingerprint": name, "written": False, "size": None})]


def test_requests_that_store_nothing_send_nothing(
    make_app: AppFactory, backend: dict[str, Any]
) -> None:
    app = build(make_app, **backend)
    client = app.test_client()
    started(app, client)
    with recorded(app) as events:
        assert client.get("/quiet").status_code == 200  # session not used
        assert app.test_client().get("/get").text == "None"  # a new session, left empty
        assert app.test_client().get("/logout").text == "out"  # never stored: nothing deleted
    assert events == []


def test_regenerate_sends_regenerated_and_no_creation(
    make_app: AppFactory, backend: dict[str, Any]
) -> None:
    app = build(make_app, **backend)
    client = app.test_client()
    old = started(app, client)
    with recorded(app) as events:
        assert client.get("/login").text == "in"
    new = sid_of(client)
    assert new != old
    name, size = name_of(app, new), len(stored(app, new))
    assert events == [
        ("session-regenerated", {"fingerprint": name, "old_fingerprint": name_of(app, old)}),
        ("session-saved", {"fingerprint": name, "written": True, "size": size}),
    ]


def test_regenerate_of_a_session_never_stored_creates_it(make_app: AppFactory) -> None:
    app = build(make_app)
    client = app.test_client()
    with recorded(app) as events:
        assert client.get("/login").text == "in"
    name = name_of(app, sid_of(client))
    assert [event for event, _ in events] == [
        "session-regenerated",
        "session-created",
        "session-saved",
    ]
    assert events[0][1]["fingerprint"] == events[1][1]["fingerprint"] == name


def test_destroy_and_an_emptied_session_send_destroyed(
    make_app: AppFactory, backend: dict[str, Any]
) -> None:
    app = build(make_app, **backend)
    client = app.test_client()
    name = name_of(app, started(app, client))
    with recorded(app) as events:
        assert client.get("/logout").text == "out"
    assert events == [("session-destroyed", {"fingerprint": name, "reason": "destroy"})]

    name = name_of(app, started(app, client))
    with recorded(app) as events:
        assert client.get("/empty").text == "emptied"
    assert events == [("session-destroyed", {"fingerprint": name, "reason": "emptied"})]


def test_an_unusable_blob_sends_quarantined_with_the_logged_reason(
    make_app: AppFactory, backend: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    app = build(make_app, **backend)
    client = app.test_client()
    sid = started(app, client)
    entry = interface(app).store.open(interface(app).store_key(sid), lock=True)
    try:
        assert entry.write(b"not a sealed session", 1000)  # as an intruder could
    finally:
        entry.release()
    with caplog.at_level(logging.WARNING, logger="flask_dill_session"), recorded(app) as events:
        assert client.get("/get").text == "None"  # a fresh session, not stored
    ((event, arguments),) = events
    assert event == "session-quarantined"
    assert arguments["fingerprint"] == name_of(app, sid) and arguments["copy"] is False
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "flask_dill_session"]
    assert warning.endswith(f"quarantined: {arguments['reason']}") and arguments["reason"]


def test_dropped_keys_send_quarantined_for_the_copy_kept(
    make_app: AppFactory, deployed_module: tuple[str, Path]
) -> None:
    module, source = deployed_module
    app = build(make_app)

    @app.get("/cart")
    def cart() -> str:
        session["cart"] = importlib.import_module(module).Cart(["apple"])
        return "cart"

    client = app.test_client()
    sid = started(app, client)
    assert client.get("/cart").text == "cart"
    del sys.modules[module]
    source.unlink()  # the deploy: the class is gone
    importlib.invalidate_caches()
    with recorded(app) as events:
        assert client.get("/get").text == "a"  # the rest of the session is kept
    name, size = name_of(app, sid), len(stored(app, sid))
    assert events == [
        (
            "session-quarantined",
            {"fingerprint": name, "reason": "keys dropped: 'cart'", "copy": True},
        ),
        ("session-saved", {"fingerprint": name, "written": True, "size": size}),
    ]


# -- locks -------------------------------------------------------------------------------


@pytest.fixture
def refused(backend: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set when a try to take a session's lock is refused (it is held): watches ``flock``
    in the filesystem store, the lock-and-read script's answer in the Redis store."""
    event = threading.Event()
    if not backend:

        class Watched:
            LOCK_EX, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_NB

            @staticmethod
            def flock(fd: int, operation: int) -> None:
                try:
                    fcntl.flock(fd, operation)
                except BlockingIOError:
                    event.set()
                    raise

        monkeypatch.setattr(filesystem, "fcntl", Watched)
    else:
        from flask_dill_session.stores._lock import SessionLock

        attempt = SessionLock._try

        def watched(self: SessionLock, token: bytes) -> bool:
            taken = attempt(self, token)
            if not taken:
                event.set()
            return taken

        monkeypatch.setattr(SessionLock, "_try", watched)
    return event


@contextmanager
def holding(app: Flask, sid: str, gate: Gate) -> Iterator[list[str]]:
    """A request of *sid* in another thread, holding the session's lock until the end of
    the block (then ``gate.finish`` is set); its answers."""
    answers: list[str] = []

    def hold() -> None:
        client = app.test_client()
        client.set_cookie(COOKIE, sid)
        answers.append(client.get("/hold").text)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert gate.loaded.wait(20)
        yield answers
    finally:
        gate.finish.set()
        holder.join(20)
    assert not holder.is_alive()


def test_a_request_that_waited_for_the_lock_sends_lock_waited_with_the_wait(
    make_app: AppFactory, backend: dict[str, Any], refused: threading.Event
) -> None:
    gate = Gate()
    app = build(make_app, gate, **backend)
    client = app.test_client()
    sid = started(app, client)
    name = name_of(app, sid)
    answers: dict[str, str] = {}

    def wait_then_read() -> None:
        answers["get"] = client.get("/get").text

    with recorded(app) as events:
        with holding(app, sid, gate) as held:
            waiter = threading.Thread(target=wait_then_read)
            waiter.start()
            assert refused.wait(20)  # the waiter's first try was refused: it is waiting
            since = time.monotonic()
            time.sleep(0.05)  # a floor for the wait measured below, not a synchronization
            held_for = time.monotonic() - since
        waiter.join(20)
    assert held == ["held"] and answers == {"get": "held"}
    waits = [arguments for event, arguments in events if event == "lock-waited"]
    assert waits == [{"fingerprint": name, "wait": waits[0]["wait"]}]
    assert held_for <= waits[0]["wait"] < 20
    assert Counter(event for event, _ in events) == {"lock-waited": 1, "session-saved": 2}


def test_a_lock_wait_that_times_out_sends_lock_timeout(
    make_app: AppFactory, backend: dict[str, Any]
) -> None:
    gate = Gate()
    app = build(make_app, gate, SESSION_DILL_LOCK_TIMEOUT=0.2, **backend)
    client = app.test_client()
    sid = started(app, client)
    with recorded(app) as events:
        with holding(app, sid, gate):
            assert client.get("/get").status_code == 503
            timeouts = list(events)
        assert [event for event, _ in events] == ["lock-timeout", "session-saved"]
    ((event, arguments),) = timeouts
    assert event == "lock-timeout" and arguments["fingerprint"] == name_of(app, sid)
    assert set(arguments) == {"fingerprint", "error"}
    assert isinstance(arguments["error"], LockTimeoutError)


# -- store failures ----------------------------------------------------------------------


def test_a_read_only_store_sends_store_unavailable_once_when_saving(
    make_app: AppFactory, tmpfs: Tmpfs
) -> None:
    app = build(make_app, SESSION_FILE_DIR=str(tmpfs.directory / "sessions"))
    client = app.test_client()
    name = name_of(app, started(app, client))
    tmpfs.read_only()
    try:
        with recorded(app) as events:
            assert client.get("/set/b").status_code == 503
        ((event, arguments),) = events
        assert event == "store-unavailable"
        assert arguments["fingerprint"] == name and arguments["saving"] is True
        error = arguments["error"]
        assert type(error) is StoreUnavailableError and error.cause == "Read-only file system"
        with recorded(app) as events:
            assert client.get("/get").text == "a"  # reads still served, untouched
        assert events == [("session-saved", {"fingerprint": name, "written": False, "size": None})]
    finally:
        tmpfs.read_write()


def test_an_unreachable_redis_sends_store_unavailable_once_when_first_used(
    make_app: AppFactory,
) -> None:
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    app = build(make_app, SESSION_DILL_BACKEND="redis", SESSION_REDIS=client)
    sid = interface(app).generate_sid()
    browser = app.test_client()
    browser.set_cookie(COOKIE, sid)
    with recorded(app) as events:
        assert browser.get("/get").status_code == 503
    ((event, arguments),) = events
    assert event == "store-unavailable"
    assert arguments["fingerprint"] == name_of(app, sid) and arguments["saving"] is False
    assert isinstance(arguments["error"], StoreUnavailableError)
    assert "Connection refused" in arguments["error"].cause


# -- nobody listening --------------------------------------------------------------------


def test_with_nobody_listening_nothing_is_sent_nor_computed(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = build(make_app)
    sent: list[str] = []
    named: list[str] = []
    send = blinker.Signal.send

    def spy_send(self: blinker.Signal, *args: Any, **kwargs: Any) -> Any:
        if self in SIGNALS:
            sent.append(getattr(self, "name", "?"))
        return send(self, *args, **kwargs)

    def spy_fingerprint(key: str) -> str:
        named.append(key)
        return fingerprint(key)

    monkeypatch.setattr(blinker.Signal, "send", spy_send)
    monkeypatch.setattr(flask_dill_session.interface, "fingerprint", spy_fingerprint)

    def visit() -> None:
        client = app.test_client()
        for path in ("/set/a", "/set/b", "/get", "/login", "/empty", "/set/c", "/logout"):
            assert client.get(path).status_code == 200

    assert all(not signal.receivers for signal in SIGNALS)
    visit()
    assert sent == [] and named == []
    with recorded(app) as events:
        visit()  # the same requests, listened to
    assert len(sent) == len(events) >= 7 and named
