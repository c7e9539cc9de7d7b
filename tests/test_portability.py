"""Platforms without ``fcntl`` (Windows): the package imports, the Redis and cachelib
backends serve sessions, and the filesystem backend is refused at ``Session(app)``.

Such a platform is made by hiding ``fcntl`` (``sys.modules["fcntl"] = None``) in a fresh
interpreter before anything is imported, so an import of it anywhere on the way fails as
it would there. ``-W error`` makes any warning on the way fail the run too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_dill_session import ConfigError, Session
from flask_dill_session.extension import platform_backends

from .conftest import AppFactory
from .support import ROOT, RedisServer

WITHOUT_FCNTL = """
import sys
sys.modules["fcntl"] = None  # as on Windows: any import of fcntl fails from here on

import datetime
import decimal
import json

from flask import Flask, session

import flask_dill_session
import flask_dill_session.cli  # loaded by every `flask` command, through its entry point
from flask_dill_session import ConfigError, Session


def make_app(**config):
    app = Flask("portable")
    app.config.update(TESTING=True, SECRET_KEY="portable-secret", SESSION_TYPE="dill")
    app.config.update(config)
    Session(app)

    @app.route("/add/<item>")
    def add(item):
        cart = session.setdefault("cart", {"items": set(), "since": datetime.date(2024, 5, 1)})
        cart["items"].add(item)
        session["total"] = session.get("total", decimal.Decimal("0")) + decimal.Decimal("1.25")
        session["greet"] = lambda name: "hello " + name  # dill's path, not pickle's
        return str(len(cart["items"]))

    @app.route("/cart")
    def cart():
        cart = session["cart"]
        return {
            "items": sorted(cart["items"]),
            "since": cart["since"].isoformat(),
            "total": str(session["total"]),
            "greet": session["greet"]("you"),
            "sid": session.sid,
        }

    return app


def serve(app):
    client = app.test_client()
    counts = [client.get(path).text for path in ("/add/apple", "/add/pear", "/add/apple")]
    return {"counts": counts, "cart": client.get("/cart").get_json()}


def refusal(**config):
    try:
        make_app(**config)
    except ConfigError as exc:
        return str(exc)
    return None


backend = sys.argv[1]
if backend == "cachelib":
    import cachelib

    cache = cachelib.SimpleCache()
    result = serve(make_app(SESSION_DILL_BACKEND="cachelib", SESSION_CACHELIB=cache))
    result["stored"] = cache.has("session:" + result["cart"]["sid"])
else:
    import redis

    client = redis.Redis(port=int(sys.argv[2]), socket_timeout=5, socket_connect_timeout=5)
    app = make_app(SESSION_DILL_BACKEND="redis", SESSION_REDIS=client)
    result = serve(app)
    name = app.session_interface.store.session_key("session:" + result["cart"]["sid"])
    result["stored"] = bool(client.exists(name))
    client.close()
result["filesystem"] = refusal(SESSION_DILL_BACKEND="filesystem")
result["default"] = refusal()
result["loaded"] = sorted(  # fcntl itself stays None: hidden, never imported
    name
    for name, module in sys.modules.items()
    if module is not None and (name == "fcntl" or name.endswith(".filesystem"))
)
print(json.dumps(result))
"""


def without_fcntl(*args: str) -> dict[str, Any]:
    """Run :data:`WITHOUT_FCNTL` in a fresh interpreter with warnings as errors."""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", WITHOUT_FCNTL, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def refused_here(message: str | None) -> None:
    """*message* is the filesystem backend's refusal: it names the platform and the
    backends that work on it."""
    assert message is not None
    assert message.startswith('SESSION_DILL_BACKEND = "filesystem" does not work')
    assert f"this platform ({sys.platform})" in message
    assert "fcntl" in message
    assert message.endswith('backends that work here: "redis", "cachelib"')


@pytest.mark.parametrize("backend", ["cachelib", pytest.param("redis", marks=pytest.mark.redis)])
def test_without_fcntl_the_package_serves_sessions_and_refuses_the_filesystem_backend(
    backend: str, request: pytest.FixtureRequest
) -> None:
    args = [backend]
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        args.append(str(server.port))
    answer = without_fcntl(*args)
    assert answer["counts"] == ["1", "2", "2"]
    cart = answer["cart"]
    assert (cart["items"], cart["since"], cart["total"]) == (
        ["apple", "pear"],
        "2024-05-01",
        "3.75",
    )
    assert cart["greet"] == "hello you"
    assert answer["stored"] is True
    refused_here(answer["filesystem"])
    assert answer["default"] == answer["filesystem"]  # the default backend is filesystem
    assert answer["loaded"] == []  # neither fcntl nor the filesystem store was imported


def test_the_refusal_is_raised_by_session_in_this_process(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fcntl", None)
    with pytest.raises(ConfigError) as caught:
        make_app()
    refused_here(str(caught.value))
    assert platform_backends() == ["redis", "cachelib"]


def test_every_backend_runs_on_this_platform(tmp_path: Path) -> None:
    assert platform_backends() == ["filesystem", "redis", "cachelib"]
    app = Flask(__name__)
    app.config.update(SECRET_KEY="s", SESSION_TYPE="dill", SESSION_FILE_DIR=str(tmp_path))
    assert Session.create_interface(app).store.__class__.__name__ == "FileSystemStore"
