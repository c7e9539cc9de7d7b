"""Hostile cookie values and planted files: a new session every time, nothing touched outside.

The cookie value is fuzzed with hypothesis and handed to the app the way a WSGI server
hands over a header: its UTF-8 bytes, decoded as Latin-1, in ``HTTP_COOKIE``.
"""

from __future__ import annotations

import base64
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, session
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .support import filesystem_store as store
from .support import interface

AppFactory = Callable[..., Flask]

COOKIE = "session"
PREFIX = "session:"
URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
SID_CHARS = 43  # secrets.token_urlsafe(32)
STORE_FILE = re.compile(r"[0-9a-f]{2}/[0-9a-f]{40}")


def build(make_app: AppFactory, **config: Any) -> Flask:
    app = make_app(SESSION_DILL_LOCK_TIMEOUT=2, **config)

    @app.get("/read")
    def read() -> dict[str, Any]:
        return dict(session)

    @app.get("/write")
    def write() -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    return app


def set_sid(response_cookie: str | None) -> str | None:
    """The session id a ``Set-Cookie`` header sets, or ``None``."""
    if not response_cookie:
        return None
    match = re.match(rf"{COOKIE}=([^;]*);", response_cookie)
    return match.group(1) if match and match.group(1) else None


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int, int, int, bytes]]:
    """Every entry below *root* except *skip*: inode, size, mtime, ctime, and content."""
    found: dict[str, tuple[int, int, int, int, bytes]] = {}
    for directory, dirs, files in os.walk(root):
        if Path(directory) == skip:
            dirs.clear()
            continue
        for name in dirs + files:
            path = os.path.join(directory, name)
            if Path(path) == skip:
                continue
            info = os.lstat(path)
            content = Path(path).read_bytes() if os.path.isfile(path) else b""
            if os.path.islink(path):
                content = os.readlink(path).encode()
            found[path] = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns, content)
    return found


def store_layout_is_ours(directory: Path) -> None:
    """Only hashed session files in two-letter shard directories, nothing else."""
    for path in directory.rglob("*"):
        relative = path.relative_to(directory).as_posix()
        if path.is_dir() and not path.is_symlink():
            assert re.fullmatch(r"[0-9a-f]{2}", relative), relative
        else:
            assert STORE_FILE.fullmatch(relative) and path.is_file(), relative


def plant_bait(root: Path) -> None:
    """Files a path traversal would reach: beside the store, above it, and named like ids."""
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0")
    (root / "session:..").write_text("bait")
    (root / "bait").write_text("bait")


# -- cookie values -------------------------------------------------------------------------

TRICKY = [
    "",
    ".",
    "..",
    "../",
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "/etc/passwd",
    "\\..\\..\\bait",
    "../bait",
    "..\x00",
    "\x00",
    "session:../../bait",
    "quarantine",
    "../quarantine/x",
    "~",
    "$HOME",
    "%00",
    "a" * SID_CHARS + "/..",
    "/" * SID_CHARS,
    "." * SID_CHARS,
    '"' + "a" * SID_CHARS + '"',
    "a" * (SID_CHARS - 1) + "\n",
    "a" * (SID_CHARS - 1) + "\x00",
    "a" * (SID_CHARS - 1) + "é",
    "a" * (SID_CHARS - 1) + "٣",  # a digit, but not an ASCII one
]

valid_looking = st.one_of(
    st.text(alphabet=URLSAFE, min_size=SID_CHARS, max_size=SID_CHARS),
    st.binary(min_size=32, max_size=32).map(lambda b: base64.urlsafe_b64encode(b)[:-1].decode()),
    st.text(alphabet=URLSAFE, min_size=SID_CHARS - 2, max_size=SID_CHARS + 2),
)
forged_signature = st.builds(
    lambda sid, sig: f"{sid}.{sig}",
    valid_looking,
    st.text(alphabet=URLSAFE + ".", min_size=0, max_size=40),
)
path_like = st.lists(
    st.sampled_from(["..", ".", "/", "\\", "etc", "passwd", "bait", "\x00", "%2f", "sessions"]),
    min_size=1,
    max_size=12,
).map("".join)
very_long = st.builds(
    lambda piece, times: piece * times,
    st.text(min_size=1, max_size=8),
    st.integers(min_value=500, max_value=20_000),
)
cookie_values = st.one_of(
    st.sampled_from(TRICKY),
    st.text(),  # any unicode, NUL and control characters included
    st.text(alphabet=st.characters(codec="ascii")),
    valid_looking,
    forged_signature,
    path_like,
    very_long,
)
cookie_headers = st.one_of(
    cookie_values.map(lambda value: f"{COOKIE}={value}"),
    cookie_values.map(lambda value: f'{COOKIE}="{value}"'),
    st.tuples(cookie_values, cookie_values).map(lambda v: f"{COOKIE}={v[0]}; {COOKIE}={v[1]}"),
    st.text(),  # not even name=value
)


def test_any_cookie_gives_a_new_session_and_touches_nothing_outside_the_store(
    make_app: AppFactory, tmp_path: Path, session_dir: Path
) -> None:
    app = build(make_app)
    plant_bait(tmp_path)
    outside = snapshot(tmp_path, skip=session_dir)
    client = app.test_client(use_cookies=False)
    seen: set[str] = set()
    runs: list[str] = []

    @settings(
        max_examples=3000,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(header=cookie_headers, write=st.booleans())
    def check(header: str, write: bool) -> None:
        runs.append(header)
        wire = header.encode("utf-8", "surrogatepass").decode("latin-1")
        response = client.get(
            "/write" if write else "/read", environ_overrides={"HTTP_COOKIE": wire}
        )
        assert response.status_code == 200
        if write:
            assert response.text == "1"  # never an existing session
            sid = set_sid(response.headers.get("Set-Cookie"))
            assert sid is not None and interface(app).is_valid_sid(sid)
            assert sid not in header and sid not in seen
            seen.add(sid)
            assert os.path.isfile(store(app).path(PREFIX + sid))
        else:
            assert response.get_json() == {}
            assert set_sid(response.headers.get("Set-Cookie")) is None

    check()
    assert len(runs) >= 3000
    assert snapshot(tmp_path, skip=session_dir) == outside
    store_layout_is_ours(session_dir)
    files = [path for path in session_dir.rglob("*") if path.is_file()]
    assert len(files) == len(seen) > 500  # one file per written session, none for reads


def test_an_unknown_valid_id_is_replaced(make_app: AppFactory, session_dir: Path) -> None:
    app = build(make_app)
    client = app.test_client()
    unknown = interface(app).generate_sid()
    client.set_cookie(COOKIE, unknown)
    assert client.get("/write").text == "1"
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None and cookie.value != unknown
    assert not os.path.lexists(store(app).path(PREFIX + unknown))


# -- planted files -------------------------------------------------------------------------


def started(app: Flask) -> tuple[FlaskClient, str]:
    client = app.test_client()
    assert client.get("/write").text == "1"
    assert client.get("/write").text == "2"
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return client, cookie.value


@pytest.mark.parametrize("locking", [True, False])
def test_a_symlink_at_a_session_path_is_not_followed(
    make_app: AppFactory, tmp_path: Path, session_dir: Path, locking: bool
) -> None:
    app = build(make_app, SESSION_DILL_LOCKING=locking)
    client, sid = started(app)
    path = Path(store(app).path(PREFIX + sid))
    # The target holds this very session's valid bytes: following the link would load it.
    outside = tmp_path / "elsewhere"
    outside.write_bytes(path.read_bytes())
    before = snapshot(tmp_path, skip=session_dir)
    path.unlink()
    path.symlink_to(outside)

    assert client.get("/read").get_json() == {}
    assert client.get("/write").text == "1"
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None and cookie.value != sid
    store(app).cleanup()
    assert snapshot(tmp_path, skip=session_dir) == before
    assert path.is_symlink()


def test_a_dangling_symlink_at_a_session_path_is_not_written_through(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = build(make_app)
    sid = interface(app).generate_sid()
    path = Path(store(app).path(PREFIX + sid))
    path.parent.mkdir(parents=True, exist_ok=True)
    target = tmp_path / "created-through-the-link"
    path.symlink_to(target)
    client = app.test_client()
    client.set_cookie(COOKIE, sid)
    assert client.get("/write").text == "1"
    assert not os.path.lexists(target)
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None and cookie.value != sid


@pytest.mark.parametrize("kind", ["directory", "fifo", "socket"])
def test_a_non_file_at_a_session_path_gives_a_fresh_session(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    app = build(make_app)
    client, sid = started(app)
    path = Path(store(app).path(PREFIX + sid))
    path.unlink()
    bound = None
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        monkeypatch.chdir(path.parent)  # a socket's path must be short
        bound = socket.socket(socket.AF_UNIX)
        bound.bind(path.name)
    try:
        assert client.get("/read").get_json() == {}
        assert client.get("/write").text == "1"
        cookie = client.get_cookie(COOKIE)
        assert cookie is not None and cookie.value != sid
    finally:
        if bound is not None:
            bound.close()
