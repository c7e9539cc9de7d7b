"""Operations: the ``flask dill-session`` commands, the user index, and revoking sessions,
on real stores, through click's runner and as real ``flask`` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from flask_dill_session.cli import cli as cli_group
from flask_dill_session.names import fingerprint

from .apps import ops_app
from .support import (
    ROOT,
    Client,
    RedisClusterServers,
    RedisServer,
    assert_no_ids,
    gunicorn,
    interface,
    run_deploy_app,
)
from .test_deploys import RENAMED, V1

BACKENDS = ["filesystem", "redis", "cluster"]


@pytest.fixture(params=BACKENDS)
def backend_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment that points ``tests.apps.ops_app`` at a fresh store; no Redis key
    names a session id afterwards."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        client = redis.Redis(port=server.port)
        client.flushdb()
        yield {"FDS_REDIS_PORT": str(server.port)}
        assert_no_ids(client)
        client.close()
    elif request.param == "cluster":
        servers: RedisClusterServers = request.getfixturevalue("redis_cluster")
        cluster = servers.client()
        cluster.flushdb()
        yield {"FDS_CLUSTER_PORT": str(servers.nodes[0].port)}
        assert_no_ids(cluster)
        cluster.close()
    else:
        yield {"FDS_SESSION_DIR": str(tmp_path / "sessions")}


@pytest.fixture
def app(backend_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Flask:
    for name, value in backend_env.items():
        monkeypatch.setenv(name, value)
    return ops_app.create_app()


def login(app: Flask, user: str) -> tuple[FlaskClient, str]:
    client = app.test_client()
    response = client.post(f"/login/{user}")
    assert response.status_code == 200
    return client, response.get_json()["sid"]


def cli(app: Flask, *args: str, ref: str | None = None, code: int = 0) -> Any:
    """Run ``dill-session ARGS --json [-- REF]`` through click's runner; its parsed output.
    A session id may start with "-": it goes after "--", as a user must type it."""
    tail = [] if ref is None else ["--", ref]
    result = app.test_cli_runner().invoke(cli_group, [*args, "--json", *tail])
    assert result.exit_code == code, result.output
    return json.loads(result.output) if code == 0 else result.output


def flask_cli(env: dict[str, str], app: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``flask --app APP dill-session ARGS`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", app, "dill-session", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def whoami(client: FlaskClient) -> Any:
    return client.get("/whoami").get_json()


# -- seeing ----------------------------------------------------------------------------------


def test_stats_list_and_show(app: Flask) -> None:
    sids = {user: login(app, user)[1] for user in ("alice", "bob")}
    sids["alice-2"] = login(app, "alice")[1]
    store = interface(app).store
    key_of = interface(app).store_key

    stats = cli(app, "stats")
    assert (stats["live"], stats["expired"], stats["quarantined"]) == (3, 0, 0)
    sizes = sorted(item.size for item in store.items())
    assert stats["bytes"] == sum(sizes) and stats["p99_bytes"] == sizes[-1]
    assert stats["p50_bytes"] == sizes[1] and stats["oldest_created"] is not None

    listed = cli(app, "list")
    expected = {fingerprint(key_of(sid)): user.split("-")[0] for user, sid in sids.items()}
    assert {each["fingerprint"]: each["user"] for each in listed} == expected
    assert all(each["deadline"] > each["last_active"] for each in listed)
    alices = cli(app, "list", "--user", "alice")
    assert sorted(each["fingerprint"] for each in alices) == sorted(
        fingerprint(key_of(sids[name])) for name in ("alice", "alice-2")
    )
    assert len(cli(app, "list", "--limit", "2")) == 2

    for reference in (
        sids["bob"],
        fingerprint(key_of(sids["bob"])),
        fingerprint(key_of(sids["bob"]))[:8],
    ):
        shown = cli(app, "show", ref=reference)
        assert shown["user"] == "bob"
        assert shown["keys"]["user_id"] == {"type": "builtins.str", "repr": "'bob'"}
        assert shown["keys"]["cart"]["type"] == "tests.apps.ops_app.Cart"
        assert "ops-secret" not in json.dumps(shown)
    assert "no stored session" in cli(app, "show", ref="0123456789ab", code=1)


def test_revoke_one_a_user_and_clear(app: Flask) -> None:
    clients = {
        name: login(app, user)
        for name, user in (("a1", "ann"), ("a2", "ann"), ("a3", "ann"), ("b", "ben"))
    }
    key_of = interface(app).store_key

    assert cli(app, "revoke", ref=fingerprint(key_of(clients["a1"][1])))["revoked"] == 1
    assert whoami(clients["a1"][0])["user"] is None, "its next request: a fresh session"
    assert whoami(clients["a2"][0])["user"] == "ann"

    assert cli(app, "revoke", "--user", "ann", "--keep", clients["a3"][1])["revoked"] == 1
    assert whoami(clients["a2"][0])["user"] is None
    assert whoami(clients["a3"][0])["user"] == "ann"
    assert [each["user"] for each in cli(app, "list", "--user", "ann")] == ["ann"]

    assert "--yes" in cli(app, "clear", code=2)
    assert cli(app, "clear", "--yes")["cleared"] >= 2
    assert cli(app, "list") == []
    assert whoami(clients["b"][0])["user"] is None


def test_the_command_line_as_a_real_process(backend_env: dict[str, str], app: Flask) -> None:
    _, sid = login(app, "dora")
    result = flask_cli(backend_env, "tests.apps.ops_app", "list", "--json")
    assert result.returncode == 0, result.stderr
    [listed] = json.loads(result.stdout)
    assert listed["user"] == "dora"
    assert listed["fingerprint"] == fingerprint(interface(app).store_key(sid))
    missing = flask_cli(backend_env, "tests.apps.ops_app", "show", "ffffffffffff")
    assert missing.returncode == 1 and "no stored session" in missing.stderr


def test_the_user_index_is_read_without_loading_sessions(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    sids = {login(app, "erin")[1] for _ in range(2)}
    login(app, "gus")
    with app.app_context():
        infos = interface(app).sessions_of("erin")
    key_of = interface(app).store_key
    assert {info.fingerprint for info in infos} == {fingerprint(key_of(sid)) for sid in sids}
    assert {info.user for info in infos} == {"erin"}
    # Another app on the same store with another secret: the index still answers.
    monkeypatch.setattr(ops_app, "Cart", None)  # and no session could be unpickled
    other = ops_app.create_app()
    other.config["SECRET_KEY"] = "another"
    with other.app_context():
        assert len(interface(other).sessions_of("erin")) == 2


# -- verify: a pre-deploy dry run -----------------------------------------------------------


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def shop_env(tmp_path: Path, shop: str) -> dict[str, str]:
    shop_dir = tmp_path / f"shop-{abs(hash(shop))}"
    shop_dir.mkdir(exist_ok=True)
    (shop_dir / "shop.py").write_text(shop)
    return {"SHOP_DIR": str(shop_dir)}


def test_verify_reports_what_a_renamed_class_would_drop_and_changes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "sessions"
    for _ in range(2):
        run_deploy_app(tmp_path, V1, "login", str(store))
    app = f"tests.apps.deploy_app:create_app({str(store)!r})"
    before = snapshot(store)

    same = flask_cli(shop_env(tmp_path, V1), app, "verify", "--json")
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout) == {"outcomes": {"loads": 2}, "problems": []}

    renamed = flask_cli(shop_env(tmp_path, RENAMED), app, "verify", "--json")
    assert renamed.returncode == 1, renamed.stderr
    report = json.loads(renamed.stdout)
    assert report["outcomes"] == {"would drop keys": 2}
    for problem in report["problems"]:
        assert list(problem["dropped"]) == ["cart"]
        assert "shop.Cart" in problem["dropped"]["cart"]
    assert snapshot(store) == before, "verify wrote nothing"


# -- quarantine ----------------------------------------------------------------------------


def test_quarantine_list_show_restore_and_purge(tmp_path: Path) -> None:
    store = tmp_path / "sessions"
    sid, _ = run_deploy_app(tmp_path, V1, "login", str(store))
    run_deploy_app(tmp_path, RENAMED, "show", str(store), sid)  # drops the cart, keeps a copy
    app = f"tests.apps.deploy_app:create_app({str(store)!r})"
    v1, v2 = shop_env(tmp_path, V1), shop_env(tmp_path, RENAMED)

    listed = json.loads(flask_cli(v2, app, "quarantine", "list", "--json").stdout)
    [entry] = listed
    assert entry["outcome"] == "would drop keys"
    key = "session:" + sid
    assert entry["fingerprint"] == fingerprint(key)
    refused = flask_cli(v2, app, "quarantine", "restore", entry["id"])
    assert refused.returncode == 1 and "would drop keys" in refused.stderr

    shown = json.loads(flask_cli(v1, app, "quarantine", "show", entry["id"], "--json").stdout)
    assert shown["keys"]["cart"]["type"] == "shop.Cart"
    exists = flask_cli(v1, app, "quarantine", "restore", entry["id"])
    assert exists.returncode == 1 and "exists again" in exists.stderr
    assert flask_cli(v1, app, "revoke", entry["fingerprint"]).returncode == 0
    restored = flask_cli(v1, app, "quarantine", "restore", entry["id"], "--json")
    assert restored.returncode == 0, restored.stderr
    body, _ = run_deploy_app(tmp_path, V1, "show", str(store), sid)
    assert json.loads(body)["body"]["cart"] == ["Cart", ["apple"], 1], "the cart is back"

    run_deploy_app(tmp_path, RENAMED, "show", str(store), sid)  # quarantined once more
    kept = json.loads(
        flask_cli(v1, app, "quarantine", "purge", "--older-than", "1d", "--json").stdout
    )
    assert kept == {"purged": 0}
    assert json.loads(flask_cli(v1, app, "quarantine", "purge", "--json").stdout) == {"purged": 1}
    assert json.loads(flask_cli(v1, app, "quarantine", "list", "--json").stdout) == []


# -- log out other devices, through real HTTP ----------------------------------------------


@pytest.fixture
def server(backend_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    flags = tmp_path / "flags"
    flags.mkdir()
    env = {**backend_env, "FDS_FLAG_DIR": str(flags), "PYTHONPATH": str(ROOT)}
    running = gunicorn(tmp_path, "tests.apps.ops_app:create_app()", env, workers=2)
    yield running, flags
    running.stop()


def test_log_out_other_devices_even_one_in_flight(server: tuple[Any, Path]) -> None:
    running, flags = server
    phone, laptop, tablet = (Client(running.url) for _ in range(3))
    for device in (phone, laptop, tablet):
        assert device.post("/login/fay")[0] == 200

    held: list[tuple[int, str, dict[str, str]]] = []
    thread = threading.Thread(target=lambda: held.append(tablet.get("/hold")))
    thread.start()
    try:
        while not (flags / "holding").exists():  # the tablet's request holds its session
            assert thread.is_alive(), held
            thread.join(0.01)
        status, body, _ = phone.post("/logout-others")
        assert (status, json.loads(body)) == (200, {"revoked": 2})
    finally:
        (flags / "release").touch()
        thread.join(60)
    assert held[0][:2] == (200, "held")

    assert json.loads(phone.get("/whoami")[1])["user"] == "fay"
    assert json.loads(laptop.get("/whoami")[1]) == {"user": None, "held": False}
    tablet_now = json.loads(tablet.get("/whoami")[1])
    assert tablet_now == {"user": None, "held": False}, "the in-flight write was not applied"


def wait_for(flag: Path, thread: threading.Thread) -> None:
    """Until the server creates *flag* (the request in *thread* reached that point)."""
    while not flag.exists():
        assert thread.is_alive(), "the request ended before it got there"
        thread.join(0.01)


def test_a_login_keeps_a_parallel_request_of_the_old_id_served_read_only(
    server: tuple[Any, Path],
) -> None:
    running, flags = server
    browser = Client(running.url)
    assert browser.post("/visit")[0] == 200
    old = browser.cookie()
    tab = browser.clone()  # a parallel request of the same page, with the old id
    answers: dict[str, tuple[int, str, dict[str, str]]] = {}
    login = threading.Thread(target=lambda: answers.update(login=browser.post("/slow-login/zoe")))
    peek = threading.Thread(target=lambda: answers.update(peek=tab.get("/peek")))
    login.start()
    try:
        wait_for(flags / "login-holding", login)  # the login holds the old id's lock
        peek.start()
        wait_for(flags / "arrived", peek)  # the parallel request is about to wait for it
    finally:
        (flags / "release").touch()
        login.join(60)
        peek.join(60)

    status, body, headers = answers["peek"]
    assert (status, json.loads(body)) == (200, {"user": None, "cart": ["pear"]})
    assert "Set-Cookie" not in headers, "the old id's answer never overwrites the new cookie"
    assert answers["login"][0] == 200
    new = browser.cookie()
    assert new is not None and new != old
    assert json.loads(browser.get("/peek")[1]) == {"user": "zoe", "cart": ["pear"]}


def test_a_store_without_an_index_refuses_the_user_key() -> None:
    import cachelib

    from flask_dill_session import ConfigError, Session

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="s",
        SESSION_DILL_BACKEND="cachelib",
        SESSION_CACHELIB=cachelib.SimpleCache(),
        SESSION_DILL_USER_KEY="user_id",
    )
    with pytest.raises(ConfigError, match="SESSION_DILL_USER_KEY: the cachelib backend keeps"):
        Session(app)


@pytest.mark.parametrize("how", ["click-runner", "process"])
def test_every_command(backend_env: dict[str, str], app: Flask, how: str) -> None:
    """Each command once through click's runner and once as a real ``flask --app ...
    dill-session`` process; its ``--json`` parsed, its exit code checked."""
    _, kept = login(app, "hal")
    _, gone = login(app, "hal")
    key_of = interface(app).store_key

    def run(*args: str, code: int = 0) -> Any:
        if how == "process":
            result = flask_cli(backend_env, "tests.apps.ops_app", *args)
            returncode, out, err = result.returncode, result.stdout, result.stderr
        else:
            invoked = app.test_cli_runner().invoke(cli_group, list(args))
            returncode, out, err = invoked.exit_code, invoked.stdout, invoked.output
        assert returncode == code, err
        return json.loads(out) if code == 0 else err

    assert run("stats", "--json")["live"] == 2
    assert {each["user"] for each in run("list", "--user", "hal", "--json")} == {"hal"}
    shown = run("show", "--json", "--", gone)
    assert shown["fingerprint"] == fingerprint(key_of(gone))
    assert run("verify", "--json") == {"outcomes": {"loads": 2}, "problems": []}
    assert run("quarantine", "list", "--json") == []
    assert run("quarantine", "purge", "--json") == {"purged": 0}
    assert "removed" in run("cleanup", "--json")
    assert run("revoke", "--user", "hal", "--keep", kept, "--json") == {"revoked": 1}
    assert "--yes" in run("clear", code=2)
    assert run("clear", "--yes", "--json")["cleared"] == 1
    assert run("list", "--json") == []
