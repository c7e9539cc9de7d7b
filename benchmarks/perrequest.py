"""Sections 2-4 and 7: the session's cost inside one request.

Sections 2-3: each measured request pushes a request context made from a prepared WSGI
environ (with the client's session cookie), then calls ``open_session``, uses the session
and calls ``save_session``, then pops the context. The same loop without the session work
is the baseline that is subtracted, so what remains is the session's own cost.

Section 7: whole requests of logged-in Flask-Login users through ``app.wsgi_app``; the
same app on a session kept in a dict is the baseline that is subtracted.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import flask_session
from cachelib.file import FileSystemCache
from flask import Flask, Request, Response, session
from flask.ctx import RequestContext
from flask.sessions import SecureCookieSession, SessionInterface, SessionMixin
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user
from werkzeug.test import EnvironBuilder

from flask_dill_session import Session
from flask_dill_session.interface import DillSessionInterface
from flask_dill_session.stores.base import Entry, Store

from .harness import Case, Samples, interleave

SECRET = "benchmark-secret"
#: Sessions a benchmark's requests use in turn, as a server with many users would see them
#: (one session hammered back to back is not what a store sees, see benchmarks/RESULTS.md).
SESSIONS = 64
Work = Callable[[Flask, SessionInterface, RequestContext], None]


def _views(app: Flask, *, permanent: bool = False) -> Flask:
    @app.route("/start_counter")
    def start_counter() -> str:
        session["x"] = 0
        session["started"] = datetime.now()
        if permanent:
            session.permanent = True  # like ours and Flask-Session: a cookie with an expiry
        return "counter started"

    @app.route("/health")
    def health() -> str:
        return "ok"

    return app


def dill_app(directory: Path, **config: Any) -> Flask:
    """Ours, on the filesystem store (the default backend)."""
    app = Flask("bench_dill")
    app.config.update(
        SECRET_KEY=SECRET, SESSION_TYPE="dill", SESSION_FILE_DIR=str(directory), **config
    )
    Session(app)
    return _views(app)


def cachelib_app(directory: Path) -> Flask:
    """Flask-Session 0.8 with cachelib's ``FileSystemCache``, as its documentation shows."""
    app = Flask("bench_cachelib")
    app.config.update(
        SECRET_KEY=SECRET,
        SESSION_TYPE="cachelib",
        SESSION_CACHELIB=FileSystemCache(cache_dir=str(directory), threshold=500),
    )
    flask_session.Session(app)
    return _views(app)


def cookie_app() -> Flask:
    """Flask's built-in signed-cookie session, made permanent like the others."""
    app = Flask("bench_cookie")
    app.config.update(SECRET_KEY=SECRET)
    return _views(app, permanent=True)


def bare_app() -> Flask:
    """No session in use: the reference for a request that never touches the session."""
    app = Flask("bench_bare")
    app.config.update(SECRET_KEY=SECRET)
    return _views(app)


def start_session(app: Flask) -> str:
    """Start a counter through the app, return the session cookie it set."""
    response = app.test_client().get("/start_counter")
    assert response.status_code == 200, response.status
    cookie = response.headers["Set-Cookie"]
    name = app.config["SESSION_COOKIE_NAME"]
    assert cookie.startswith(name + "="), cookie
    return cookie.split(";", 1)[0].split("=", 1)[1]


def environ(app: Flask, path: str, cookie: str | None) -> dict[str, Any]:
    headers = [("Cookie", f"{app.config['SESSION_COOKIE_NAME']}={cookie}")] if cookie else []
    return EnvironBuilder(path=path, headers=headers).get_environ()


# -- what a request does with its session ------------------------------------------------


def increment(app: Flask, interface: SessionInterface, ctx: RequestContext) -> None:
    opened = interface.open_session(app, ctx.request)
    assert opened is not None
    ctx._session = opened
    opened["x"] = opened["x"] + 1
    interface.save_session(app, opened, app.response_class())


def read(app: Flask, interface: SessionInterface, ctx: RequestContext) -> None:
    opened = interface.open_session(app, ctx.request)
    assert opened is not None
    ctx._session = opened
    if opened["x"] < 0:
        raise AssertionError("never")
    interface.save_session(app, opened, app.response_class())


def nothing(app: Flask, interface: SessionInterface, ctx: RequestContext) -> None:
    app.response_class()


def in_context(app: Flask, environs: list[dict[str, Any]], work: Work) -> Case:
    """Push a context per request (the session is opened by *work*, not by ``push``)."""
    interface = app.session_interface
    null = interface.make_null_session(app)
    count = len(environs)

    def run(n: int) -> float:
        clock = time.perf_counter
        started = clock()
        for index in range(n):
            ctx = RequestContext(app, environs[index % count].copy(), session=null)
            ctx.push()
            try:
                work(app, interface, ctx)
            finally:
                ctx.pop()
        return clock() - started

    return run


def through_wsgi(app: Flask, env: dict[str, Any]) -> Case:
    """Whole requests through ``app.wsgi_app``, view and all."""

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        assert status.startswith("200"), status

    def run(n: int) -> float:
        clock = time.perf_counter
        started = clock()
        for _ in range(n):
            for _chunk in app.wsgi_app(env.copy(), start_response):
                pass
        return clock() - started

    return run


# -- the sections ------------------------------------------------------------------------


@dataclass
class Apps:
    ours: Flask
    cachelib: Flask
    cookie: Flask
    bare: Flask


def make_apps(directory: Path) -> Apps:
    return Apps(
        ours=dill_app(directory / "ours"),
        cachelib=cachelib_app(directory / "cachelib"),
        cookie=cookie_app(),
        bare=bare_app(),
    )


def measure_requests(
    apps: Apps, work: Work, *, rounds: int, batch: int, sessions: int = SESSIONS
) -> Samples:
    """Ours, Flask-Session+cachelib and the cookie session, each with its request context
    alone, interleaved; the requests use *sessions* sessions in turn."""
    cases = {}
    for name, app in (("ours", apps.ours), ("cachelib", apps.cachelib), ("cookie", apps.cookie)):
        environs = [environ(app, "/health", start_session(app)) for _ in range(sessions)]
        cases[name] = in_context(app, environs, work)
        cases[f"{name} context"] = in_context(app, environs, nothing)
    return interleave(cases, rounds=rounds, batch=batch)


def measure_untouched(apps: Apps, *, rounds: int, batch: int) -> Samples:
    """``/health`` through the whole app: ours with a session cookie vs the bare app."""
    ours_env = environ(apps.ours, "/health", start_session(apps.ours))
    bare_env = environ(apps.bare, "/health", None)
    return interleave(
        {"ours": through_wsgi(apps.ours, ours_env), "bare": through_wsgi(apps.bare, bare_env)},
        rounds=rounds,
        batch=batch,
    )


class _Counting:
    """Counts the store operations made while it is installed."""

    def __init__(self) -> None:
        self.calls = 0

    @contextmanager
    def installed(self, store: Store) -> Iterator[None]:
        originals = {name: getattr(store, name) for name in ("open", "new", "cleanup")}

        def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls += 1
                return method(*args, **kwargs)

            return counted

        for name, method in originals.items():
            setattr(store, name, wrap(method))
        try:
            yield
        finally:
            for name in originals:
                delattr(store, name)


def store_calls_untouched(apps: Apps, requests: int = 100) -> int:
    """How many store operations ``requests`` untouched requests made (should be 0)."""
    interface = apps.ours.session_interface
    assert isinstance(interface, DillSessionInterface)
    env = environ(apps.ours, "/health", start_session(apps.ours))
    counter = _Counting()
    with counter.installed(interface.store):
        through_wsgi(apps.ours, env)(requests)
    return counter.calls


# -- a Flask-Login app: a logged-in request that changes nothing -------------------------

#: The environ of every request of the login benchmark: Flask-Login's session protection
#: hashes the address and user agent, so the login and the measured requests share them.
CLIENT_ENVIRON = {"REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": "benchmark"}


class _User(UserMixin):  # type: ignore[misc]
    def __init__(self, name: str) -> None:
        self.id = name


class MemorySessionInterface(SessionInterface):
    """One user's session kept in a dict, for the baseline: Flask-Login's own work with a
    session that costs (nearly) nothing to open and save."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession:
        return SecureCookieSession(self.data.copy())

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if session.modified:
            self.data = dict(session)


def login_app(app: Flask, *, permanent: bool = False) -> Flask:
    """Flask-Login on *app*: ``/login/<name>`` logs in, ``/me`` needs a logged-in user."""
    manager = LoginManager(app)

    @manager.user_loader  # type: ignore[untyped-decorator]
    def load_user(name: str) -> _User:
        return _User(name)

    @app.route("/login/<name>")
    def login(name: str) -> str:
        login_user(_User(name))
        if permanent:
            session.permanent = True  # as ours and Flask-Session: a cookie with an expiry
        return "logged in"

    @app.route("/me")
    @login_required  # type: ignore[untyped-decorator]
    def me() -> str:
        return str(current_user.id)

    return app


@dataclass
class LoginApps:
    ours: Flask
    cachelib: Flask
    cookie: Flask
    memory: Flask


def make_login_apps(directory: Path) -> LoginApps:
    memory = Flask("bench_login_memory")
    memory.config.update(SECRET_KEY=SECRET)
    memory.session_interface = MemorySessionInterface()
    return LoginApps(
        ours=login_app(dill_app(directory / "login-ours")),
        cachelib=login_app(cachelib_app(directory / "login-cachelib")),
        cookie=login_app(cookie_app(), permanent=True),
        memory=login_app(memory),
    )


def logged_in(app: Flask, name: str) -> str | None:
    """Log *name* in through the app; the session cookie it set (``None``: no cookie)."""
    client = app.test_client()
    response = client.get(f"/login/{name}", environ_base=CLIENT_ENVIRON)
    assert response.status_code == 200, response.status
    cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"])
    return None if cookie is None else cookie.value


def login_environs(app: Flask, sessions: int) -> list[dict[str, Any]]:
    """``GET /me`` environs of *sessions* logged-in users (one, for the memory session)."""
    environs = []
    for index in range(sessions):
        cookie = logged_in(app, f"user{index}")
        headers = [("Cookie", f"{app.config['SESSION_COOKIE_NAME']}={cookie}")] if cookie else []
        builder = EnvironBuilder(path="/me", headers=headers, environ_base=CLIENT_ENVIRON)
        environs.append(builder.get_environ())
    return environs


def through_wsgi_in_turn(app: Flask, environs: list[dict[str, Any]]) -> Case:
    """Whole requests through ``app.wsgi_app``, the environs in turn; each must be a 200."""

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        assert status.startswith("200"), status

    count = len(environs)

    def run(n: int) -> float:
        clock = time.perf_counter
        started = clock()
        for index in range(n):
            for _chunk in app.wsgi_app(environs[index % count].copy(), start_response):
                pass
        return clock() - started

    return run


def measure_login(apps: LoginApps, *, rounds: int, batch: int, sessions: int = SESSIONS) -> Samples:
    """``GET /me`` of logged-in users, whole requests: ours, Flask-Session + cachelib, the
    cookie session, and the same app on the in-memory session (``memory``) to subtract."""
    cases = {
        "ours": through_wsgi_in_turn(apps.ours, login_environs(apps.ours, sessions)),
        "cachelib": through_wsgi_in_turn(apps.cachelib, login_environs(apps.cachelib, sessions)),
        "cookie": through_wsgi_in_turn(apps.cookie, login_environs(apps.cookie, sessions)),
        "memory": through_wsgi_in_turn(apps.memory, login_environs(apps.memory, 1)),
    }
    return interleave(cases, rounds=rounds, batch=batch)


def store_calls_login(apps: LoginApps, requests: int = 100) -> Counter[str]:
    """The store operations ``requests`` logged-in ``GET /me`` requests made in ours."""
    interface = apps.ours.session_interface
    assert isinstance(interface, DillSessionInterface)
    environs = login_environs(apps.ours, 4)
    store, calls = interface.store, Counter[str]()
    opened = store.open

    def counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return method(*args, **kwargs)

        return call

    def open_counted(key: str, *, lock: bool) -> Entry:
        entry = opened(key, lock=lock)
        for name in ("write", "touch", "delete", "quarantine"):
            setattr(entry, name, counted(name, getattr(entry, name)))
        calls["open"] += 1
        return entry

    store.open = open_counted  # type: ignore[method-assign]
    try:
        through_wsgi_in_turn(apps.ours, environs)(requests)
    finally:
        del store.open
    return calls
