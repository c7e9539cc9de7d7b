"""Integrity and lifecycle of stored sessions, attacked straight through the filesystem store.

An intruder here can write into the session directory but does not know ``SECRET_KEY``.
Whatever they plant must never reach an unpickler: the victim gets a fresh session under a
new id, the planted bytes are moved to the quarantine directory, and one warning is logged
that names neither the session id nor any secret. Time is moved by hand through the
interface's and the store's ``clock``.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import re
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, session
from flask.testing import FlaskClient

from flask_dill_session import ConfigError, serializer
from flask_dill_session.envelope import PERMANENT, Envelope, derive_key
from flask_dill_session.exc import ForeignPayloadError, SessionTooLargeError
from flask_dill_session.session import DillSession
from flask_dill_session.stores.filesystem import frame, last_record

from .support import Clock, interface
from .support import filesystem_store as store

AppFactory = Callable[..., Flask]

SECRET = "test-secret"  # the make_app fixture's SECRET_KEY
COOKIE = "session"
PREFIX = "session:"
LIFETIME = 100.0  # PERMANENT_SESSION_LIFETIME, seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def build(make_app: AppFactory, clock: Clock, **config: Any) -> Flask:
    """An app on the shared session directory, running on *clock*, with a few views."""
    settings: dict[str, Any] = {
        "PERMANENT_SESSION_LIFETIME": timedelta(seconds=LIFETIME),
        "SESSION_DILL_LOCK_TIMEOUT": 2,
        **config,
    }
    app = make_app(**settings)
    interface(app).clock = clock
    store(app).clock = clock

    @app.get("/set/<name>/<value>")
    def set_value(name: str, value: str) -> str:
        session[name] = value
        return "ok"

    @app.get("/get/<name>")
    def get_value(name: str) -> str:
        return repr(session.get(name))

    @app.get("/inc")
    def increment() -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    @app.get("/logout")
    def logout() -> str:
        assert isinstance(session, DillSession)
        path = store(app).path(PREFIX + (session.cookie_sid or ""))
        interface(app).destroy(session)
        return "gone" if not os.path.lexists(path) else "still there"

    return app


def sid_of(client: FlaskClient) -> str | None:
    cookie = client.get_cookie(COOKIE)
    return None if cookie is None else cookie.value


def started(client: FlaskClient, name: str = "a", value: str = "1") -> str:
    """Store ``name = value`` in a new session; its id."""
    assert client.get(f"/set/{name}/{value}").status_code == 200
    sid = sid_of(client)
    assert sid is not None
    return sid


def file_of(app: Flask, sid: str) -> Path:
    return Path(store(app).path(PREFIX + sid))


def plant(app: Flask, sid: str, blob: bytes, clock: Clock) -> None:
    """Write *blob* as the session file of *sid*, framed as a store record, bypassing us."""
    path = file_of(app, sid)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(frame(blob, clock() + LIFETIME))


def quarantined(app: Flask) -> list[bytes]:
    """The blobs in the quarantine directory."""
    directory = Path(store(app).quarantine_dir)
    if not directory.is_dir():
        return []
    blobs = [last_record(path.read_bytes())[0] for path in sorted(directory.iterdir())]
    return [blob for blob in blobs if blob is not None]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "flask_dill_session" and record.levelno == logging.WARNING
    ]


def seal(key: str, payload: bytes, clock: Clock, secret: str = SECRET) -> bytes:
    """A blob made as the interface makes it, with *secret*."""
    return Envelope(secret).seal(
        key, payload, flags=PERMANENT, created=clock(), expires=clock() + 7 * 86400
    )


def assert_fresh(client: FlaskClient, old_sid: str) -> None:
    """The client's next use of the session is a new, empty, working session."""
    assert client.get("/get/a").text == "None"
    assert client.get("/inc").text == "1"
    new_sid = sid_of(client)
    assert new_sid is not None and new_sid != old_sid
    assert client.get("/inc").text == "2"


class Trap:
    """Unpickling this writes a marker file: proof that planted bytes were run. It leaves
    no file open; the unpickled value is what ``write_text`` returns (5)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


# -- planted blobs -------------------------------------------------------------------------


ATTACKS = ["raw pickle", "untagged raw pickle", "wrong key", "altered mac", "cut", "truncated"]


def forged(attack: str, key: str, marker: Path, clock: Clock) -> bytes:
    evil = serializer.PICKLE + pickle.dumps({"a": Trap(marker), "pad": "x" * 100})
    if attack == "raw pickle":
        return evil
    if attack == "untagged raw pickle":
        return pickle.dumps(Trap(marker))
    genuine = seal(key, evil, clock)  # what someone holding the real key could make
    if attack == "wrong key":  # under the real key's id (bytes 21-29), which any blob shows
        guessed = seal(key, evil, clock, secret="a-guessed-secret")
        return guessed[:21] + genuine[21:29] + guessed[29:]
    if attack == "altered mac":
        return genuine[:-1] + bytes([genuine[-1] ^ 1])
    if attack == "cut":
        return genuine[:-5]
    assert attack == "truncated"
    return genuine[:40]  # shorter than an envelope's header and MAC


def test_the_trap_runs_when_unpickled(tmp_path: Path, clock: Clock) -> None:
    """Control: the planted payload is live, so its absence later means it never ran."""
    marker = tmp_path / "pwned"
    blob = forged("raw pickle", PREFIX + "x", marker, clock)
    assert pickle.loads(blob[1:])["a"] == 5
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_planted_pickle_never_runs(
    make_app: AppFactory,
    clock: Clock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    attack: str,
) -> None:
    app = build(make_app, clock)
    victim = app.test_client()
    sid = started(victim, "a", "mine")
    marker = tmp_path / "pwned"
    blob = forged(attack, PREFIX + sid, marker, clock)
    plant(app, sid, blob, clock)

    with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
        response = victim.get("/get/a")
    assert response.status_code == 200 and response.text == "None"
    assert not marker.exists()
    assert quarantined(app) == [blob]
    assert not file_of(app, sid).exists()

    (message,) = warnings_of(caplog)
    assert "quarantined" in message
    assert re.search(r"\b[0-9a-f]{8,}\b", message)  # names the session by a hash
    for secret_text in (sid, SECRET, str(marker), derive_key(SECRET).hex()):
        assert secret_text not in message

    assert_fresh(victim, sid)
    assert not marker.exists()


@pytest.mark.parametrize(("configured", "days"), [(None, 7.0), (timedelta(days=2), 2.0)])
def test_quarantine_is_kept_for_its_lifetime(
    make_app: AppFactory, clock: Clock, tmp_path: Path, configured: timedelta | None, days: float
) -> None:
    config = {} if configured is None else {"SESSION_DILL_QUARANTINE_LIFETIME": configured}
    app = build(make_app, clock, **config)
    victim = app.test_client()
    sid = started(victim)
    blob = forged("wrong key", PREFIX + sid, tmp_path / "pwned", clock)
    plant(app, sid, blob, clock)
    assert victim.get("/get/a").text == "None"
    clock.now += days * 86400 - 60
    store(app).cleanup()
    assert quarantined(app) == [blob]
    clock.now += 120
    store(app).cleanup()
    assert quarantined(app) == []


def test_an_unframed_file_is_no_session(make_app: AppFactory, clock: Clock, tmp_path: Path) -> None:
    """Bytes that are not even a store record are ignored like a missing session."""
    app = build(make_app, clock)
    victim = app.test_client()
    sid = started(victim)
    marker = tmp_path / "pwned"
    file_of(app, sid).write_bytes(pickle.dumps(Trap(marker)))
    assert victim.get("/get/a").text == "None"
    assert not marker.exists()
    assert_fresh(victim, sid)


def test_a_blob_sealed_with_the_real_key_is_trusted(
    make_app: AppFactory, clock: Clock, tmp_path: Path
) -> None:
    """The limit of the protection: whoever holds SECRET_KEY and can write the store can run
    code in the app. This is documented in the threat model."""
    app = build(make_app, clock)
    victim = app.test_client()
    sid = started(victim)
    marker = tmp_path / "pwned"
    evil = serializer.PICKLE + pickle.dumps({"a": Trap(marker)})
    plant(app, sid, seal(PREFIX + sid, evil, clock), clock)
    assert victim.get("/get/a").text == "5"  # what the planted code returned
    assert marker.read_text() == "pwned"


def test_a_blob_copied_to_another_session_is_rejected(
    make_app: AppFactory, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    app = build(make_app, clock)
    alice, bob = app.test_client(), app.test_client()
    alice_sid = started(alice, "a", "alice")
    bob_sid = started(bob, "a", "bob")
    stolen = file_of(app, alice_sid).read_bytes()
    file_of(app, bob_sid).write_bytes(stolen)

    with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
        assert bob.get("/get/a").text == "None"
    assert len(warnings_of(caplog)) == 1
    assert quarantined(app) == [last_record(stolen)[0]]
    assert_fresh(bob, bob_sid)
    assert alice.get("/get/a").text == "'alice'"
    assert sid_of(alice) == alice_sid


# -- key rotation --------------------------------------------------------------------------


def test_rotation_loads_old_sessions_and_reseals_them_on_the_next_save(
    make_app: AppFactory, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    old_app = build(make_app, clock, SECRET_KEY="old-secret")
    client, other = old_app.test_client(), old_app.test_client()
    sid = started(client, "a", "kept")
    other_sid = started(other, "a", "other")
    key = PREFIX + sid

    rotated = build(make_app, clock, SECRET_KEY="new-secret", SECRET_KEY_FALLBACKS=["old-secret"])
    before = last_record(file_of(rotated, sid).read_bytes())[0]
    assert before is not None
    assert Envelope("old-secret").open(key, before).current_key
    rotated_client = rotated.test_client()
    rotated_client.set_cookie(COOKIE, sid)
    assert rotated_client.get("/get/a").text == "'kept'"  # read only: still re-sealed
    assert sid_of(rotated_client) == sid

    after = last_record(file_of(rotated, sid).read_bytes())[0]
    assert after is not None and after != before
    assert Envelope("new-secret").open(key, after).current_key
    with pytest.raises(ForeignPayloadError):
        Envelope("old-secret").open(key, after)

    # Once the old key is dropped, the re-sealed session still loads ...
    new_only = build(make_app, clock, SECRET_KEY="new-secret")
    new_client = new_only.test_client()
    new_client.set_cookie(COOKIE, sid)
    assert new_client.get("/get/a").text == "'kept'"
    # ... and one that was never saved again is refused, which is what the fallback was for.
    other_client = new_only.test_client()
    other_client.set_cookie(COOKIE, other_sid)
    with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
        assert other_client.get("/get/a").text == "None"
    assert len(warnings_of(caplog)) == 1


def test_a_session_under_the_current_key_is_not_rewritten_just_for_reading(
    make_app: AppFactory, clock: Clock
) -> None:
    app = build(make_app, clock, SECRET_KEY="new-secret", SECRET_KEY_FALLBACKS=["old-secret"])
    client = app.test_client()
    sid = started(client)
    before = file_of(app, sid).read_bytes()
    assert client.get("/get/a").text == "'1'"
    assert file_of(app, sid).read_bytes() == before


@pytest.mark.parametrize("fallbacks", ["old-secret", b"old-secret", ["ok", ""], 7])
def test_fallbacks_must_be_a_list_of_secrets(make_app: AppFactory, fallbacks: Any) -> None:
    """A lone string must not become a list of one-character keys anyone can guess."""
    with pytest.raises(ConfigError, match="SECRET_KEY_FALLBACKS"):
        make_app(SECRET_KEY_FALLBACKS=fallbacks)


def test_the_envelope_refuses_a_lone_string_as_fallbacks() -> None:
    with pytest.raises(TypeError):
        Envelope("new-secret", "old-secret")
    with pytest.raises(ValueError):
        Envelope("")


# -- expiry --------------------------------------------------------------------------------


@pytest.mark.parametrize("permanent", [True, False])
def test_idle_expiry_is_enforced_by_the_server(
    make_app: AppFactory, clock: Clock, permanent: bool
) -> None:
    app = build(make_app, clock, SESSION_PERMANENT=permanent)
    client = app.test_client()
    response = client.get("/inc")
    sid = sid_of(client)
    assert sid is not None
    assert ("Expires=" in response.headers["Set-Cookie"]) is permanent
    for _ in range(4):  # activity, reads included, keeps it alive past the idle lifetime
        clock.now += LIFETIME - 10
        assert client.get("/get/n").text == "1"
    assert sid_of(client) == sid

    clock.now += LIFETIME + 1  # idle too long: the server forgets it, cookie or not
    assert client.get("/get/n").text == "None"
    assert client.get("/inc").text == "1"
    assert sid_of(client) != sid


def test_absolute_expiry_ends_an_active_session(make_app: AppFactory, clock: Clock) -> None:
    app = build(make_app, clock, SESSION_DILL_ABSOLUTE_LIFETIME=timedelta(seconds=250))
    client = app.test_client()
    assert client.get("/inc").text == "1"
    sid = sid_of(client)
    for expected in ("2", "3", "4"):  # active every 60 s: the idle limit is never reached
        clock.now += 60
        assert client.get("/inc").text == expected
    assert sid_of(client) == sid
    clock.now += 60  # 240 s old
    assert client.get("/inc").text == "5"
    clock.now += 10  # 250 s old
    assert client.get("/get/n").text == "None"
    assert not file_of(app, sid or "").exists()
    assert client.get("/inc").text == "1"
    assert sid_of(client) != sid


@pytest.mark.parametrize(("absolute", "survives"), [(None, True), ("default", False)])
def test_absolute_expiry_is_seven_days_unless_disabled(
    make_app: AppFactory, clock: Clock, absolute: str | None, survives: bool
) -> None:
    config: dict[str, Any] = {"PERMANENT_SESSION_LIFETIME": timedelta(days=30)}
    if absolute is None:
        config["SESSION_DILL_ABSOLUTE_LIFETIME"] = None
    app = build(make_app, clock, **config)
    client = app.test_client()
    assert client.get("/inc").text == "1"
    clock.now += 7 * 86400 + 1
    assert client.get("/inc").text == ("2" if survives else "1")


# -- size limit ----------------------------------------------------------------------------


def test_a_session_over_the_size_limit_is_refused_and_the_stored_one_kept(
    make_app: AppFactory, clock: Clock
) -> None:
    app = build(make_app, clock, SESSION_DILL_MAX_SIZE=4000)

    @app.get("/grow")
    def grow() -> str:
        session["photo"] = b"p" * 6000
        session["draft"] = "d" * 3000
        session["tiny"] = 1
        return "grown"

    client = app.test_client()
    sid = started(client, "a", "small")
    before = file_of(app, sid).read_bytes()
    with pytest.raises(SessionTooLargeError) as caught:
        client.get("/grow")
    error = caught.value
    assert error.limit == 4000 and error.size > 4000
    assert [key for key, _ in error.largest[:2]] == ["photo", "draft"]
    assert "'photo'" in str(error) and "'draft'" in str(error)
    assert file_of(app, sid).read_bytes() == before
    assert client.get("/get/a").text == "'small'"  # and its lock was released
    assert client.get("/get/photo").text == "None"


@pytest.mark.parametrize(("limit", "stored"), [(None, True), ("default", False)])
def test_the_size_limit_is_one_mib_unless_disabled(
    make_app: AppFactory, clock: Clock, limit: str | None, stored: bool
) -> None:
    config: dict[str, Any] = {"SESSION_DILL_MAX_SIZE": None} if limit is None else {}
    app = build(make_app, clock, **config)

    @app.get("/big")
    def big() -> str:
        session["big"] = b"b" * (1 << 20)
        return "ok"

    client = app.test_client()
    if stored:
        assert client.get("/big").status_code == 200
        assert client.get("/get/big").text == repr(b"b" * (1 << 20))
    else:
        with pytest.raises(SessionTooLargeError):
            client.get("/big")


# -- destroy -------------------------------------------------------------------------------


@pytest.mark.parametrize("in_flight_writes", [True, False])
def test_destroy_is_not_undone_by_a_request_in_flight(
    make_app: AppFactory, clock: Clock, in_flight_writes: bool
) -> None:
    app = build(make_app, clock, SESSION_DILL_LOCKING=False)
    loaded, logged_out = threading.Event(), threading.Event()

    @app.get("/slow")
    def slow() -> str:
        value = session.get("a")  # loaded before the logout
        loaded.set()
        assert logged_out.wait(10)
        if in_flight_writes:
            session["a"] = "resurrected"
        return repr(value)

    client = app.test_client()
    sid = started(client, "a", "secret-data")
    slow_client = app.test_client()
    slow_client.set_cookie(COOKIE, sid)
    results: list[Any] = []
    request_a = threading.Thread(target=lambda: results.append(slow_client.get("/slow")))
    request_a.start()
    try:
        assert loaded.wait(10)
        response_b = client.get("/logout")
    finally:
        logged_out.set()
        request_a.join(10)
    assert response_b.text == "gone"  # deleted during the request, not at its end
    assert "session=;" in response_b.headers["Set-Cookie"]
    assert sid_of(client) is None

    (response_a,) = results
    assert response_a.status_code == 200 and response_a.text == "'secret-data'"
    if in_flight_writes:
        assert sid not in response_a.headers.get("Set-Cookie", "")
    assert not file_of(app, sid).exists()
    stale = app.test_client()
    stale.set_cookie(COOKIE, sid)
    assert stale.get("/get/a").text == "None"
    assert sid_of(stale) is None


# -- code that is gone or not portable -----------------------------------------------------


@pytest.mark.parametrize("change", ["module removed", "class removed"])
def test_a_session_whose_class_was_removed_by_a_deploy_keeps_its_other_keys(
    make_app: AppFactory,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    deployed_module: tuple[str, Path],
    change: str,
) -> None:
    name, source = deployed_module
    app = build(make_app, clock)

    @app.get("/cart/add/<item>")
    def add(item: str) -> str:
        cart = session.setdefault("cart", importlib.import_module(name).Cart([]))
        cart.items.append(item)
        session.modified = True
        return ",".join(cart.items)

    client = app.test_client()
    assert client.get("/set/user/alice").status_code == 200
    assert client.get("/cart/add/apple").text == "apple"
    sid = sid_of(client)
    assert sid is not None
    assert client.get("/cart/add/pear").text == "apple,pear"
    blob = last_record(file_of(app, sid).read_bytes())[0]

    # The deploy: the module, or the class in it, is no more.
    del sys.modules[name]
    if change == "module removed":
        source.unlink()
    else:
        source.write_text("class Basket:\n    pass\n")
    importlib.invalidate_caches()

    with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
        response = client.get("/get/cart")
    assert response.status_code == 200 and response.text == "None"
    (message,) = warnings_of(caplog)
    assert "key 'cart' dropped" in message and f"{name}.Cart" in message and sid not in message
    assert quarantined(app) == [blob]  # the original, for an operator
    assert client.get("/get/user").text == "'alice'"  # the login survives, same session
    assert sid_of(client) == sid
    assert client.get("/get/cart").text == "None"
    assert len(warnings_of(caplog)) == 1  # saved without the key: said once


def dill_payload_with_trap(marker: Path, python: str | None = None) -> bytes:
    """A dill-coded payload whose loading calls a function shipped by value, as made by
    Python *python* (this one by default)."""

    def make_marker(path: str) -> None:
        Path(path).write_text("ran")

    class CodeTrap:
        def __reduce__(self) -> tuple[Any, ...]:
            return (make_marker, (str(marker),))

    payload = serializer.dumps({"a": CodeTrap(), "f": make_marker})
    assert payload[:1] == serializer.DILL
    end = 2 + payload[1]
    stamp = payload[2:end].decode()
    assert stamp.startswith(serializer.PYTHON + " ")
    if python is None:
        return payload
    forged_stamp = stamp.replace(serializer.PYTHON, python, 1).encode()
    return serializer.DILL + bytes([len(forged_stamp)]) + forged_stamp + payload[end:]


def other_python() -> str:
    major, minor = sys.version_info[:2]
    return f"{major}.{minor + 1}"


def test_a_dill_blob_of_this_python_runs(
    make_app: AppFactory, clock: Clock, tmp_path: Path
) -> None:
    """Control: the payload below is live when its stamp names this Python."""
    app = build(make_app, clock)
    client = app.test_client()
    sid = started(client)
    marker = tmp_path / "ran"
    plant(app, sid, seal(PREFIX + sid, dill_payload_with_trap(marker), clock), clock)
    assert client.get("/get/a").status_code == 200
    assert marker.exists()


@pytest.mark.parametrize("python", [other_python(), "3.10", "2.7"])
def test_a_dill_blob_of_another_python_is_not_run_and_left_in_place(
    make_app: AppFactory,
    clock: Clock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    python: str,
) -> None:
    app = build(make_app, clock)
    client = app.test_client()
    sid = started(client)
    marker = tmp_path / "ran"
    blob = seal(PREFIX + sid, dill_payload_with_trap(marker, python), clock)
    Envelope(SECRET).open(PREFIX + sid, blob)  # correctly authenticated
    plant(app, sid, blob, clock)

    with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
        response = client.get("/get/a")
    assert response.status_code == 200 and response.text == "None"
    assert not marker.exists()
    (message,) = warnings_of(caplog)
    assert f"Python {python}" in message and sid not in message
    assert quarantined(app) == []
    assert last_record(file_of(app, sid).read_bytes())[0] == blob  # for that Python to read
    assert_fresh(client, sid)
    assert not marker.exists()


def test_a_plain_data_blob_has_no_python_stamp() -> None:
    """Plain data stays portable across Python versions: it carries no version stamp."""
    payload = serializer.dumps({"a": [1, "two", 3.0], "b": {"c": None}})
    assert payload[:1] in (b"\x80", serializer.PICKLE)
    assert serializer.PYTHON.encode() not in payload
