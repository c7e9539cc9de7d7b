"""Flask-Login and Flask-WTF, used for real, on this backend.

The journeys (login, remember-me, strong session protection, logout, CSRF-protected form
posts) go through real HTTP to two gunicorn processes sharing one filesystem store, the
browser switching between them. The store's work per request is counted in process, and
parallel requests of one user go through Werkzeug's threaded server in this process so
that the views can record when they ran.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, render_template_string, request
from flask.globals import request_ctx
from flask_login import current_user, login_required
from flask_wtf import CSRFProtect, FlaskForm

from flask_dill_session import Session, readonly

from .apps.login_app import create_app
from .support import ROOT, Client, Server, count_store_calls, gunicorn, serve_in_thread

SECRET = "extensions-secret"
APP = "tests.apps.login_app:create_app()"


def csrf_token(page: str) -> str:
    """The CSRF token of the form in *page*."""
    found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


def env_for(session_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "FLASK_SECRET_KEY": SECRET,
        "FLASK_SESSION_FILE_DIR": str(session_dir),
        "PYTHONPATH": str(ROOT),
        **extra,
    }


@contextmanager
def two_servers(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[Server, Server]]:
    """Two gunicorn processes (one worker of 4 threads each) on one store."""
    servers: list[Server] = []
    try:
        for _ in range(2):
            servers.append(gunicorn(tmp_path, APP, env, workers=1, threads=4))
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def log_in(browser: Client, server: Server, *, remember: bool = True) -> None:
    """Fetch the login form from *server*, then post it there."""
    browser.base_url = server.url
    status, page, _ = browser.get("/login")
    assert status == 200
    form = {"username": "alice", "csrf_token": csrf_token(page)}
    if remember:
        form["remember"] = "y"
    assert browser.post("/login", form)[:2] == (200, "welcome alice")


# -- journeys over HTTP, across two server processes ----------------------------------------


@pytest.mark.slow
def test_login_forms_remember_me_and_logout_across_two_servers(
    tmp_path: Path, session_dir: Path
) -> None:
    with two_servers(tmp_path, env_for(session_dir)) as (one, two):
        browser = Client(one.url, {"User-Agent": "browser A"})
        status, page, _ = browser.get("/login")
        token = csrf_token(page)
        anonymous = browser.cookie()
        assert status == 200 and anonymous is not None  # the CSRF token is in the session

        browser.base_url = two.url  # the form from one server, posted to the other
        assert browser.post("/login", {"username": "alice"})[0] == 400
        assert browser.post("/login", {"username": "alice", "csrf_token": "forged"})[0] == 400
        form = {"username": "alice", "remember": "y", "csrf_token": token}
        assert browser.post("/login", form)[:2] == (200, "welcome alice")
        sid = browser.cookie()
        assert sid not in (None, anonymous)  # a new id at login
        assert browser.cookie("remember_token") is not None

        browser.base_url = one.url
        status, body, _ = browser.get("/me")
        assert status == 200 and body.startswith("alice fresh=True")
        pids = {body.split()[-1]}
        token = csrf_token(browser.get("/note")[1])
        browser.base_url = two.url
        assert browser.post("/note", {"text": "hello"})[0] == 400  # no token: refused
        assert browser.post("/note", {"text": "hello", "csrf_token": token})[:2] == (
            200,
            "noted",
        )
        browser.base_url = one.url
        assert browser.get("/notes")[:2] == (200, "hello")

        browser.forget("session")  # the browser was closed: the remember cookie is left
        browser.base_url = two.url
        status, body, _ = browser.get("/me")
        assert status == 200 and body.startswith("alice fresh=False")  # remembered
        pids.add(body.split()[-1])
        assert len(pids) == 2  # both processes served this user
        assert browser.cookie() not in (None, sid)  # in a new session

        token = csrf_token(browser.get("/note")[1])
        restored = browser.cookie()
        browser.base_url = one.url
        assert browser.post("/logout", {"csrf_token": token})[:2] == (200, "bye")
        assert browser.cookie() is None and browser.cookie("remember_token") is None
        browser.base_url = two.url
        assert browser.get("/me")[0] == 401

        thief = Client(two.url, {"User-Agent": "browser A", "Cookie": f"session={restored}"})
        assert thief.get("/me")[0] == 401  # the id of the logged-out session is dead


@pytest.mark.slow
@pytest.mark.parametrize("permanent", [False, True], ids=["transient", "permanent"])
def test_strong_session_protection_across_two_servers(
    tmp_path: Path, session_dir: Path, permanent: bool
) -> None:
    """With ``SESSION_PROTECTION = "strong"``, Flask-Login clears a session used from
    elsewhere, and the remember cookie, only if the session is not permanent; a permanent
    one is just marked non-fresh. Hence ``SESSION_PERMANENT = False`` with strong."""
    env = env_for(
        session_dir,
        FLASK_SESSION_PROTECTION="strong",
        FLASK_SESSION_PERMANENT="true" if permanent else "false",
    )
    with two_servers(tmp_path, env) as (one, two):
        browser = Client(one.url, {"User-Agent": "browser A"})
        log_in(browser, one)
        browser.base_url = two.url
        assert browser.get("/me")[1].startswith("alice fresh=True")

        browser.headers["User-Agent"] = "somewhere else"  # the same cookies, elsewhere
        status, body, _ = browser.get("/me")
        if permanent:
            assert status == 200 and body.startswith("alice fresh=False")
            assert browser.cookie("remember_token") is not None
        else:
            assert status == 401
            assert browser.cookie("remember_token") is None  # cleared as well
            browser.headers["User-Agent"] = "browser A"
            browser.base_url = one.url
            assert browser.get("/me")[0] == 401  # the session is logged out for good


# -- what the store does, counted -----------------------------------------------------------


@pytest.mark.parametrize("refresh", [False, True], ids=["plain", "remember-refresh"])
def test_a_logged_in_user_writes_once_at_login_and_never_when_nothing_changes(
    session_dir: Path, refresh: bool
) -> None:
    """With ``REMEMBER_COOKIE_REFRESH_EACH_REQUEST`` Flask-Login sets and pops
    ``_remember`` on every request: modified, same bytes, so a touch."""
    app = create_app(
        {
            "SECRET_KEY": SECRET,
            "SESSION_FILE_DIR": str(session_dir),
            "REMEMBER_COOKIE_REFRESH_EACH_REQUEST": refresh,
        }
    )
    counting = count_store_calls(app)
    client = app.test_client()
    token = csrf_token(client.get("/login").text)
    assert counting.ops() == Counter(write=1)  # the CSRF token: a new session
    counting.calls.clear()

    form = {"username": "alice", "remember": "y", "csrf_token": token}
    assert client.post("/login", data=form).text == "welcome alice"
    # The new id's one write, and the old id retired (written read-only for the rotation
    # grace, in place of a delete: parallel requests still carrying it are served).
    assert counting.ops() == Counter(open=1, write=2)
    counting.calls.clear()

    requests = 0
    for _ in range(5):
        assert client.get("/me").text.startswith("alice fresh=True")
        assert client.get("/health").text == "ok"  # Flask-Login's after_request reads it
        token = csrf_token(client.get("/note").text)
        search = client.post("/search", data={"q": "x", "csrf_token": token})
        assert search.text == "results for x"
        requests += 4
    assert counting.ops() == Counter(open=requests, touch=requests)

    with client:
        client.get("/me")
        opened = request_ctx._session
        assert opened is not None and opened.modified is refresh  # Flask-Login's own test


def test_flask_wtf_with_the_secret_defined_on_a_flask_subclass(session_dir: Path) -> None:
    """Flask-WTF's own test app defines ``secret_key`` on its Flask subclass."""

    class SecretFlask(Flask):
        secret_key = "defined-on-the-class"

    app = SecretFlask(__name__)
    app.config.update(SESSION_TYPE="dill", SESSION_FILE_DIR=str(session_dir))
    Session(app)
    CSRFProtect(app)

    @app.route("/form", methods=["GET", "POST"])
    def form() -> Any:
        if request.method == "POST":
            return "accepted"
        return render_template_string("{{ form.csrf_token }}", form=FlaskForm())

    client = app.test_client()
    token = csrf_token(client.get("/form").text)
    assert client.post("/form").status_code == 400
    assert client.post("/form", data={"csrf_token": token}).text == "accepted"


# -- parallel requests of one user ------------------------------------------------------------

PARALLEL = 8
PAUSE = 0.2  # seconds the view takes


@pytest.mark.parametrize(
    ("view", "locking", "overlap"),
    [("readonly", True, True), ("plain", True, False), ("plain", "writes", True)],
    ids=["readonly-view", "plain-view", "plain-view-writes-mode"],
)
def test_parallel_requests_of_one_logged_in_user(
    session_dir: Path, view: str, locking: Any, overlap: bool
) -> None:
    """Eight requests of one user to a view that reads the session and takes 200 ms.
    All eight are in flight before any uses the session (a barrier in a hook that does not
    touch it). Where they may overlap, a second barrier in the view makes all eight be
    inside at once, and nothing there waits for a lock; where they may not, the session's
    lock is held from the first use to the save, so the views' intervals cannot overlap."""
    app = create_app(
        {
            "SECRET_KEY": SECRET,
            "SESSION_FILE_DIR": str(session_dir),
            "SESSION_DILL_LOCKING": locking,
            "SESSION_DILL_LOCK_TIMEOUT": 60,
        }
    )
    arrived = threading.Barrier(PARALLEL, timeout=60)
    inside = threading.Barrier(PARALLEL, timeout=60)
    intervals: list[tuple[float, float]] = []

    @app.before_request
    def all_in_flight() -> None:
        if request.path == "/slow":
            arrived.wait()

    def slow() -> str:
        user = str(current_user.id)  # the first use of the session (and of its lock)
        started = time.monotonic()
        if overlap:
            inside.wait()
        time.sleep(PAUSE)
        intervals.append((started, time.monotonic()))
        return user

    if view == "readonly":
        slow = readonly(slow)
    app.add_url_rule("/slow", view_func=login_required(slow))

    with serve_in_thread(app) as url:
        browser = Client(url)
        token = csrf_token(browser.get("/login")[1])
        assert browser.post("/login", {"username": "alice", "csrf_token": token})[0] == 200
        began = time.monotonic()
        with ThreadPoolExecutor(PARALLEL) as pool:
            answers = list(pool.map(lambda _: browser.get("/slow")[:2], range(PARALLEL)))
        elapsed = time.monotonic() - began

    assert answers == [(200, "alice")] * PARALLEL
    intervals.sort()
    if overlap:
        assert max(start for start, _ in intervals) < min(end for _, end in intervals)
        assert elapsed < PARALLEL * PAUSE
    else:
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert end <= start  # one at a time
        assert intervals[-1][1] - intervals[0][0] >= PARALLEL * PAUSE
