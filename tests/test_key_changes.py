"""Key changes and encryption, across processes on one filesystem store."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, session

from flask_dill_session.stores.filesystem import frame, last_record

from .support import run_deploy_app
from .test_deploys import V1

MARKER = "marker-7f3c9a"


class Instance:
    """One app process configuration (secrets, encryption) over the shared store."""

    def __init__(self, tmp_path: Path, secret: str, *fallbacks: str, encrypt: bool = False):
        self.tmp_path = tmp_path
        self.store = str(tmp_path / "sessions")
        self.env = {
            "FDS_SECRET": secret,
            "FDS_FALLBACKS": json.dumps(list(fallbacks)),
            "FDS_ENCRYPT": "1" if encrypt else "",
            "FDS_NOTE": MARKER,
        }

    def login(self) -> str:
        sid, warnings = run_deploy_app(self.tmp_path, V1, "login", self.store, **self.env)
        assert warnings == []
        return sid

    def show(self, sid: str) -> tuple[dict[str, Any], list[str]]:
        out, warnings = run_deploy_app(self.tmp_path, V1, "show", self.store, sid, **self.env)
        shown = json.loads(out)
        assert shown["status"] == 200
        return shown, warnings


def stored_files(tmp_path: Path) -> dict[Path, bytes]:
    return {
        path: path.read_bytes() for path in (tmp_path / "sessions").rglob("*") if path.is_file()
    }


def test_instances_with_different_keys_leave_each_others_sessions_alone(tmp_path: Path) -> None:
    a, b = Instance(tmp_path, "secret-a"), Instance(tmp_path, "secret-b")
    sid = a.login()
    before = stored_files(tmp_path)

    shown, warnings = b.show(sid)
    assert shown["body"]["user_id"] is None  # absent here ...
    assert shown["cookies"] == []  # ... but the cookie is not cleared
    assert stored_files(tmp_path) == before  # left in place, nothing quarantined
    (warning,) = warnings
    assert "left in place" in warning and "key id" in warning and sid not in warning

    shown, warnings = a.show(sid)
    assert shown["body"]["user_id"] == 42 and warnings == []


def test_a_rolling_key_change_logs_nobody_out(tmp_path: Path) -> None:
    old = Instance(tmp_path, "secret-a")
    sid = old.login()
    # Step 1, every instance: the new key becomes a fallback.
    step1 = Instance(tmp_path, "secret-a", "secret-b")
    assert step1.show(sid)[0]["body"]["user_id"] == 42
    # Step 2, instance by instance: the new key becomes the key, the old one a fallback.
    step2 = Instance(tmp_path, "secret-b", "secret-a")
    shown, warnings = step2.show(sid)
    assert shown["body"]["user_id"] == 42 and warnings == []  # and re-sealed with the new key
    assert step1.show(sid)[0]["body"]["user_id"] == 42  # an instance not yet switched
    # Once every instance has switched, a session's next use re-seals it with the new key,
    # after which the old key can go.
    assert step2.show(sid)[0]["body"]["user_id"] == 42
    assert Instance(tmp_path, "secret-b").show(sid)[0]["body"]["user_id"] == 42
    assert Instance(tmp_path, "secret-a").show(sid)[0]["body"]["user_id"] is None


def test_encrypted_sessions_hold_no_plaintext_and_survive_switching(tmp_path: Path) -> None:
    plain, encrypted = Instance(tmp_path, "k"), Instance(tmp_path, "k", encrypt=True)
    control = plain.login()
    assert any(MARKER.encode() in data for data in stored_files(tmp_path).values())
    sid = encrypted.login()
    path = next(p for p, data in stored_files(tmp_path).items() if MARKER.encode() not in data)
    assert encrypted.show(sid)[0]["body"]["user_id"] == 42
    assert plain.show(sid)[0]["body"]["user_id"] == 42  # encryption turned off: still read
    assert encrypted.show(control)[0]["body"]["user_id"] == 42  # and turned on
    assert path.exists()


def test_a_tampered_encrypted_session_is_quarantined(tmp_path: Path) -> None:
    encrypted = Instance(tmp_path, "k", encrypt=True)
    sid = encrypted.login()
    (path,) = stored_files(tmp_path)
    blob, deadline = last_record(path.read_bytes())
    assert blob is not None
    tampered = bytearray(blob)
    tampered[-20] ^= 1  # a bit of the ciphertext, framed anew so the record is intact
    path.write_bytes(frame(bytes(tampered), deadline))
    shown, warnings = encrypted.show(sid)
    assert shown["body"]["user_id"] is None
    (warning,) = warnings
    assert "quarantined" in warning and "authentication failed" in warning
    assert len(list((tmp_path / "sessions" / "quarantine").iterdir())) == 1


def test_a_foreign_key_is_logged_once_per_key_id(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = make_app(SECRET_KEY="secret-a"), make_app(SECRET_KEY="secret-b")
    for app in (a, b):
        app.add_url_rule("/set", "set", lambda: session.update(x=1) or "ok")
        app.add_url_rule("/get", "get", lambda: str(session.get("x")))
    sids = []
    for _ in range(3):
        client = a.test_client()
        client.get("/set")
        cookie = client.get_cookie("session")
        assert cookie is not None
        sids.append(cookie.value)
    with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
        for sid in sids:
            client = b.test_client()
            client.set_cookie("session", sid)
            assert client.get("/get").text == "None"
    assert len([r for r in caplog.records if r.name == "flask_dill_session"]) == 1
