"""The Flask glue: strict ids, what is stored when, cookies, configuration, delegation."""

from __future__ import annotations

import os
import secrets
import stat
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http.cookies import Morsel, SimpleCookie
from pathlib import Path
from typing import Any

import flask_session
import pytest
from cachelib import FileSystemCache
from flask import Flask, Request, request, session
from flask.sessions import SessionInterface
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.test import TestResponse

from flask_dill_session import (
    ConfigError,
    DillSession,
    DillSessionError,
    DillSessionInterface,
    Session,
)
from flask_dill_session.config import DEFAULTS, KEYS, read_settings
from flask_dill_session.names import fingerprint
from flask_dill_session.stores.filesystem import FileSystemStore

from .support import Clock, Tmpfs

AppFactory = Callable[..., Flask]


def add_routes(app: Flask) -> Flask:
    @app.route("/set/<key>/<value>")
    def set_value(key: str, value: str) -> str:
        session[key] = value
        return "set"

    @app.route("/get/<key>")
    def get_value(key: str) -> str:
        return str(session.get(key))

    @app.route("/set-and-pop")
    def set_and_pop() -> str:
        session["a"] = 1
        session.pop("a")
        return "empty"

    @app.route("/clear")
    def clear() -> str:
        session.clear()
        return "cleared"

    @app.route("/regenerate")
    def regenerate() -> str:
        session["regenerated"] = "yes"
        assert isinstance(session, DillSession)
        interface(app).regenerate(session)
        return "regenerated"

    @app.route("/transient")
    def transient() -> str:
        session.permanent = False
        session["t"] = 1
        return "transient"

    @app.route("/permanent")
    def permanent() -> str:
        return str(session.permanent)

    @app.route("/state")
    def state() -> dict[str, Any]:
        assert isinstance(session, DillSession)
        value = session.get("user")
        return {
            "sid": session.sid,
            "new": session.new,
            "accessed": session.accessed,
            "modified": session.modified,
            "permanent": session.permanent,
            "user": value,
        }

    @app.route("/untouched")
    def untouched() -> str:
        return "no session here"

    return app


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return add_routes(make_app())


def interface(app: Flask) -> DillSessionInterface:
    assert isinstance(app.session_interface, DillSessionInterface)
    return app.session_interface


def store_of(app: Flask) -> FileSystemStore:
    store = interface(app).store
    assert isinstance(store, FileSystemStore)
    return store


def stored_path(app: Flask, sid: str) -> Path:
    return Path(store_of(app).path(interface(app).store_key(sid)))


def files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


def set_cookies(response: TestResponse) -> dict[str, Morsel[str]]:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.getlist("Set-Cookie"):
        jar.load(header)
    return dict(jar)


def session_cookie(response: TestResponse, name: str = "session") -> Morsel[str]:
    cookies = set_cookies(response)
    assert name in cookies, response.headers
    return cookies[name]


def is_deletion(morsel: Morsel[str]) -> bool:
    return morsel.value == "" and (
        morsel["max-age"] == "0" or parsedate_to_datetime(morsel["expires"]).year == 1970
    )


# -- the session object and its id -------------------------------------------------------


def test_the_interface_and_session_types(app: Flask) -> None:
    assert isinstance(app.session_interface, DillSessionInterface)
    assert isinstance(app.session_interface, SessionInterface)
    client = app.test_client()
    first = client.get("/state").get_json()
    assert first["new"] is True and first["user"] is None
    assert first["accessed"] is True
    assert first["modified"] is False and first["permanent"] is True
    client.get("/set/user/alice")
    second = client.get("/state").get_json()
    cookie = client.get_cookie("session")
    assert cookie is not None
    assert second["sid"] == cookie.value
    assert second["new"] is False and second["user"] == "alice"
    assert second["modified"] is False


def test_session_ids_are_long_random_and_url_safe(app: Flask) -> None:
    sids = set()
    for _ in range(20):
        response = app.test_client().get("/set/a/1")
        sids.add(session_cookie(response).value)
    assert len(sids) == 20
    for sid in sids:
        assert len(sid) == len(secrets.token_urlsafe(32))  # 256 bits
        assert sid.replace("-", "").replace("_", "").isalnum()


def test_session_id_length_sets_the_entropy(make_app: AppFactory) -> None:
    app = add_routes(make_app(SESSION_ID_LENGTH=16))
    response = app.test_client().get("/set/a/1")
    assert len(session_cookie(response).value) == len(secrets.token_urlsafe(16))


# -- strict mode -------------------------------------------------------------------------


def test_a_forged_sid_is_never_adopted(app: Flask, session_dir: Path) -> None:
    forged = secrets.token_urlsafe(32)  # the right shape, but never issued
    client = app.test_client()
    client.set_cookie("session", forged)
    response = client.get("/set/user/mallory")
    sid = session_cookie(response).value
    assert sid != forged
    assert not stored_path(app, forged).exists()
    assert files(session_dir) == [stored_path(app, sid)]


@pytest.mark.parametrize(
    "bad",
    [
        "short",
        "../../../../etc/passwd",
        "a" * 42 + "!",
        "a" * 44,
        "%2e%2e" + "a" * 37,
        "\u00e9" * 43,
    ],
    ids=["short", "traversal", "bad-char", "too-long", "encoded", "non-ascii"],
)
def test_a_malformed_sid_is_never_used(app: Flask, session_dir: Path, bad: str) -> None:
    client = app.test_client()
    client.set_cookie("session", bad)
    response = client.get("/set/user/mallory")
    sid = session_cookie(response).value
    assert sid != bad
    assert files(session_dir) == [stored_path(app, sid)]


def test_a_request_class_of_the_apps_own_says_what_the_cookies_are(app: Flask) -> None:
    """An app whose request class takes the session id from a header (a native client):
    its ``cookies`` are what the session reads."""

    class HeaderSession(Request):
        @property
        def cookies(self) -> ImmutableMultiDict[str, str]:
            return ImmutableMultiDict({"session": self.headers.get("X-Session", "")})

    sid = session_cookie(app.test_client().get("/set/user/alice")).value
    app.request_class = HeaderSession
    client = app.test_client(use_cookies=False)
    assert client.get("/get/user", headers={"X-Session": sid}).text == "alice"
    assert client.get("/get/user", headers={"Cookie": f"session={sid}"}).text == "None"


def test_the_session_cookie_is_found_among_others_as_flask_finds_it(app: Flask) -> None:
    @app.route("/seen")
    def seen() -> str:
        return request.cookies.get("session", "")

    sid = session_cookie(app.test_client().get("/set/user/alice")).value
    other = session_cookie(app.test_client().get("/set/user/bob")).value
    client = app.test_client(use_cookies=False)  # the header below is the whole Cookie
    for header in (
        f'theme="dark; wide"; session={sid}; lang=en',
        f"session={sid}; session={other}",  # the first of two, as request.cookies takes
        f"lang=en;session={sid}",
    ):
        response = client.get("/get/user", headers={"Cookie": header})
        assert response.text == "alice", header
        assert client.get("/seen", headers={"Cookie": header}).text == sid


def test_reading_with_an_unknown_sid_creates_nothing(app: Flask, session_dir: Path) -> None:
    client = app.test_client()
    client.set_cookie("session", secrets.token_urlsafe(32))
    response = client.get("/get/user")
    assert response.text == "None"
    assert files(session_dir) == []
    assert all(morsel.value == "" for morsel in set_cookies(response).values())


def test_an_expired_sid_is_never_adopted(make_app: AppFactory, session_dir: Path) -> None:
    app = add_routes(make_app(PERMANENT_SESSION_LIFETIME=timedelta(minutes=10)))
    clock = Clock(datetime.now(UTC).timestamp())
    store_of(app).clock = clock
    interface(app).clock = clock
    client = app.test_client()
    old = session_cookie(client.get("/set/user/alice")).value
    clock.now += 601
    client.set_cookie("session", old)
    assert client.get("/get/user").text == "None"
    new = session_cookie(client.get("/set/user/bob")).value
    assert new != old
    assert files(session_dir) == [stored_path(app, new)]


# -- what is stored, and when ------------------------------------------------------------


def test_an_empty_session_is_not_stored_and_sets_no_cookie(app: Flask, session_dir: Path) -> None:
    client = app.test_client()
    for path in ("/get/user", "/set-and-pop", "/state"):
        response = client.get(path)
        assert response.status_code == 200
        assert "Set-Cookie" not in response.headers, path
        assert "Cookie" in response.vary  # it was accessed
    assert files(session_dir) == []


def test_a_session_emptied_by_the_view_is_deleted(app: Flask, session_dir: Path) -> None:
    client = app.test_client()
    sid = session_cookie(client.get("/set/user/alice")).value
    assert stored_path(app, sid).exists()
    response = client.get("/clear")
    assert is_deletion(session_cookie(response))
    assert client.get_cookie("session") is None
    assert files(session_dir) == []
    client.set_cookie("session", sid)  # the old id is gone for good
    assert client.get("/get/user").text == "None"


def test_regenerate_without_a_grace_invalidates_the_old_sid_at_once(
    make_app: AppFactory, session_dir: Path
) -> None:
    app = add_routes(make_app(SESSION_DILL_ROTATION_GRACE=None))
    client = app.test_client()
    old = session_cookie(client.get("/set/user/alice")).value
    new = session_cookie(client.get("/regenerate")).value
    assert new != old
    assert not stored_path(app, old).exists()
    assert files(session_dir) == [stored_path(app, new)]
    assert client.get("/get/user").text == "alice"
    assert client.get("/get/regenerated").text == "yes"
    thief = app.test_client()
    thief.set_cookie("session", old)
    assert thief.get("/get/user").text == "None"
    assert files(session_dir) == [stored_path(app, new)]


def test_the_old_sid_is_read_only_during_the_rotation_grace_then_unknown(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(time.time())
    interface(app).clock = clock
    client = app.test_client()
    old = session_cookie(client.get("/set/user/alice")).value
    new = session_cookie(client.get("/regenerate")).value
    assert client.get("/get/user").text == "alice"

    parallel = app.test_client()  # a request of the same page, still carrying the old id
    parallel.set_cookie("session", old)
    response = parallel.get("/get/user")
    assert response.text == "alice" and "Set-Cookie" not in response.headers
    caplog.clear()
    response = parallel.get("/set/user/mallory")
    assert "Set-Cookie" not in response.headers, "never overwrites the new id's cookie"
    assert parallel.get("/get/user").text == "alice", "its write was dropped"
    assert [r.getMessage() for r in caplog.records] == [
        f"session {fingerprint('session:' + old)}: a change made with an id replaced by"
        " regenerate (in its rotation grace) was not saved"
    ]
    cookie = client.get_cookie("session")
    assert client.get("/get/user").text == "alice" and cookie is not None and cookie.value == new

    clock.now += 10.5  # the grace (10 s) is over: the old id is unknown, and its use logged
    caplog.clear()
    assert parallel.get("/get/user").text == "None"
    [warning] = [r.getMessage() for r in caplog.records]
    assert "possibly a stolen session id" in warning
    assert fingerprint("session:" + old) in warning


def test_a_request_that_never_touches_the_session_does_nothing(
    app: Flask, session_dir: Path
) -> None:
    client = app.test_client()
    response = client.get("/untouched")
    assert "Set-Cookie" not in response.headers
    assert "Cookie" not in response.vary
    assert not session_dir.exists() or files(session_dir) == []

    clock = Clock(datetime.now(UTC).timestamp())
    store_of(app).clock = clock
    sid = session_cookie(client.get("/set/user/alice")).value
    path = stored_path(app, sid)
    before = path.stat()
    clock.now += 1000
    response = client.get("/untouched")
    assert "Set-Cookie" not in response.headers
    assert "Cookie" not in response.vary
    after = path.stat()
    assert (after.st_mtime, after.st_size) == (before.st_mtime, before.st_size)  # no I/O
    client.get("/get/user")  # a read refreshes the expiry: the check above can fail
    assert path.stat().st_mtime == pytest.approx(before.st_mtime + 1000)


def test_vary_cookie_when_the_session_was_accessed(app: Flask) -> None:
    client = app.test_client()
    client.get("/set/user/alice")
    assert "Cookie" in client.get("/get/user").vary
    assert "Cookie" not in client.get("/untouched").vary


# -- cookies follow Flask's configuration ------------------------------------------------


def test_default_cookie_flags(make_app: AppFactory) -> None:
    app = add_routes(make_app(PERMANENT_SESSION_LIFETIME=timedelta(hours=1)))
    response = app.test_client().get("/set/a/1")
    morsel = session_cookie(response)
    assert morsel["path"] == "/"
    assert morsel["httponly"] is True
    assert not morsel["secure"]
    assert not morsel["domain"]
    assert not morsel["samesite"]
    expires = parsedate_to_datetime(morsel["expires"]).timestamp()
    expected = datetime.now(UTC).timestamp() + 3600
    assert expected - 120 < expires < expected + 120


def test_cookie_flags_follow_flask_config(make_app: AppFactory, session_dir: Path) -> None:
    app = add_routes(
        make_app(
            SESSION_COOKIE_NAME="sid",
            SESSION_COOKIE_SECURE=True,
            SESSION_COOKIE_HTTPONLY=False,
            SESSION_COOKIE_SAMESITE="Strict",
            SESSION_COOKIE_DOMAIN="example.test",
            SESSION_COOKIE_PATH="/app",
        )
    )
    client = app.test_client()
    response = client.get("/set/user/alice")
    assert "session" not in set_cookies(response)
    morsel = session_cookie(response, "sid")
    assert morsel["secure"] is True
    assert not morsel["httponly"]
    assert morsel["samesite"] == "Strict"
    assert morsel["domain"].lstrip(".") == "example.test"
    assert morsel["path"] == "/app"
    sid = morsel.value
    other = app.test_client()
    other.set_cookie("session", sid)
    assert other.get("/get/user").text == "None"  # read from the configured name only
    other.set_cookie("sid", sid)
    assert other.get("/get/user").text == "alice"
    cleared = other.get("/clear")
    deletion = session_cookie(cleared, "sid")
    assert is_deletion(deletion)
    assert deletion["path"] == "/app" and deletion["domain"].lstrip(".") == "example.test"
    assert files(session_dir) == []


def test_a_non_permanent_session_has_a_browser_session_cookie(make_app: AppFactory) -> None:
    app = add_routes(make_app(SESSION_PERMANENT=False))
    client = app.test_client()
    morsel = session_cookie(client.get("/set/user/alice"))
    assert not morsel["expires"] and not morsel["max-age"]
    # A write sends the (still browser-session) cookie again, as Flask does...
    rewritten = session_cookie(client.get("/set/user/bob"))
    assert not rewritten["expires"] and not rewritten["max-age"]
    # ...while a read leaves it alone: same id, no expiry to refresh.
    response = client.get("/get/user")
    assert response.text == "bob"
    assert "Set-Cookie" not in response.headers


def test_a_view_can_make_the_session_non_permanent(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/permanent").text == "True"  # SESSION_PERMANENT's default
    morsel = session_cookie(client.get("/transient"))
    assert not morsel["expires"]
    assert client.get("/permanent").text == "False"  # kept with the stored session
    assert client.get("/get/t").text == "1"


@pytest.mark.parametrize("refresh", [True, False])
def test_refresh_each_request(make_app: AppFactory, refresh: bool) -> None:
    app = add_routes(make_app(SESSION_REFRESH_EACH_REQUEST=refresh))
    client = app.test_client()
    client.get("/set/user/alice")
    response = client.get("/get/user")
    assert response.text == "alice"
    assert ("Set-Cookie" in response.headers) is refresh


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"SECRET_KEY": None}, "SECRET_KEY"),
        ({"SECRET_KEY": ""}, "SECRET_KEY"),
        ({"SESSION_ID_LENGTH": 15}, "SESSION_ID_LENGTH"),
        ({"SESSION_ID_LENGTH": "32"}, "SESSION_ID_LENGTH"),
        ({"SESSION_DILL_BACKEND": "memcached"}, "SESSION_DILL_BACKEND"),
        ({"SESSION_DILL_BACKEND": 1}, "SESSION_DILL_BACKEND"),
        ({"SESSION_PERMANENT": "yes"}, "SESSION_PERMANENT"),
        ({"SESSION_KEY_PREFIX": 7}, "SESSION_KEY_PREFIX"),
        ({"SESSION_FILE_DIR": 7}, "SESSION_FILE_DIR"),
        ({"SESSION_DILL_POISON_AFTER": 0}, "SESSION_DILL_POISON_AFTER"),
        ({"SESSION_DILL_VERSION": ""}, "SESSION_DILL_VERSION"),
        ({"SESSION_DILL_RENAMES": {"a.B": 3}}, "SESSION_DILL_RENAMES"),
        ({"SESSION_DILL_ENCRYPT": 1}, "SESSION_DILL_ENCRYPT"),
        ({"SESSION_DILL_ABSOLUTE_LIFETIME": -1}, "SESSION_DILL_ABSOLUTE_LIFETIME"),
        ({"SECRET_KEY_FALLBACKS": "old"}, "SECRET_KEY_FALLBACKS"),
        ({"SESSION_DILL_REDIS_WAIT": 1}, "SESSION_DILL_REDIS_WAIT"),
        ({"SESSION_DILL_REDIS_WAIT": (1, 0)}, "SESSION_DILL_REDIS_WAIT"),
        ({"SESSION_DILL_REDIS_WAIT": (True, 100)}, "SESSION_DILL_REDIS_WAIT"),
        ({"SESSION_DILL_REDIS_WAIT": (1, 100, 2)}, "SESSION_DILL_REDIS_WAIT"),
        ({"SESSION_DILL_BACKEND": "redis"}, "SESSION_REDIS"),
        ({"SESSION_DILL_BACKEND": "cachelib"}, "SESSION_CACHELIB"),
    ],
)
def test_config_errors_name_the_key(make_app: AppFactory, config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key) as info:
        make_app(**config)
    assert isinstance(info.value, DillSessionError)


def test_every_key_of_the_table_has_its_default_and_secrets_never_show(
    make_app: AppFactory,
) -> None:
    settings = read_settings(
        {"SECRET_KEY": "s3cr3t-value", "SECRET_KEY_FALLBACKS": ["old-one"]}, "i"
    )
    defaults = {name: getattr(DEFAULTS, name) for name, _ in KEYS.values()}
    chosen = {name: getattr(settings, name) for name, _ in KEYS.values()}
    assert chosen == defaults | {
        "secret_key": "s3cr3t-value",
        "secret_key_fallbacks": ("old-one",),
        "file_dir": os.path.join("i", "flask_dill_session"),
    }
    assert "s3cr3t" not in repr(settings) and "old-one" not in repr(settings)
    assert "s3cr3t" not in repr(interface(make_app(SECRET_KEY="s3cr3t-value")).settings)


def test_the_secret_is_read_as_flask_reads_it(tmp_path: Path) -> None:
    """``app.secret_key``: a Flask subclass may define it (as Flask-WTF's tests do), or it
    may be set on the app; ``SECRET_KEY_FALLBACKS`` comes from the config, as in Flask."""

    class SubclassedFlask(Flask):
        secret_key = "class-secret"

    def build(app: Flask, **config: Any) -> Flask:
        app.config.update(SESSION_TYPE="dill", SESSION_FILE_DIR=str(tmp_path), **config)
        Session(app)
        return add_routes(app)

    first = build(SubclassedFlask(__name__))
    assert "SECRET_KEY" not in first.config or not first.config["SECRET_KEY"]
    client = first.test_client()
    sid = session_cookie(client.get("/set/user/alice")).value

    attribute = Flask(__name__)
    attribute.secret_key = "class-secret"  # the same secret, set as an attribute
    reader = build(attribute).test_client()
    reader.set_cookie("session", sid)
    assert reader.get("/get/user").text == "alice"

    rotated = build(Flask(__name__), SECRET_KEY="new", SECRET_KEY_FALLBACKS=["class-secret"])
    reader = rotated.test_client()
    reader.set_cookie("session", sid)
    assert reader.get("/get/user").text == "alice"  # opened with the fallback

    with pytest.raises(ConfigError, match="SECRET_KEY"):
        build(Flask(__name__))


def test_the_default_file_dir_is_in_the_instance_folder(tmp_path: Path) -> None:
    app = add_routes(Flask(__name__, instance_path=str(tmp_path / "instance")))
    app.config.update(SECRET_KEY="test-secret", SESSION_TYPE="dill")
    Session(app)
    directory = tmp_path / "instance" / "flask_dill_session"
    assert directory.is_dir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    client = app.test_client()
    sid = session_cookie(client.get("/set/user/alice")).value
    assert files(directory) == [stored_path(app, sid)]
    assert str(stored_path(app, sid)).startswith(str(directory) + os.sep)


def test_app_factory_pattern(tmp_path: Path) -> None:
    extension = Session()
    apps = []
    for name in ("one", "two"):
        app = add_routes(Flask(__name__))
        app.config.update(
            SECRET_KEY="test-secret", SESSION_TYPE="dill", SESSION_FILE_DIR=str(tmp_path / name)
        )
        extension.init_app(app)
        assert app.extensions["flask_dill_session"] is extension
        assert isinstance(app.session_interface, DillSessionInterface)
        apps.append(app)
    one, two = apps
    sid = session_cookie(one.test_client().get("/set/user/alice")).value
    assert files(tmp_path / "one") == [stored_path(one, sid)]
    assert files(tmp_path / "two") == []
    client = two.test_client()
    client.set_cookie("session", sid)
    assert client.get("/get/user").text == "None"  # each app has its own store


def test_session_app_registers_itself(app: Flask) -> None:
    extension = app.extensions["flask_dill_session"]
    assert isinstance(extension, Session)
    assert extension.app is app


# -- other SESSION_TYPEs are Flask-Session's ---------------------------------------------


def _delegated_app(session_type: str, tmp_path: Path, *, ours: bool) -> Flask:
    app = add_routes(Flask(__name__))
    app.config.update(TESTING=True, SECRET_KEY="test-secret", SESSION_TYPE=session_type)
    if session_type == "cachelib":
        app.config["SESSION_CACHELIB"] = FileSystemCache(str(tmp_path / "cachelib"))
    else:
        app.config["SESSION_FILE_DIR"] = str(tmp_path / "filesystem")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Flask-Session's own notices
        if ours:
            Session(app)
        else:
            flask_session.Session(app)
    return app


@pytest.mark.parametrize("session_type", ["cachelib", "filesystem"])
def test_other_session_types_are_handed_to_flask_session(tmp_path: Path, session_type: str) -> None:
    app = _delegated_app(session_type, tmp_path / "ours", ours=True)
    reference = _delegated_app(session_type, tmp_path / "reference", ours=False)
    assert type(app.session_interface) is type(reference.session_interface)
    assert type(app.session_interface).__module__.startswith("flask_session.")
    assert not isinstance(app.session_interface, DillSessionInterface)
    assert isinstance(app.extensions["flask_dill_session"], Session)
    client = app.test_client()
    client.get("/set/user/alice")
    assert client.get("/get/user").text == "alice"
    assert files(tmp_path / "ours" / session_type)  # stored by Flask-Session's backend


def test_session_type_unset_means_dill(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(SECRET_KEY="test-secret")
    Session(app)
    assert isinstance(app.session_interface, DillSessionInterface)


@pytest.mark.parametrize(("typo", "hint"), [("dil", "dill"), ("Dlil", "dill"), ("reddis", "redis")])
def test_a_session_type_typo_gets_a_hint(typo: str, hint: str) -> None:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="test-secret", SESSION_TYPE=typo)
    with pytest.raises(ConfigError, match=f'SESSION_TYPE .*did you mean "{hint}"'):
        Session(app)


def test_an_unknown_session_type_names_the_known_ones() -> None:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="test-secret", SESSION_TYPE="zzzzzz")
    with pytest.raises(
        ConfigError, match="SESSION_TYPE 'zzzzzz' is not one of dill, redis"
    ) as info:
        Session(app)
    assert "did you mean" not in str(info.value)


def test_a_file_dir_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file")
    app = Flask(__name__)
    app.config.update(SECRET_KEY="s", SESSION_TYPE="dill", SESSION_FILE_DIR=str(taken))
    with pytest.raises(ConfigError, match=f"SESSION_FILE_DIR '{taken}' cannot hold sessions"):
        Session(app)


def test_a_file_dir_that_cannot_be_written_is_a_config_error(tmpfs: Tmpfs) -> None:
    store = tmpfs.directory / "sessions"
    store.mkdir()
    tmpfs.read_only()
    app = Flask(__name__)
    app.config.update(SECRET_KEY="s", SESSION_TYPE="dill", SESSION_FILE_DIR=str(store))
    with pytest.raises(ConfigError, match="cannot hold sessions: Read-only file system"):
        Session(app)
    missing = tmpfs.directory / "not-yet"  # not there, and cannot be created
    app.config["SESSION_FILE_DIR"] = str(missing)
    with pytest.raises(ConfigError, match=f"SESSION_FILE_DIR '{missing}'"):
        Session(app)
