"""Edge cases of the session lifecycle: late reads, failing storage, cookie refresh."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask, session

from flask_dill_session import DillSessionInterface, serializer
from flask_dill_session.loader import Loader
from flask_dill_session.stores.filesystem import FileSystemStore, frame, last_record

from .conftest import AppFactory
from .support import ROOT
from .test_interface import add_routes, session_cookie


def interface(app: Flask) -> DillSessionInterface:
    value = app.session_interface
    assert isinstance(value, DillSessionInterface)
    return value


def test_a_teardown_that_reads_the_session_leaves_no_lock(make_app: AppFactory) -> None:
    app = make_app(SESSION_DILL_LOCK_TIMEOUT=0.3)
    seen: list[object] = []

    @app.teardown_request
    def read_late(exc: BaseException | None) -> None:  # runs after our own teardown
        seen.append(session.get("user"))

    add_routes(app)
    client = app.test_client()
    client.get("/set/user/alice")
    assert client.get("/health-check-that-404s").status_code == 404  # no session use
    assert client.get("/set/user/bob").status_code == 200  # not locked out
    assert client.get("/get/user").text == "bob"
    assert seen[-1] == "bob"


def test_an_unusable_blob_that_cannot_be_quarantined_is_deleted(
    make_app: AppFactory, session_dir: Path
) -> None:
    app = add_routes(make_app())
    client = app.test_client()
    client.get("/set/user/alice")
    sid = client.get_cookie("session")
    assert sid is not None
    store = interface(app).store
    assert isinstance(store, FileSystemStore)
    path = Path(store.path(interface(app).store_key(sid.value)))
    blob, deadline = last_record(path.read_bytes())
    assert blob is not None
    path.write_bytes(frame(blob[:-1] + bytes([blob[-1] ^ 1]), deadline))  # intact, forged
    Path(store.quarantine_dir).write_text("not a directory")  # quarantine will fail
    for _ in range(3):  # a fresh session each time, never a 500 or 503 loop
        assert client.get("/get/user").text == "None"
    assert not path.exists()


def test_a_short_write_is_an_error_and_keeps_the_old_session(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """A disk that fills up (here: RLIMIT_FSIZE) is a store failure (503); nothing
    half-written."""
    script = f"""
import resource, sys
sys.path.insert(0, {str(ROOT)!r})
from flask import Flask, session
from flask_dill_session import Session
app = Flask(__name__)
app.config.update(SECRET_KEY="s", SESSION_TYPE="dill", SESSION_FILE_DIR={str(tmp_path)!r})
Session(app)
@app.route("/set/<int:n>")
def put(n):
    session["blob"] = "x" * n
    return "ok"
@app.route("/len")
def length():
    return str(len(session.get("blob", "")))
client = app.test_client()
assert client.get("/set/100").status_code == 200
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
print(client.get("/set/20000").status_code, client.get("/len").text)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    status, length = result.stdout.split()
    assert status == "503"
    assert length == "100"
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_a_written_session_resends_its_cookie_without_refresh(make_app: AppFactory) -> None:
    app = add_routes(make_app(SESSION_REFRESH_EACH_REQUEST=False))
    client = app.test_client()
    session_cookie(client.get("/set/user/alice"))
    assert "Set-Cookie" not in client.get("/get/user").headers  # read: nothing to refresh
    assert session_cookie(client.get("/set/user/bob"))["expires"]  # write: expiry moves on


def test_making_a_stored_session_non_permanent_reaches_the_cookie(make_app: AppFactory) -> None:
    app = add_routes(make_app())
    client = app.test_client()
    assert session_cookie(client.get("/set/user/alice"))["expires"]
    morsel = session_cookie(client.get("/transient"))
    assert not morsel["expires"] and not morsel["max-age"]
    assert client.get("/permanent").text == "False"


WRITER = """
import sys
sys.path.insert(0, {root!r})
from flask import Flask, session
from flask_dill_session import Session
app = Flask(__name__)
app.config.update(SECRET_KEY="s", SESSION_TYPE="dill", SESSION_FILE_DIR={dir!r})
Session(app)
@app.route("/")
def put():
    session["tags"] = {{"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"}}
    return "ok"
client = app.test_client()
client.get("/")
print(client.get_cookie("session").value)
"""


@pytest.mark.parametrize("seed", ["1", "2", "3"])
def test_a_set_written_by_another_process_is_not_rewritten_by_a_read(
    make_app: AppFactory, session_dir: Path, seed: str
) -> None:
    app = make_app(SECRET_KEY="s")

    @app.route("/tags")
    def tags() -> str:
        return ",".join(sorted(session["tags"]))

    code = WRITER.format(root=str(ROOT), dir=str(session_dir))
    env = {**os.environ, "PYTHONHASHSEED": seed}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    sid = result.stdout.strip()
    path = Path(interface(app).store.path(interface(app).store_key(sid)))  # type: ignore[attr-defined]
    before = path.read_bytes()
    client = app.test_client()
    client.set_cookie("session", sid)
    assert client.get("/tags").text == "alpha,beta,delta,epsilon,eta,gamma,zeta"
    assert path.read_bytes() == before  # only touched, never rewritten


def test_plain_text_mentioning_main_stays_on_the_portable_path() -> None:
    payload = serializer.dumps({"next": "/?module=__main__", "name": "__main__"})
    assert payload[:1] == pickle.PROTO


def test_a_load_error_does_not_quote_session_data() -> None:
    class Secretive:
        def __setstate__(self, state: object) -> None:
            raise ValueError(f"bad state {state!r}")

    globals()["Secretive"] = Secretive
    Secretive.__qualname__ = "Secretive"
    try:
        obj = Secretive.__new__(Secretive)
        obj.__dict__["card"] = "4111-1111"
        payload = serializer.dumps({"x": obj, "user": 1})
        loaded = Loader().load(payload)
        assert loaded.data == {"user": 1}
        assert "4111" not in loaded.dropped["x"]
        assert "ValueError" in loaded.dropped["x"]
    finally:
        del globals()["Secretive"]
