"""Every value kind survives a request cycle and a change of process; bad values change nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, session

from flask_dill_session import DillSessionInterface, SessionSerializationError
from flask_dill_session.stores.filesystem import FileSystemStore

from .apps.roundtrip_app import KINDS, matches, values
from .support import ROOT

AppFactory = Callable[..., Flask]


# -- one process, two requests -----------------------------------------------------------


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    app = make_app()

    @app.route("/store/<kind>")
    def store(kind: str) -> str:
        session[kind] = values()[kind]
        return "stored"

    @app.route("/check/<kind>")
    def check(kind: str) -> str:
        return "same" if kind in session and matches(kind, session[kind]) else "different"

    @app.route("/check-all")
    def check_all() -> list[str]:
        return [kind for kind in KINDS if kind not in session or not matches(kind, session[kind])]

    @app.route("/store-all")
    def store_all() -> str:
        session.update(values())
        return "stored"

    return app


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_survives_a_request_cycle(app: Flask, kind: str) -> None:
    client = app.test_client()
    assert client.get(f"/store/{kind}").text == "stored"
    assert client.get(f"/check/{kind}").text == "same"
    assert client.get(f"/check/{kind}").text == "same"  # and a request that only read it


def test_all_kinds_together_survive_a_request_cycle(app: Flask) -> None:
    client = app.test_client()
    client.get("/store-all")
    assert client.get("/check-all").get_json() == []


# -- two processes -----------------------------------------------------------------------

# ``-m``: the app's classes and functions are defined in ``__main__`` (dill stores them by
# value); imported: they live in an importable module (C pickle stores instances by name).
_RUNS = {
    "main": [sys.executable, "-m", "tests.apps.roundtrip_app"],
    "imported": [sys.executable, "-c", "from tests.apps.roundtrip_app import main; main()"],
}


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("run", sorted(_RUNS))
def test_every_kind_survives_a_change_of_process(session_dir: Path, run: str) -> None:
    sid = _run([*_RUNS[run], "write", str(session_dir)])
    assert len(list(session_dir.rglob("*/*"))) == 1
    results = json.loads(_run([*_RUNS[run], "check", str(session_dir), sid]))
    assert sorted(results) == sorted(KINDS)
    assert [kind for kind, ok in results.items() if not ok] == []


def test_a_process_that_never_stored_finds_nothing(session_dir: Path) -> None:
    _run([*_RUNS["main"], "write", str(session_dir)])
    results = json.loads(_run([*_RUNS["main"], "check", str(session_dir), "x" * 43]))
    assert not any(results.values())


# -- values that cannot be stored --------------------------------------------------------


class Cart:
    def __init__(self, items: list[Any]) -> None:
        self.items = items


def _generator() -> Iterator[int]:
    yield 1


_BAD: dict[str, tuple[Callable[[], Any], str]] = {
    "generator": (_generator, "session['bad']: generator"),
    "lock": (threading.Lock, "session['bad']: lock"),
    "nested": (lambda: Cart(["pen", "cup", _generator()]), "session['bad'].items[2]: generator"),
    "in-a-list": (lambda: [1, {"lock": threading.RLock()}], "session['bad'][1]['lock']: RLock"),
}


@pytest.mark.parametrize("case", sorted(_BAD))
def test_an_unserializable_value_leaves_the_stored_session_unchanged(
    make_app: AppFactory, case: str
) -> None:
    make_bad, message = _BAD[case]
    app = make_app(SESSION_DILL_LOCK_TIMEOUT=2)

    @app.route("/good")
    def good() -> str:
        session["count"] = 1
        session["started"] = values()["naive_datetime"]
        return "ok"

    @app.route("/bad")
    def bad() -> str:
        session["count"] += 1
        session["bad"] = make_bad()
        return "stored?"

    @app.route("/read")
    def read() -> dict[str, Any]:
        return {"keys": sorted(session), "count": session.get("count")}

    client = app.test_client()
    client.get("/good")
    cookie = client.get_cookie("session")
    assert cookie is not None
    interface = app.session_interface
    assert isinstance(interface, DillSessionInterface)
    assert isinstance(interface.store, FileSystemStore)
    path = Path(interface.store.path(interface.store_key(cookie.value)))
    before = path.read_bytes()

    with pytest.raises(SessionSerializationError) as info:
        client.get("/bad")
    assert message in str(info.value)

    assert path.read_bytes() == before  # not a byte written
    response = client.get("/read")  # and the lock was released
    assert response.status_code == 200
    assert response.get_json() == {"keys": ["count", "started"], "count": 1}


def test_an_unserializable_value_is_a_500_outside_testing(make_app: AppFactory) -> None:
    app = make_app(TESTING=False)

    @app.route("/good")
    def good() -> str:
        session["count"] = 1
        return "ok"

    @app.route("/bad")
    def bad() -> str:
        session["count"] = 2
        session["gen"] = _generator()
        return "stored?"

    @app.route("/read")
    def read() -> str:
        return f"{sorted(session)} {session.get('count')}"

    client = app.test_client()
    client.get("/good")
    response = client.get("/bad")
    assert response.status_code == 500
    assert client.get("/read").text == "['count'] 1"
