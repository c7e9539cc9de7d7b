"""Per-view lock control: ``@readonly`` views, and ``SESSION_DILL_LOCKING = "writes"``.

Lock waits are made certain by holding the session's lock in the test (an ``flock`` on
the session file, or the Redis lock key), and orderings by events between threads: the
tests never sleep to let something happen.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, session

from flask_dill_session import (
    ConfigError,
    DillSession,
    ReadOnlySessionError,
    SessionConflictError,
    readonly,
)
from flask_dill_session.stores.filesystem import FileSystemStore
from flask_dill_session.stores.redis import RedisStore

from .apps.counter_app import create_app
from .support import (
    CountingStore,
    client_for,
    count_store_calls,
    interface,
    slow_incr_app,
    start,
)

SECRET = "modes-secret"


@pytest.fixture(params=["filesystem", "redis"])
def config(request: pytest.FixtureRequest, session_dir: Path) -> dict[str, Any]:
    base = {"TESTING": True, "SECRET_KEY": SECRET, "SESSION_DILL_LOCK_TIMEOUT": 0.2}
    if request.param == "redis":
        client = request.getfixturevalue("client")
        return {**base, "SESSION_DILL_BACKEND": "redis", "SESSION_REDIS": client}
    return {**base, "SESSION_FILE_DIR": str(session_dir)}


@contextmanager
def lock_held(app: Flask, sid: str) -> Iterator[None]:
    """Hold the session's lock as another request would, for the block."""
    store = interface(app).store
    if isinstance(store, CountingStore):
        store = store.inner
    key = interface(app).store_key(sid)
    if isinstance(store, FileSystemStore):
        fd = os.open(store.path(key), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
    else:
        assert isinstance(store, RedisStore)
        store.client.set(store.lock_key(key), b"another request", px=60_000)
        try:
            yield
        finally:
            store.client.delete(store.lock_key(key))


def add_views(app: Flask) -> Flask:
    @app.route("/peek")
    @readonly
    def peek() -> str:
        return str(session.get("n"))

    @app.route("/peek-and-write")
    @readonly
    def peek_and_write() -> str:
        session["n"] = session.get("n", 0) + 100
        session.setdefault("list", []).append(1)
        return str(session["n"])

    @app.route("/peek-and-regenerate")
    @readonly
    def peek_and_regenerate() -> str:
        assert isinstance(session, DillSession)
        interface(app).regenerate(session)
        return "regenerated"

    @app.route("/peek-and-destroy")
    @readonly
    def peek_and_destroy() -> str:
        assert isinstance(session, DillSession)
        interface(app).destroy(session)
        return "destroyed"

    return app


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "locking", "writes"),
    [(True, True, False), (False, False, False), ("writes", False, True), ("WRITES", False, True)],
)
def test_locking_takes_true_false_or_writes(
    session_dir: Path, value: Any, locking: bool, writes: bool
) -> None:
    app = create_app(
        {"SECRET_KEY": SECRET, "SESSION_FILE_DIR": str(session_dir), "SESSION_DILL_LOCKING": value}
    )
    assert (interface(app).locking, interface(app).lock_writes) == (locking, writes)


def test_locking_from_the_environment(session_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_SESSION_DILL_LOCKING", "writes")
    app = create_app({"SECRET_KEY": SECRET, "SESSION_FILE_DIR": str(session_dir)})
    assert interface(app).lock_writes


@pytest.mark.parametrize("value", ["yes", 1, "reads", None])
def test_other_locking_values_are_refused(session_dir: Path, value: Any) -> None:
    with pytest.raises(ConfigError, match="SESSION_DILL_LOCKING"):
        create_app(
            {
                "SECRET_KEY": SECRET,
                "SESSION_FILE_DIR": str(session_dir),
                "SESSION_DILL_LOCKING": value,
            }
        )


# -- @readonly ------------------------------------------------------------------------------


def test_a_readonly_view_reads_while_another_request_holds_the_lock(
    config: dict[str, Any],
) -> None:
    app = add_views(create_app(config))
    sid = start(app)
    client_for(app, sid).get("/incr")
    with lock_held(app, sid):
        assert client_for(app, sid).get("/peek").text == "1"  # no wait
        assert client_for(app, sid).get("/read").status_code == 503  # waits, times out


def test_a_change_in_a_readonly_view_is_logged_once_and_not_saved(
    config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    app = add_views(create_app(config))
    sid = start(app)
    counting = count_store_calls(app)
    with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
        for _ in range(2):
            response = client_for(app, sid).get("/peek-and-write")
            assert (response.status_code, response.text) == (200, "100")
            assert sid in response.headers["Set-Cookie"]  # the permanent cookie refreshed
    assert counting.ops() == Counter(open=2, touch=2)
    assert counting.calls["locked"] == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "flask_dill_session"]
    assert len(warnings) == 1
    assert "'peek_and_write'" in warnings[0] and "not saved" in warnings[0]
    assert client_for(app, sid).get("/read").text == "0"


def test_a_readonly_view_stores_no_new_session(config: dict[str, Any]) -> None:
    app = add_views(create_app(config))
    counting = count_store_calls(app)
    client = app.test_client()
    response = client.get("/peek-and-write")
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers
    assert counting.ops() == Counter()
    assert client.get("/read").text == "None"


@pytest.mark.parametrize("action", ["regenerate", "destroy"])
def test_a_readonly_view_cannot_regenerate_or_destroy(config: dict[str, Any], action: str) -> None:
    app = add_views(create_app(config))
    sid = start(app)
    with pytest.raises(ReadOnlySessionError, match=f"{action}\\(\\) in a view marked readonly"):
        client_for(app, sid).get(f"/peek-and-{action}")
    assert client_for(app, sid).get("/read").text == "0"  # still there, still ours


def test_readonly_survives_other_decorators_and_returns_the_view() -> None:
    def view() -> str:
        return "x"

    assert readonly(view) is view

    @functools.wraps(view)
    def wrapper() -> str:
        return view()

    assert getattr(wrapper, "_dill_session_readonly", False)  # wraps copies __dict__


# -- SESSION_DILL_LOCKING = "writes" --------------------------------------------------------


def writes_app(config: dict[str, Any]) -> tuple[Flask, threading.Event, threading.Event]:
    """The counter app in "writes" mode, with ``/slow-incr``: read, add one, then wait for
    *finish* (having set *loaded*) before the response is saved."""
    app, loaded, finish = slow_incr_app({**config, "SESSION_DILL_LOCKING": "writes"})
    return add_views(app), loaded, finish


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(call()))
    thread.start()
    return thread, result


def test_writes_mode_reads_without_the_lock_and_locks_to_write(config: dict[str, Any]) -> None:
    app, _, _ = writes_app(config)
    sid = start(app)
    counting = count_store_calls(app)
    with lock_held(app, sid):
        assert client_for(app, sid).get("/read").text == "0"  # no wait to read
        assert client_for(app, sid).get("/incr").status_code == 503  # the write waits
    assert counting.ops() == Counter(open=3, touch=1)  # read; incr: read, locked re-read
    assert counting.calls["locked"] == 1
    counting.calls.clear()
    assert client_for(app, sid).get("/incr").text.startswith("1 ")
    assert counting.ops() == Counter(open=2, write=1)
    assert counting.calls["locked"] == 1


def test_writes_mode_refuses_a_write_whose_stored_version_moved(config: dict[str, Any]) -> None:
    """Two real requests: the slow one read n=0; the quick one saves n=1 meanwhile; the
    slow one's n=1 would lose that update, so it is answered 409 and nothing is saved."""
    app, loaded, finish = writes_app(config)
    sid = start(app)
    slow, answers = in_thread(lambda: client_for(app, sid).get("/slow-incr"))
    try:
        assert loaded.wait(20)
        assert client_for(app, sid).get("/incr").text.startswith("1 ")  # not blocked
    finally:
        finish.set()
        slow.join(20)
    (response,) = answers
    assert response.status_code == 409
    assert "Set-Cookie" not in response.headers
    assert "Conflict" in response.text
    assert client_for(app, sid).get("/read").text == "1"  # the quick one's, kept
    assert client_for(app, sid).get("/incr").text.startswith("2 ")  # and no lock was left


def test_writes_mode_conflict_is_logged_without_the_id(
    config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    app, loaded, finish = writes_app(config)
    sid = start(app)
    with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
        slow, answers = in_thread(lambda: client_for(app, sid).get("/slow-incr"))
        try:
            assert loaded.wait(20)
            client_for(app, sid).get("/incr")
        finally:
            finish.set()
            slow.join(20)
    assert answers[0].status_code == 409
    messages = [r.getMessage() for r in caplog.records if r.name == "flask_dill_session"]
    assert len(messages) == 1 and "409" in messages[0] and sid not in messages[0]


def test_writes_mode_a_touch_or_a_read_meanwhile_is_no_conflict(config: dict[str, Any]) -> None:
    app, loaded, finish = writes_app(config)
    sid = start(app)
    slow, answers = in_thread(lambda: client_for(app, sid).get("/slow-incr"))
    try:
        assert loaded.wait(20)
        assert client_for(app, sid).get("/read").text == "0"  # read and touched meanwhile
        assert client_for(app, sid).get("/peek-and-write").status_code == 200  # dropped
    finally:
        finish.set()
        slow.join(20)
    assert answers[0].status_code == 200 and answers[0].text == "1"
    assert client_for(app, sid).get("/read").text == "1"


def test_writes_mode_never_resurrects_a_session_deleted_meanwhile(config: dict[str, Any]) -> None:
    app, loaded, finish = writes_app(config)

    @app.route("/logout")
    def logout() -> str:
        session.clear()
        return "bye"

    sid = start(app)
    slow, answers = in_thread(lambda: client_for(app, sid).get("/slow-incr"))
    try:
        assert loaded.wait(20)
        assert client_for(app, sid).get("/logout").text == "bye"
    finally:
        finish.set()
        slow.join(20)
    assert answers[0].status_code == 200
    assert "Set-Cookie" not in answers[0].headers
    assert client_for(app, sid).get("/read").text == "None"


def test_the_conflict_error_is_a_dill_session_error() -> None:
    from flask_dill_session import DillSessionError

    assert issubclass(SessionConflictError, DillSessionError)
    assert issubclass(ReadOnlySessionError, DillSessionError)


def test_full_locking_stays_the_default(session_dir: Path) -> None:
    app = create_app({"SECRET_KEY": SECRET, "SESSION_FILE_DIR": str(session_dir)})
    assert interface(app).locking is True and interface(app).lock_writes is False
