"""The counter example, through the Flask test client and through real server processes."""

from __future__ import annotations

import importlib.util
import re
import sys
from datetime import datetime
from pathlib import Path
from types import ModuleType

import pytest
from flask import Flask

from .support import EXAMPLES, Client, example_env, serve_example

COUNT = re.compile(r"(\d+)-(.+)")


def count_of(body: str) -> int:
    """The counter in ``/count``'s answer, checking the rest is the current time."""
    match = COUNT.fullmatch(body)
    assert match is not None, body
    datetime.fromisoformat(match.group(2))
    return int(match.group(1))


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch, session_dir: Path) -> ModuleType:
    """``examples/counter.py`` imported with its configuration in ``FLASK_*`` variables."""
    for name, value in example_env(session_dir).items():
        if name.startswith("FLASK_"):
            monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("counter_example", EXAMPLES / "counter.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def app(counter: ModuleType) -> Flask:
    app = counter.create_app()
    assert isinstance(app, Flask)
    return app


def test_counter_through_the_test_client(app: Flask, session_dir: Path) -> None:
    client = app.test_client()
    assert client.get("/start_counter").text == "counter started"
    assert [count_of(client.get("/count").text) for _ in range(3)] == [1, 2, 3]
    with client.session_transaction() as stored:
        assert type(stored["started"]) is datetime
        assert stored["x"] == 3
    assert client.get("/start_counter").text == "counter started"
    assert count_of(client.get("/count").text) == 1
    assert len([p for p in session_dir.rglob("*") if p.is_file()]) == 1


def test_counters_are_per_user(app: Flask) -> None:
    alice, bob = app.test_client(), app.test_client()
    alice.get("/start_counter")
    bob.get("/start_counter")
    for _ in range(3):
        alice.get("/count")
    assert count_of(bob.get("/count").text) == 1
    assert count_of(alice.get("/count").text) == 4


def test_cart_and_closure_through_the_test_client(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/cart").text == " = 0.00"
    assert client.get("/cart/add/apple").text == "1 items"
    assert client.get("/cart/add/pear").text == "2 items"  # changed in place, still saved
    # apple: 5 * 1.2, pear: 4 * 1.2, priced by the closure kept in the session
    assert client.get("/cart").text == "apple,pear = 10.80"


def test_health_does_not_touch_the_session(app: Flask, session_dir: Path) -> None:
    response = app.test_client().get("/health")
    assert response.text == "ok"
    assert "Set-Cookie" not in response.headers
    assert not [p for p in session_dir.rglob("*") if p.is_file()]


@pytest.mark.slow
def test_counter_over_http_survives_a_server_restart(tmp_path: Path, session_dir: Path) -> None:
    env = example_env(session_dir)
    server = serve_example(tmp_path, env)
    try:
        client = Client(server.url)
        status, body, headers = client.get("/start_counter")
        assert (status, body) == (200, "counter started")
        assert "Cookie" in headers.get("Vary", "")
        assert [count_of(client.get("/count")[1]) for _ in range(3)] == [1, 2, 3]
        first_visit = Client(server.url)  # /count before /start_counter: counts from 0
        assert [count_of(first_visit.get("/count")[1]) for _ in range(2)] == [1, 2]
        assert first_visit.get("/start_counter")[0] == 200
        assert count_of(first_visit.get("/count")[1]) == 1
        assert client.get("/cart/add/apple")[1] == "1 items"
        assert client.get("/cart/add/pear")[1] == "2 items"
        status, body, headers = Client(server.url).get("/health")
        assert (status, body) == (200, "ok") and "Set-Cookie" not in headers
        cookie = client.cookie()
        assert cookie is not None
    finally:
        server.stop()

    second = serve_example(tmp_path, env)  # a new process on the same store
    try:
        client.base_url = second.url
        assert count_of(client.get("/count")[1]) == 4
        assert client.cookie() == cookie
        assert client.get("/cart")[1] == "apple,pear = 10.80"
        stranger = Client(second.url)
        assert count_of(stranger.get("/count")[1]) == 1  # a counter of its own, from 0
    finally:
        second.stop()
