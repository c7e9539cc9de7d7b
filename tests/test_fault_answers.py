"""How store failures reach the client and the operator: a 503 with ``Retry-After`` (and
only ``Vary`` of the view's headers), one log line naming the cause, nothing lost, service
back when the fault ends; wherever the session was first used. Also: foreign files, errors
logged once, and sessions that make every request fail."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask, Response, request, session
from flask.testing import FlaskClient

from flask_dill_session.stores.base import fingerprint
from flask_dill_session.stores.filesystem import frame, last_record

from .support import RedisServer, Tmpfs, filesystem_store, interface, redis_store_of

AppFactory = Callable[..., Flask]
NO_SPACE = "No space left on device"
READ_ONLY = "Read-only file system"


def build(make_app: AppFactory, **config: Any) -> Flask:
    app = make_app(**config)

    @app.route("/set/<value>")
    def set_value(value: str) -> Response:
        session["v"] = value
        return decorated()

    @app.route("/big")
    def big() -> Response:
        session["v"] = "x" * 20_000
        return decorated()

    @app.route("/get")
    def get_value() -> str:
        return str(session.get("v"))

    @app.route("/quiet")
    def quiet() -> str:
        return "the view does not use the session"

    @app.after_request
    def remember(response: Response) -> Response:
        if request.args.get("remember"):
            session["seen"] = True  # the first use of the session in this request
        return response

    return app


def decorated() -> Response:
    """A response with headers a 503 must not keep (and a Vary it must)."""
    response = Response("ok", headers={"Location": "/next", "ETag": '"abc"'})
    response.set_cookie("theme", "dark")
    response.vary.add("Accept-Language")
    return response


def files(app: Flask) -> dict[Path, bytes]:
    found = Path(filesystem_store(app).directory).rglob("*")
    return {path: path.read_bytes() for path in found if path.is_file()}


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "flask_dill_session" and r.levelno == level]


def cookie(client: FlaskClient) -> str:
    value = client.get_cookie("session")
    assert value is not None
    return value.value


def assert_503(response: Any) -> None:
    """503, Retry-After, and of the view's headers only Vary: no Location, ETag, cookies."""
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert set(response.headers.keys()) <= {"Retry-After", "Vary", "Content-Type", "Content-Length"}
    assert "session" not in response.text.lower() or "cannot be used" in response.text


@pytest.fixture
def full(tmpfs: Tmpfs, make_app: AppFactory) -> Iterator[tuple[Flask, FlaskClient, Path]]:
    app = build(make_app, SESSION_FILE_DIR=str(tmpfs.directory / "sessions"))
    client = app.test_client()
    assert client.get("/set/one").status_code == 200
    filler = tmpfs.fill()
    yield app, client, filler


def test_a_full_disk_is_a_503_with_one_log_line_and_nothing_lost(
    full: tuple[Flask, FlaskClient, Path], caplog: pytest.LogCaptureFixture
) -> None:
    app, client, filler = full
    before = files(app)
    with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
        response = client.get("/big")
    assert_503(response)
    assert response.headers["Vary"] == "Accept-Language, Cookie"
    (line,) = records(caplog, logging.ERROR)
    message = line.getMessage()
    key = interface(app).store_key(cookie(client))
    assert NO_SPACE in message and fingerprint(key) in message and "not saved" in message
    assert filesystem_store(app).directory in message
    assert cookie(client) not in message
    assert files(app) == before
    assert client.get("/get").text == "one"  # the stored session is intact

    filler.unlink()
    assert client.get("/big").status_code == 200
    assert client.get("/get").text == "x" * 20_000


def test_a_store_failure_first_met_in_an_after_request_hook_is_a_503(
    full: tuple[Flask, FlaskClient, Path], caplog: pytest.LogCaptureFixture
) -> None:
    app, _, filler = full
    newcomer = app.test_client()
    with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
        response = newcomer.get("/quiet?remember=1")
    assert_503(response)
    assert len(records(caplog, logging.ERROR)) == 1
    assert newcomer.get_cookie("session") is None
    filler.unlink()
    assert newcomer.get("/quiet?remember=1").status_code == 200
    assert newcomer.get_cookie("session") is not None


def test_a_busy_lock_first_met_in_an_after_request_hook_is_a_503(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = build(make_app, SESSION_DILL_LOCK_TIMEOUT=0.2)
    client = app.test_client()
    assert client.get("/set/one").status_code == 200
    key = interface(app).store_key(cookie(client))
    holder = filesystem_store(app).open(key, lock=True)  # another request holds the lock
    try:
        with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
            response = client.get("/quiet?remember=1")
    finally:
        holder.release()
    assert_503(response)
    (line,) = records(caplog, logging.WARNING)
    assert "busy" in line.getMessage() and fingerprint(key) in line.getMessage()
    assert client.get("/quiet?remember=1").status_code == 200
    assert client.get("/get").text == "one"


def test_a_read_only_store_serves_reads_warns_once_a_minute_and_refuses_changes(
    tmpfs: Tmpfs, make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = build(make_app, SESSION_FILE_DIR=str(tmpfs.directory / "sessions"))
    client = app.test_client()
    assert client.get("/set/one").status_code == 200
    tmpfs.read_only()
    try:
        with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
            assert [client.get("/get").text for _ in range(3)] == ["one"] * 3
            (warning,) = records(caplog, logging.WARNING)
            assert READ_ONLY in warning.getMessage()
            response = client.get("/set/two")
        assert_503(response)
        (error,) = records(caplog, logging.ERROR)
        assert READ_ONLY in error.getMessage() and "not saved" in error.getMessage()
    finally:
        tmpfs.read_write()
    assert client.get("/set/two").status_code == 200
    assert client.get("/get").text == "two"


# -- foreign files -------------------------------------------------------------------------


FOREIGN = {
    "unframed content": lambda: os.urandom(200),
    "torn first record": lambda: frame(b"x" * 100, 2e9)[:60],
}


@pytest.mark.parametrize("reason", sorted(FOREIGN))
def test_a_session_file_with_no_intact_record_is_quarantined_with_a_warning(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture, reason: str
) -> None:
    app = build(make_app)
    client = app.test_client()
    assert client.get("/set/one").status_code == 200
    sid = cookie(client)
    path = Path(filesystem_store(app).path(interface(app).store_key(sid)))
    content = FOREIGN[reason]()
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
        assert client.get("/get").text == "None"
    (warning,) = records(caplog, logging.WARNING)
    assert "quarantined" in warning.getMessage() and reason in warning.getMessage()
    assert sid not in warning.getMessage()
    (kept,) = Path(filesystem_store(app).quarantine_dir).iterdir()
    assert kept.read_bytes() == content
    assert client.get("/set/two").status_code == 200 and cookie(client) != sid


# -- errors logged once --------------------------------------------------------------------


def test_a_serialization_error_is_raised_and_logged_once(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = build(make_app)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production: Flask logs, answers 500

    @app.route("/generator")
    def generator() -> str:
        session["numbers"] = (n for n in range(3))
        return "ok"

    client = app.test_client()
    with caplog.at_level(logging.DEBUG):
        assert client.get("/generator").status_code == 500
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert logged[0].exc_info is not None
    assert "session['numbers']: generator" in str(logged[0].exc_info[1])


# -- sessions that make every request fail ---------------------------------------------------


def poisoned_app(make_app: AppFactory, **config: Any) -> Flask:
    app = build(make_app, **config)
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.route("/use")
    def use() -> str:
        if session.get("v") == "bad":
            raise RuntimeError("the stored object no longer fits the code")
        return "fine"

    return app


def test_a_session_that_fails_every_request_is_quarantined_after_n(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = poisoned_app(make_app, SESSION_DILL_POISON_AFTER=3)
    client = app.test_client()
    assert client.get("/set/bad").status_code == 200
    sid = cookie(client)
    path = Path(filesystem_store(app).path(interface(app).store_key(sid)))
    blob = last_record(path.read_bytes())[0]
    with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
        assert [client.get("/use").status_code for _ in range(3)] == [500, 500, 500]
    (warning,) = records(caplog, logging.WARNING)
    assert "3 requests in a row" in warning.getMessage() and sid not in warning.getMessage()
    (kept,) = Path(filesystem_store(app).quarantine_dir).iterdir()
    assert last_record(kept.read_bytes())[0] == blob
    assert client.get("/use").text == "fine"  # a fresh session
    assert client.get("/get").text == "None"


def test_on_redis_too_a_poisoned_session_is_quarantined_and_leaves_no_keys(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    client = redis.Redis(port=redis_server.port, socket_timeout=5)
    prefix = f"poison{os.getpid()}:"
    app = poisoned_app(
        make_app,
        SESSION_DILL_BACKEND="redis",
        SESSION_REDIS=client,
        SESSION_KEY_PREFIX=prefix,
        SESSION_DILL_POISON_AFTER=2,
    )
    browser = app.test_client()
    assert browser.get("/set/bad").status_code == 200
    sid = cookie(browser)
    name = redis_store_of(app).session_key(interface(app).store_key(sid))
    assert [browser.get("/use").status_code for _ in range(2)] == [500, 500]
    assert client.exists(name) == 0 and client.keys(f"*{sid}*") == []
    assert client.keys(f"*{name[len(prefix) :]}*") == client.keys(f"quarantine:{prefix}*")
    assert len(client.keys(f"quarantine:{prefix}*")) == 1
    assert browser.get("/use").text == "fine"


def test_a_success_resets_the_count_and_a_failed_request_writes_nothing(
    make_app: AppFactory,
) -> None:
    app = poisoned_app(make_app, SESSION_DILL_POISON_AFTER=3)

    @app.route("/set-then-fail/<value>")
    def set_then_fail(value: str) -> str:
        session["v"] = value
        raise RuntimeError("half done")

    client = app.test_client()
    assert client.get("/set/bad").status_code == 200
    codes = [client.get(path).status_code for path in ["/use", "/use", "/get", "/use", "/use"]]
    assert codes == [500, 500, 200, 500, 500]
    assert client.get("/get").text == "bad"  # never reached three in a row
    assert client.get("/set-then-fail/other").status_code == 500
    assert client.get("/get").text == "bad"  # the failed request's change was not written


def test_poison_counting_can_be_turned_off(make_app: AppFactory) -> None:
    app = poisoned_app(make_app, SESSION_DILL_POISON_AFTER=None)
    client = app.test_client()
    assert client.get("/set/bad").status_code == 200
    assert [client.get("/use").status_code for _ in range(5)] == [500] * 5
    assert client.get("/get").text == "bad"
