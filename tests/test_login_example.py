"""``examples/login.py`` through real HTTP: login, cart, devices, log out others, logout;
and a type check of it, with every documented helper, under ``mypy --strict``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support import EXAMPLES, ROOT, Client, Server, example_env, serve_example


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = serve_example(tmp_path, example_env(tmp_path / "sessions"), "login.py")
    yield running
    running.stop()


def call(client: Client, method: str, path: str) -> tuple[int, Any]:
    status, body, _ = client.post(path) if method == "POST" else client.get(path)
    return status, json.loads(body) if body.startswith("{") else body


def test_login_cart_devices_and_logouts(server: Server) -> None:
    phone, laptop, stranger = Client(server.url), Client(server.url), Client(server.url)
    assert call(phone, "POST", "/cart/add/pear") == (200, {"items": 1})
    before = phone.cookie()
    assert call(phone, "POST", "/login?user=ann&password=ann-secret")[0] == 200
    assert phone.cookie() not in (None, before), "a login gives a new session id"
    assert call(phone, "GET", "/") == (200, {"user": "ann", "cart": ["pear"]})
    assert call(laptop, "POST", "/login?user=ann&password=wrong")[0] == 403
    assert call(laptop, "POST", "/login?user=ann&password=ann-secret")[0] == 200
    assert call(stranger, "POST", "/login?user=ben&password=ben-secret")[0] == 200
    assert call(phone, "GET", "/devices") == (200, {"sessions": 2})

    assert call(phone, "POST", "/logout-others") == (200, {"logged_out": 1})
    assert call(laptop, "GET", "/") == (200, {"user": None, "cart": []})
    assert call(stranger, "GET", "/") == (200, {"user": "ben", "cart": []}), "not ann's"
    assert call(phone, "GET", "/devices") == (200, {"sessions": 1})

    assert call(phone, "POST", "/logout") == (200, {"logged_out": True})
    assert phone.cookie() is None, "the cookie is cleared"
    assert call(phone, "GET", "/") == (200, {"user": None, "cart": []})


SAMPLE = """
from flask import Flask
from flask_dill_session import (
    DillSession, Session, current_session, destroy, regenerate, revoke_other_sessions,
)

app = Flask(__name__)
Session(app)


@app.get("/")
def view() -> str:
    current: DillSession = current_session()
    sid: str = current.sid
    regenerate()
    others: int = revoke_other_sessions()
    destroy()
    return f"{sid} {others} {current.new} {current.permanent}"
"""


def test_the_examples_and_the_helpers_type_check_strictly(tmp_path: Path) -> None:
    sample = tmp_path / "sample_app.py"
    sample.write_text(SAMPLE)
    files = [str(sample), str(EXAMPLES / "login.py"), str(EXAMPLES / "counter.py")]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
