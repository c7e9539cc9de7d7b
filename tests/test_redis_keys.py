"""Redis key names: a keyed hash of the id in a hash tag, one slot per session, and sessions
found under a former key (an earlier release's, a fallback secret's) moved once. Against a
real ``redis-server`` and a real 3-master cluster."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from redis.cluster import RedisCluster
from redis.crc import key_slot

from flask_dill_session.cli import cli
from flask_dill_session.envelope import Envelope
from flask_dill_session.stores._keys import KeyNames
from flask_dill_session.stores.redis import RedisStore

from .support import RedisClusterServers, fixed_ids, interface, redis_store_of
from .test_redis import SECRET, counter_app

AppFactory = Callable[..., Flask]
Client = redis.Redis | RedisCluster

SID = "4mQ7nR2xT9vB1cK8pL5sD3fG6hJ0aZyXwVuEtSrQoNm"
KEY = "session:" + SID


@pytest.fixture(params=["redis", "redis-cluster"])
def any_client(request: pytest.FixtureRequest) -> Client:
    """The shared server's client, then the shared cluster's."""
    name = "cluster_client" if request.param == "redis-cluster" else "client"
    result: Client = request.getfixturevalue(name)
    return result


def sid_of(browser: FlaskClient) -> str:
    cookie = browser.get_cookie("session")
    assert cookie is not None
    return cookie.value


def as_earlier_release(client: Client, store: RedisStore, key: str) -> None:
    """Store *key*'s session where an earlier release kept it: under the store key itself."""
    name = store.session_key(key)
    blob, ttl = client.get(name), client.pttl(name)
    assert isinstance(blob, bytes) and ttl > 0
    client.delete(name)  # two commands: the keys may be in different slots
    client.set(key, blob, px=ttl)


# -- names -------------------------------------------------------------------------------


def test_names_hide_the_id_share_one_slot_and_depend_on_the_secret() -> None:
    names = KeyNames(SECRET)
    session, lock, strikes = names.of(KEY)
    quarantine = names.quarantine(KEY, b"blob")
    assert re.fullmatch(r"session:\{[0-9a-f]{32}\}", session)  # the prefix is not braced
    assert (lock, strikes) == ("lock:" + session, "strikes:" + session)
    assert re.fullmatch(
        re.escape(f"quarantine:{session}:") + r"[0-9a-f]{12}:[0-9a-f]{16}", quarantine
    )
    for name in (session, lock, strikes, quarantine):
        assert SID not in name and SID[:8] not in name
    assert len({key_slot(name.encode()) for name in (session, lock, strikes, quarantine)}) == 1
    assert KeyNames("another secret").session(KEY) != session
    assert KeyNames("new", ["old", SECRET]).former(KEY) == [
        KEY,
        KeyNames("old").session(KEY),
        session,
    ]
    slots = {key_slot(names.session(f"session:{n:043d}").encode()) for n in range(64)}
    assert len(slots) == 64  # sessions land on slots of their own, so on every master


# -- former keys ----------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("locking", [True, False])
def test_a_session_of_an_earlier_release_is_read_once_then_kept_under_its_hashed_key(
    any_client: Client, make_app: AppFactory, locking: bool
) -> None:
    app = counter_app(make_app, any_client, SESSION_DILL_LOCKING=locking)
    store = redis_store_of(app)
    browser = app.test_client()
    assert browser.get("/count").text == "1"
    key = interface(app).store_key(sid_of(browser))
    as_earlier_release(any_client, store, key)
    ttl = any_client.pttl(key)
    assert browser.get("/count").text == "2"  # found under the old key, moved, then written
    assert not any_client.exists(key)
    name = store.session_key(key)
    assert any_client.pttl(name) > 0 and any_client.exists(name)
    assert ttl > 0
    assert browser.get("/count").text == "3"
    assert any_client.keys("lock:*") == []


@pytest.mark.redis
def test_a_moved_session_that_was_logged_out_is_not_brought_back(any_client: Client) -> None:
    store = RedisStore(any_client, secret=SECRET, lock_timeout=2)
    any_client.set(KEY, b"a blob of an earlier release", px=60_000)
    entry = store.open(KEY, lock=True)
    assert entry.blob == b"a blob of an earlier release"
    entry.delete()  # logout
    assert not store.former.move(KEY, store.session_key(KEY))  # a late reader finds nothing
    assert store.open(KEY, lock=False).blob is None
    assert any_client.keys("*") == []


@pytest.mark.redis
def test_a_session_named_under_a_fallback_secret_is_moved_and_resealed(
    any_client: Client, make_app: AppFactory
) -> None:
    old = counter_app(make_app, any_client)
    browser = old.test_client()
    assert browser.get("/count").text == "1"
    key = interface(old).store_key(sid_of(browser))
    old_name = redis_store_of(old).session_key(key)
    rotated = counter_app(make_app, any_client, SECRET_KEY="new", SECRET_KEY_FALLBACKS=[SECRET])
    new_name = redis_store_of(rotated).session_key(key)
    assert new_name != old_name
    browser = rotated.test_client()
    browser.set_cookie("session", key.removeprefix("session:"))
    assert browser.get("/get").text == "1"  # a read: moved, and re-sealed with the new secret
    assert not any_client.exists(old_name)
    blob = any_client.get(new_name)
    assert isinstance(blob, bytes)
    assert Envelope("new").open(key, blob).current_key
    assert browser.get("/count").text == "2"


@pytest.mark.redis
def test_cleanup_moves_every_session_of_an_earlier_release_from_every_primary(
    any_client: Client, make_app: AppFactory, request: pytest.FixtureRequest
) -> None:
    app = counter_app(make_app, any_client)
    fixed_ids(app)  # their keys of an earlier release land on every master
    store = redis_store_of(app)
    browsers = [app.test_client() for _ in range(60)]
    keys = []
    for browser in browsers:
        assert browser.get("/count").text == "1"
        keys.append(interface(app).store_key(sid_of(browser)))
        as_earlier_release(any_client, store, keys[-1])
    if isinstance(any_client, RedisCluster):  # the old keys sit on every master
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        for node in cluster.nodes:
            with node.client() as direct:
                held = {raw.decode() for raw in direct.scan_iter(match="session:*")}
            assert held & set(keys), f"no session of an earlier release on {node.port}"
    result = app.test_cli_runner().invoke(cli, ["cleanup"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        "moved 60 sessions stored under their ids to hashed keys from RedisStore in "
    )
    assert not any(any_client.exists(key) for key in keys)
    assert all(browser.get("/count").text == "2" for browser in browsers)
    assert app.test_cli_runner().invoke(cli, ["cleanup"]).output.startswith("moved 0 sessions")


@pytest.mark.redis
def test_cleanup_leaves_keys_that_are_not_sessions_of_an_earlier_release(
    client: redis.Redis,
) -> None:
    store = RedisStore(client, secret=SECRET, key_prefix="s[1]*:")
    others: dict[str, Any] = {
        "s[1]*:short": b"not an id",
        "s[1]*:" + SID + ":x": b"more than an id",
        "sX1]*:" + SID: b"another prefix",
    }
    for name, value in others.items():
        client.set(name, value)
    client.set("s[1]*:" + SID, b"an id")
    assert store.cleanup() == 1
    assert client.get(store.session_key("s[1]*:" + SID)) == b"an id"
    assert all(client.get(name) == value for name, value in others.items())
    client.delete(*others)
