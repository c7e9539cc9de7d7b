"""The Redis backend under Sentinel (one master, one replica, one ``redis-server
--sentinel``), all real processes: clients made by ``master_for``, ``WAIT`` on the
connection that wrote, and a failover forced with ``SENTINEL FAILOVER`` while clients
increment their counters."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from flask_dill_session.exc import StoreUnavailableError
from flask_dill_session.stores.redis import RedisStore

from .support import (
    SERVICE,
    RedisSentinelServers,
    assert_no_ids,
    interface,
    redis_store_of,
    wait_for,
)
from .test_redis import SECRET, CountingConnection, counter_app

AppFactory = Callable[..., Flask]

pytestmark = pytest.mark.redis


def master_for(servers: RedisSentinelServers) -> redis.Redis:
    """A client of the service's master, found through the sentinel (again after an error:
    one retry, which asks the sentinel anew)."""
    client = servers.sentinels().master_for(  # type: ignore[no-untyped-call]
        SERVICE, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 1)
    )
    assert isinstance(client, redis.Redis)
    return client


@pytest.fixture
def servers(redis_sentinel: RedisSentinelServers) -> Iterator[RedisSentinelServers]:
    """The shared Sentinel setup, its master emptied and the replica caught up; no key may
    hold a session id when the test ends."""
    with redis_sentinel.master().client() as master:
        master.flushdb()
        assert master.wait(1, 5000) == 1
    yield redis_sentinel
    with redis_sentinel.master().client() as master:
        assert_no_ids(master)


def sid_of(browser: FlaskClient) -> str:
    cookie = browser.get_cookie("session")
    assert cookie is not None
    return cookie.value


def test_sessions_are_served_through_sentinel_which_log_lines_name(
    servers: RedisSentinelServers, make_app: AppFactory
) -> None:
    app = counter_app(make_app, master_for(servers))
    assert redis_store_of(app).address == (
        f"sentinel service {SERVICE} via 127.0.0.1:{servers.sentinel_port}/0"
    )
    browser = app.test_client()
    assert [browser.get("/count").text for _ in range(3)] == ["1", "2", "3"]
    name = redis_store_of(app).session_key(interface(app).store_key(sid_of(browser)))
    with servers.master().client() as master:
        assert master.exists(name)


def test_wait_holds_each_write_until_the_replica_has_it_and_answers_503_when_it_does_not(
    servers: RedisSentinelServers, make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """``WAIT`` goes on the connection that wrote: another connection would count the frozen
    replica, still connected, at once."""
    app = counter_app(make_app, master_for(servers), SESSION_DILL_REDIS_WAIT=(1, 300))
    browser = app.test_client()
    assert [browser.get("/count").text for _ in range(2)] == ["1", "2"]
    replica = servers.replica()
    replica.freeze()
    try:
        with caplog.at_level(logging.ERROR, logger="flask_dill_session"):
            response = browser.get("/count")
        assert response.status_code == 503
        assert "0 of the 1 replicas asked for (SESSION_DILL_REDIS_WAIT)" in caplog.text
        assert browser.get("/noop").status_code == 200  # requests without a write go on
    finally:
        replica.thaw()
    assert browser.get("/count").text == "4"  # the unconfirmed write stood on the master
    name = redis_store_of(app).session_key(interface(app).store_key(sid_of(browser)))
    with replica.client() as direct:
        wait_for(lambda: direct.exists(name) == 1, "the replica catching up")


def test_wait_costs_no_round_trip_of_its_own(
    servers: RedisSentinelServers, make_app: AppFactory
) -> None:
    pool = redis.ConnectionPool(
        connection_class=CountingConnection, port=servers.master().port, socket_timeout=5
    )
    app = counter_app(make_app, redis.Redis(connection_pool=pool), SESSION_DILL_REDIS_WAIT=(1, 500))
    browser = app.test_client()
    assert [browser.get("/count").text for _ in range(3)] == ["1", "2", "3"]  # scripts loaded
    CountingConnection.sends = 0
    assert browser.get("/count").text == "4"
    assert CountingConnection.sends == 2  # lock and read; write, release and WAIT


class Incrementer:
    """A thread that sends ``/count`` for one session until stopped, noting every answer
    (an unhandled exception, which would be a 500, as 500)."""

    def __init__(self, app: Flask) -> None:
        self.browser = app.test_client()
        assert self.browser.get("/count").text == "1"
        self.answers: list[tuple[int, str]] = [(200, "1")]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                response = self.browser.get("/count")
                self.answers.append((response.status_code, response.text))
            except Exception as exc:
                self.answers.append((500, repr(exc)))

    def counts(self, since: int = 0) -> list[int]:
        """The counts answered 200 since answer *since*."""
        return [int(text) for status, text in self.answers[since:] if status == 200]


@pytest.mark.parametrize("wait", [None, (1, 500)], ids=["no-wait", "wait"])
def test_a_failover_while_clients_increment(
    servers: RedisSentinelServers, make_app: AppFactory, wait: tuple[int, int] | None
) -> None:
    config: dict[str, Any] = {"SESSION_DILL_LOCK_TIMEOUT": 2, "SESSION_DILL_LOCK_LEASE": 5}
    app = counter_app(make_app, master_for(servers), SESSION_DILL_REDIS_WAIT=wait, **config)
    store = redis_store_of(app)

    # A request that will hold a lock taken on the old master after the promotion: its
    # client's one connection reaches the master before the failover.
    browser = app.test_client()
    assert browser.get("/count").text == "1"
    key = interface(app).store_key(sid_of(browser))
    with servers.master().client() as master:
        assert master.wait(1, 5000) == 1
    stale = RedisStore(master_for(servers), secret=SECRET, lock_timeout=2, lock_lease=30)
    stale.open(key, lock=False).release()

    incrementers = [Incrementer(app) for _ in range(4)]
    for each in incrementers:
        each.thread.start()
    wait_for(lambda: all(len(each.counts()) >= 5 for each in incrementers), "counting")

    old, new = servers.start_failover()
    wait_for(lambda: new.info("replication")["role"] == "master", "the promotion")
    held = stale.open(key, lock=True)  # through its connection to the old master
    assert held.blob is not None
    with old.client() as on_old, new.client() as on_new:
        assert on_old.exists(store.lock_key(key)) and not on_new.exists(store.lock_key(key))
    wait_for(lambda: servers.master() is new, "the sentinel naming the new master")
    newer = counter_app(make_app, master_for(servers)).test_client()
    newer.set_cookie("session", sid_of(browser))
    assert newer.get("/count").text == "2"  # on the new master, which never saw that lock

    servers.wait_failover(old, new)  # the old master is a replica of the new one now
    with pytest.raises(StoreUnavailableError, match="its lock was no longer held") as refused:
        held.write(b"written under a lock the failover lost", 60)
    assert refused.value.cause == "lock lost"
    assert newer.get("/get").text == "2"  # the newer data stands

    marks = [len(each.answers) for each in incrementers]
    wait_for(
        lambda: all(each.counts(mark) for each, mark in zip(incrementers, marks, strict=True)),
        "every session answered by the new master",
    )
    for each in incrementers:
        each.stop.set()
        each.thread.join(30)
    for each, mark in zip(incrementers, marks, strict=True):
        assert [status for status, _ in each.answers if status not in (200, 503)] == []
        after = each.counts(mark)
        assert after == sorted(set(after))  # one write after the other, on one master
        final = int(each.browser.get("/get").text)
        assert final == after[-1]
        if wait is not None:  # no answered write was lost
            assert final >= max(each.counts())
        name = store.session_key(interface(app).store_key(sid_of(each.browser)))
        with new.client() as on_new:
            assert on_new.exists(name)
