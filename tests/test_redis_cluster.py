"""The Redis backend on a real 3-master Redis Cluster (``redis-server --cluster-enabled``,
joined by ``redis-cli --cluster create``): sessions spread over every master, exact counts
from two app servers, a slot moved under a client, a master down, and ``WAIT``. The shared
behaviour suite runs over the cluster in ``test_backends.py``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from flask_dill_session.exc import StoreUnavailableError
from flask_dill_session.stores._clients import node_of as node_client

from .support import (
    ROOT,
    RedisClusterServers,
    RedisServer,
    fixed_ids,
    gunicorn,
    interface,
    redis_store_of,
)
from .test_redis import SECRET, counter_app, fetch

AppFactory = Callable[..., Flask]

pytestmark = pytest.mark.redis


def node_of(cluster: RedisClusterServers, client: RedisCluster, name: str) -> RedisServer:
    """The master that holds key *name*."""
    port = node_client(client, name).get_connection_kwargs()["port"]
    return next(node for node in cluster.nodes if node.port == port)


def test_the_store_names_the_cluster_nodes(
    redis_cluster: RedisClusterServers, cluster_client: RedisCluster, make_app: AppFactory
) -> None:
    app = counter_app(make_app, cluster_client)
    nodes = sorted(f"127.0.0.1:{node.port}" for node in redis_cluster.nodes)
    assert redis_store_of(app).address == "cluster " + ",".join(nodes)


def test_200_sessions_spread_over_all_three_masters(
    redis_cluster: RedisClusterServers, cluster_client: RedisCluster, make_app: AppFactory
) -> None:
    app = counter_app(make_app, cluster_client)
    fixed_ids(app)
    store = redis_store_of(app)
    browsers = [app.test_client() for _ in range(200)]
    for browser in browsers:
        assert browser.get("/count").text == "1"
    held = []
    for node in redis_cluster.nodes:
        with node.client() as direct:
            held.append(sum(1 for _ in direct.scan_iter(match="session:{*", count=1000)))
    assert sum(held) == 200
    assert min(held) >= 50, f"sessions per master: {held}"
    for browser in browsers:  # every one goes on, locking on its own master
        assert browser.get("/count").text == "2"
        cookie = browser.get_cookie("session")
        assert cookie is not None
        key = interface(app).store_key(cookie.value)
        names = [*store.names.of(key), store.quarantine_key(key, b"blob")]
        assert len({key_slot(name.encode()) for name in names}) == 1
    assert cluster_client.keys("lock:*") == []


def test_exact_counts_from_two_app_servers_incrementing_at_once(
    redis_cluster: RedisClusterServers, cluster_client: RedisCluster, tmp_path: Path
) -> None:
    env = {
        "FDS_REDIS_URL": f"redis://127.0.0.1:{redis_cluster.nodes[0].port}/0",
        "FDS_REDIS_CLUSTER": "1",
        "FLASK_SECRET_KEY": SECRET,
        "FLASK_SESSION_DILL_LOCK_TIMEOUT": "30",
        "PYTHONPATH": str(ROOT),
    }
    servers = []
    for name in "ab":
        (tmp_path / name).mkdir()
        servers.append(gunicorn(tmp_path / name, "tests.apps.redis_app:create_app()", env))
    try:
        urls = [server.url for server in servers]
        sids = []
        for _ in range(6):
            status, _, sid = fetch(urls[0] + "/start")
            assert status == 200 and sid is not None
            sids.append(sid)
        per_session, rounds = 3, 10
        failures: list[str] = []

        def work(sid: str, n: int) -> None:
            for i in range(rounds):
                status, text, _ = fetch(urls[(n + i) % 2] + "/count", sid)
                if status != 200:
                    failures.append(f"{status} {text}")

        threads = [
            threading.Thread(target=work, args=(sid, n)) for sid in sids for n in range(per_session)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        for sid in sids:
            assert fetch(urls[1] + "/get", sid)[1] == str(per_session * rounds)
    finally:
        for server in servers:
            server.stop()


def test_a_session_whose_slot_moved_to_another_master_is_still_served(
    redis_cluster: RedisClusterServers, cluster_client: RedisCluster, make_app: AppFactory
) -> None:
    """The app's client still maps the slot to its old master: Redis answers ``MOVED``, the
    client follows it."""
    app = counter_app(make_app, cluster_client)
    browser = app.test_client()
    assert browser.get("/count").text == "1"
    cookie = browser.get_cookie("session")
    assert cookie is not None
    name = redis_store_of(app).session_key(interface(app).store_key(cookie.value))
    slot = key_slot(name.encode())
    source = node_of(redis_cluster, cluster_client, name)
    target = next(node for node in redis_cluster.nodes if node is not source)
    ids = {}
    for node in redis_cluster.nodes:
        with node.client() as direct:
            ids[node.port] = direct.execute_command("CLUSTER", "MYID").decode()
    with source.client() as src, target.client() as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    for node in redis_cluster.nodes:
        with node.client() as direct:
            direct.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
    redis_cluster.wait_ok()
    assert browser.get("/count").text == "2"
    assert node_of(redis_cluster, cluster_client, name) is target


def test_a_master_down_is_503_never_500_and_the_cluster_recovers(
    tmp_path: Path, make_app: AppFactory
) -> None:
    cluster = RedisClusterServers(tmp_path / "cluster")
    try:
        client = RedisCluster(
            host="127.0.0.1",
            port=cluster.nodes[0].port,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 1),
        )
        app = counter_app(make_app, client)
        browsers = [app.test_client() for _ in range(30)]
        victim = cluster.nodes[2]
        on_victim = []
        for browser in browsers:
            assert browser.get("/count").text == "1"
            cookie = browser.get_cookie("session")
            assert cookie is not None
            name = redis_store_of(app).session_key(interface(app).store_key(cookie.value))
            on_victim.append(node_of(cluster, client, name) is victim)
        assert any(on_victim) and not all(on_victim)
        victim.stop()
        statuses = []
        for browser in browsers:
            try:
                response = browser.get("/count")
                statuses.append(response.status_code)
                assert response.status_code == 200 or response.headers["Retry-After"] == "1"
            except Exception as exc:  # TESTING: an unhandled error would be a 500
                statuses.append(500)
                logging.getLogger(__name__).error("unhandled: %r", exc)
        assert 500 not in statuses
        assert all(status == 503 for status, lost in zip(statuses, on_victim, strict=True) if lost)
        victim.restart()  # its slots come back empty (no persistence): those sessions restart
        cluster.wait_ok()
        expected = [
            "1" if lost else str(2 + (status == 200))
            for status, lost in zip(statuses, on_victim, strict=True)
        ]
        assert [browser.get("/count").text for browser in browsers] == expected
        client.close()
    finally:
        cluster.stop()


def test_wait_without_enough_replicas_is_a_503_naming_the_count(
    cluster_client: RedisCluster, make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The cluster here has no replicas: ``WAIT 1`` on the master that wrote finds none."""
    app = counter_app(make_app, cluster_client, SESSION_DILL_REDIS_WAIT=(1, 50))
    with caplog.at_level(logging.ERROR, logger="flask_dill_session"):
        response = app.test_client().get("/count")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "0 of the 1 replicas asked for (SESSION_DILL_REDIS_WAIT) confirmed it within 50 ms" in (
        caplog.text
    )
    store = redis_store_of(app)
    entry = store.new("session:" + "w" * 43)
    with pytest.raises(StoreUnavailableError) as caught:
        entry.write(b"blob", 60)
    assert caught.value.cause == "0 of 1 replicas confirmed the change within 50 ms"
    assert cluster_client.get(store.session_key(entry.key)) == b"blob"  # written on the master
    cluster_client.delete(store.session_key(entry.key))
