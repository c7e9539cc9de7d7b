"""What a request writes, and when it sets the cookie: against Flask's cookie session.

The store is written only when the serialized session changed (or it is new, or must be
re-sealed); ``modified`` with the same bytes is a touch. The cookie is set when Flask's
own session would set it: when ``modified``, or for a permanent session with
``SESSION_REFRESH_EACH_REQUEST``. Two deliberate differences: a request that never
uses the session does no store I/O, so it does not refresh the cookie either; and a change
below the top level (``session["cart"].append(x)``) is saved without ``modified``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, session
from werkzeug.test import TestResponse

from flask_dill_session import Session

from .support import CountingStore, count_store_calls

Use = Callable[[], object]


def assign(key: str, value: Any) -> Use:
    def use() -> object:
        session[key] = value
        return None

    return use


def set_then_pop() -> object:
    """What Flask-Login's after_request does with REMEMBER_COOKIE_REFRESH_EACH_REQUEST."""
    session["_remember"] = "set"
    return session.pop("_remember", None)


def keep_permanence() -> object:
    session.permanent = session.permanent
    return None


def flip_permanence() -> object:
    session.permanent = not session.permanent
    return None


#: name -> (what the request does, the store operations it makes in ours)
SCENARIOS: dict[str, tuple[Use, Counter[str]]] = {
    "untouched": (lambda: None, Counter()),
    "read": (lambda: session.get("a"), Counter(open=1, touch=1)),
    "assign the same value": (assign("a", 1), Counter(open=1, touch=1)),
    "pop an absent key": (lambda: session.pop("_remember", None), Counter(open=1, touch=1)),
    "set then pop a key": (set_then_pop, Counter(open=1, touch=1)),
    "permanent set to its value": (keep_permanence, Counter(open=1, touch=1)),
    "nested change": (lambda: session["b"].append(3), Counter(open=1, write=1)),
    "assign another value": (assign("a", 2), Counter(open=1, write=1)),
    "permanent flipped": (flip_permanence, Counter(open=1, write=1)),
    "clear": (lambda: session.clear(), Counter(open=1, delete=1)),
}


def build(app: Flask, permanent: bool) -> Flask:
    @app.route("/start")
    def start() -> str:
        session.update({"a": 1, "b": [2]})
        session.permanent = permanent
        return "started"

    @app.route("/use/<name>")
    def use(name: str) -> str:
        SCENARIOS[name][0]()
        return "used"

    @app.route("/show")
    def show() -> dict[str, Any]:
        return {"data": dict(session), "permanent": session.permanent}

    return app


def cookie_app(permanent: bool, refresh: bool) -> Flask:
    app = Flask("cookie")
    app.config.update(SECRET_KEY="writes-secret", SESSION_REFRESH_EACH_REQUEST=refresh)
    return build(app, permanent)


def dill_app(directory: Path, permanent: bool, refresh: bool) -> Flask:
    app = Flask("dill")
    app.config.update(
        SECRET_KEY="writes-secret",
        SESSION_TYPE="dill",
        SESSION_FILE_DIR=str(directory),
        SESSION_REFRESH_EACH_REQUEST=refresh,
        SESSION_PERMANENT=False,  # as Flask's: a session is permanent once the app says so
    )
    Session(app)
    return build(app, permanent)


def cookie_answer(response: TestResponse) -> tuple[str, bool]:
    """What the response does to the session cookie, and whether it sent ``Vary: Cookie``."""
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.getlist("Set-Cookie"):
        jar.load(header)
    morsel = jar.get("session")
    vary = "Cookie" in response.vary
    if morsel is None:
        return "kept", vary
    if morsel.value == "":
        return "deleted", vary
    return ("set, expires" if morsel["expires"] else "set, browser session"), vary


@pytest.mark.parametrize("name", list(SCENARIOS))
@pytest.mark.parametrize("refresh", [True, False], ids=["refresh", "no-refresh"])
@pytest.mark.parametrize("permanent", [True, False], ids=["permanent", "transient"])
def test_writes_and_cookies_follow_flask(
    tmp_path: Path, name: str, refresh: bool, permanent: bool
) -> None:
    answers = {}
    shown = {}
    counting: CountingStore | None = None
    for kind, app in (
        ("cookie", cookie_app(permanent, refresh)),
        ("dill", dill_app(tmp_path, permanent, refresh)),
    ):
        client = app.test_client()
        assert client.get("/start").status_code == 200
        if kind == "dill":
            counting = count_store_calls(app)
        answers[kind] = cookie_answer(client.get(f"/use/{name}"))
        if kind == "dill":
            assert counting is not None
            assert counting.ops() == SCENARIOS[name][1]
            counting.calls.clear()
        shown[kind] = client.get("/show").get_json()
    shown["cookie"]["data"].pop("_permanent", None)  # Flask keeps the flag in the data
    if name == "nested change":
        # Ours finds changes below the top level when saving; Flask's keeps them only if
        # it happens to send the cookie (here: a permanent session refreshed each request).
        assert shown["dill"]["data"] == {"a": 1, "b": [2, 3]}
        shown["dill"]["data"] = shown["cookie"]["data"]
    assert shown["dill"] == shown["cookie"]
    if name == "untouched" and permanent and refresh:
        # Flask's cookie session refreshes the cookie of a permanent session on every
        # request; ours does no I/O for a request that never uses the session, so no cookie.
        assert answers["cookie"] == ("set, expires", True)
        assert answers["dill"] == ("kept", False)
    else:
        assert answers["dill"] == answers["cookie"]


def test_a_modified_session_with_the_same_bytes_is_touched_and_its_cookie_set(
    tmp_path: Path,
) -> None:
    """Flask-Login with REMEMBER_COOKIE_REFRESH_EACH_REQUEST on every request: ``modified``
    and the bytes unchanged. One touch, no write, and the cookie sent as Flask would."""
    app = dill_app(tmp_path, permanent=False, refresh=False)
    client = app.test_client()
    client.get("/start")
    counting = count_store_calls(app)
    for _ in range(3):
        assert cookie_answer(client.get("/use/set then pop a key")) == (
            "set, browser session",
            True,
        )
    assert counting.ops() == Counter(open=3, touch=3)
