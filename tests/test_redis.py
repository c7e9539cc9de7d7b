"""The Redis backend: round trips, lock ownership and leases, several app processes sharing
one Redis, and a Redis that stops or stalls. All against real ``redis-server`` processes."""

from __future__ import annotations

import contextlib
import ctypes
import http.cookies
import logging
import os
import secrets
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask, session
from redis._parsers.encoders import Encoder
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import PythonRespSerializer
from redis.retry import Retry

from flask_dill_session import ConfigError, DillSessionInterface
from flask_dill_session.exc import LockTimeoutError, StoreUnavailableError
from flask_dill_session.stores._clients import key_encoding
from flask_dill_session.stores._connections import _CUTOFF, packed
from flask_dill_session.stores._keys import KeyNames
from flask_dill_session.stores._lock import _tokens
from flask_dill_session.stores.base import fingerprint
from flask_dill_session.stores.redis import RedisStore

from .apps.redis_app import redis_client
from .support import (
    ROOT,
    RedisClusterServers,
    RedisServer,
    Server,
    free_port,
    gunicorn,
    redis_store_of,
)
from .support import interface as app_interface

AppFactory = Callable[..., Flask]

pytestmark = pytest.mark.redis

SECRET = "redis-test-secret"
KEY = "session:4mQ7nR2xT9vB1cK8pL5sD3fG6hJ0aZyXwVuEtSrQoNm"
NAME = KeyNames(SECRET).session(KEY)  # KEY's Redis key


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll *condition* until it holds; fail naming *what* if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.01)


@pytest.fixture
def private_redis(redis_server: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, which it may stop, restart or freeze."""
    server = RedisServer(tmp_path / "private-redis")
    yield server
    server.stop()  # thawed first, in case the test froze it


def counter_app(make_app: AppFactory, client: redis.Redis | RedisCluster, **config: Any) -> Flask:
    """The counter app on *client*; *config* overrides (``SECRET_KEY`` too)."""
    settings = {"SECRET_KEY": SECRET, "SESSION_DILL_BACKEND": "redis", "SESSION_REDIS": client}
    app = make_app(**(settings | config))

    @app.route("/count")
    def count() -> str:
        session["x"] = session.get("x", 0) + 1
        return str(session["x"])

    @app.route("/get")
    def get() -> str:
        return str(session.get("x"))

    @app.route("/noop")
    def noop() -> str:
        return "ok"

    return app


# -- round trips ---------------------------------------------------------------------------


class CountingConnection(redis.Connection):
    """A connection that counts what it sends: one send is one round trip."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("locking", [True, False])
def test_round_trips_per_request(
    redis_server: RedisServer, client: redis.Redis, make_app: AppFactory, locking: bool
) -> None:
    pool = redis.ConnectionPool(
        connection_class=CountingConnection, port=redis_server.port, socket_timeout=5
    )
    counted = redis.Redis(connection_pool=pool)
    app = counter_app(make_app, counted, SESSION_DILL_LOCKING=locking)
    browser = app.test_client()
    for path in ("/count", "/count", "/get", "/noop"):  # connect, load the scripts
        assert browser.get(path).status_code == 200
    stranger = app.test_client()
    stranger.set_cookie("session", app_interface(app).generate_sid())
    assert stranger.get("/count").status_code == 200  # an unknown id: load that script too

    def cost(path: str, cookie: str | None = None) -> tuple[int, dict[str, int]]:
        """Round trips of one request, and the Redis commands it ran (scripts included)."""
        if cookie is not None:
            browser.set_cookie("session", cookie)
        before = {k: v["calls"] for k, v in client.info("commandstats").items()}
        CountingConnection.sends = 0
        assert browser.get(path).status_code == 200
        sends = CountingConnection.sends
        after = {k: v["calls"] for k, v in client.info("commandstats").items()}
        ran = {k[8:]: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
        ran.pop("info", None)
        return sends, ran

    assert cost("/noop") == (0, {})
    trips, ran = cost("/get")  # read, unchanged: touched with PEXPIRE, never rewritten
    assert trips == 2
    assert ran.get("pexpire") == 1
    assert ran.get("set", 0) == locking  # only the lock's SET NX: the session is not rewritten
    trips, ran = cost("/count")  # read, changed: one SET
    assert trips == 2
    assert ran.get("set", 0) == 1 + locking  # with locking, the lock's SET NX as well
    browser.delete_cookie("session")
    assert cost("/count")[0] == 1  # a new session: SET NX, nothing to read
    interface = app.session_interface
    assert isinstance(interface, DillSessionInterface)
    unknown = interface.generate_sid()
    # An unknown id: one read, one look under its former key, then a new session; with
    # locking, the lock taken with the read is released before the look.
    assert cost("/count", unknown)[0] == 3 + locking
    assert client.keys("lock:*") == []


# -- the store's own connections -------------------------------------------------------------


def _connected_clients(client: redis.Redis) -> int:
    return len(client.client_list(_type="normal"))


#: How a server forks its workers: Python's ``os.fork`` (gunicorn), or the C library's,
#: without Python's fork hooks (uWSGI, unless ``py-call-osafterfork``).
FORKS: dict[str, Callable[[], int]] = {
    "os.fork": os.fork,
    "fork without hooks": ctypes.CDLL(None, use_errno=True).fork,
}


def _served_across_a_kill(
    make_app: AppFactory, app_client: redis.Redis, checker: redis.Redis
) -> None:
    """Counts with *app_client*, which never retries a command, while *checker* kills every
    connection of the app between two requests: no 503, no lock left."""
    app = counter_app(make_app, app_client)
    browser = app.test_client()
    assert browser.get("/count").text == "1"
    assert checker.client_kill_filter(_type="normal", skipme=True) >= 1  # the app's, all
    assert browser.get("/count").text == "2"  # locked, read and written anew, no 503
    assert browser.get("/count").text == "3"
    assert checker.keys("lock:*") == []


@pytest.mark.parametrize("poll", [True, False], ids=["poll", "no select.poll"])
def test_connections_closed_by_the_server_while_idle_are_replaced_unnoticed(
    client: redis.Redis, make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, poll: bool
) -> None:
    """Found before use, as the client's own pool finds them: even a client that never
    retries a command answers without a 503. Also where ``select`` has no ``poll``
    (Windows; eventlet's monkey patch removes it)."""
    if not poll:
        monkeypatch.delattr(select, "poll", raising=False)
    port = client.get_connection_kwargs()["port"]
    _served_across_a_kill(make_app, redis.Redis(port=port, retry=Retry(NoBackoff(), 0)), client)


def test_unix_socket_connections_closed_by_the_server_are_replaced_unnoticed(
    make_app: AppFactory,
) -> None:
    """The same over a Unix socket (the store asks plain sockets with one ``poll``)."""
    workdir = Path(tempfile.mkdtemp(prefix="fds-unix-"))  # short: a socket path has a limit
    path = workdir / "redis.sock"
    server = RedisServer(workdir, args=["--unixsocket", str(path), "--unixsocketperm", "700"])
    try:
        never_retries = redis.Redis(unix_socket_path=str(path), retry=Retry(NoBackoff(), 0))
        with server.client() as checker:
            _served_across_a_kill(make_app, never_retries, checker)
        never_retries.flushdb()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_frozen_server_times_reads_and_writes_out_as_redis_py_does(
    private_redis: RedisServer,
) -> None:
    """The store reads its replies itself: on a frozen server, a read, and a write that
    fills the socket's buffers, give up after the client's ``socket_timeout`` with
    redis-py's own ``TimeoutError`` (503)."""
    timeout = 0.3
    client = redis.Redis(
        port=private_redis.port, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    store = RedisStore(client, secret=SECRET)
    assert store.new(KEY).write(b"v0", 60)
    for action, call in (
        ("reading from", lambda: store.open(KEY, lock=True)),
        ("writing to", lambda: store.new("other").write(b"x" * 64 * 2**20, 60)),  # > the buffers
    ):
        assert store.open(KEY, lock=False).blob == b"v0"  # (re)connected
        private_redis.freeze()
        started = time.monotonic()
        try:
            with pytest.raises(
                StoreUnavailableError, match=f"TimeoutError: Timeout {action} socket"
            ):
                call()
        finally:
            private_redis.thaw()
        assert time.monotonic() - started < 20 * timeout  # gave up, did not hang


@pytest.mark.parametrize("fork", FORKS)
def test_a_forked_child_draws_lock_tokens_of_its_own(fork: str) -> None:
    """A worker forked from a process that made lock tokens makes none of the same."""
    before = _tokens.new()
    read, write = os.pipe()
    pid = FORKS[fork]()
    if pid == 0:
        try:
            os.write(write, _tokens.new())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read()
    after = _tokens.new()
    assert os.waitstatus_to_exitcode(status) == 0
    assert after[:32] == before[:32] and after != before
    assert len(child) > 32 and child[:32] != after[:32]


def test_a_script_flushed_from_the_server_is_loaded_again(
    client: redis.Redis, make_app: AppFactory
) -> None:
    app = counter_app(make_app, client)
    browser = app.test_client()
    assert browser.get("/count").text == "1"
    client.script_flush()
    assert browser.get("/count").text == "2"
    assert browser.get("/count").text == "3"


@pytest.mark.parametrize("fork", FORKS)
def test_a_forked_child_uses_connections_of_its_own(
    private_redis: RedisServer, make_app: AppFactory, fork: str
) -> None:
    """Parent and child sharing a socket would read each other's replies; the child makes
    a connection of its own for its first request."""
    app = counter_app(make_app, redis.Redis(port=private_redis.port))
    browser = app.test_client()
    assert browser.get("/count").text == "1"  # the parent has connected
    pid = FORKS[fork]()
    if pid == 0:  # the child reports through its exit status
        code = 1
        try:
            checker = redis.Redis(port=private_redis.port)
            before = _connected_clients(checker)
            answers = [browser.get("/count").text for _ in range(5)]
            added = _connected_clients(checker) - before
            code = 0 if (answers, added) == (["2", "3", "4", "5", "6"], 1) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [browser.get("/count").text for _ in range(3)] == ["7", "8", "9"]


class _Refuser:
    """A listener on *port* that accepts each connection and closes it at once: a Redis
    that answers nothing. Counts the connections it was offered."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def test_an_outage_costs_the_connection_attempts_of_the_clients_policy_not_more(
    private_redis: RedisServer, make_app: AppFactory
) -> None:
    """A request on a dead Redis tries to connect as often as the client's retry policy
    says (as the client's own commands do), never that many times per retry."""
    retries = 2
    client = redis.Redis(
        port=private_redis.port, socket_timeout=1, retry=Retry(NoBackoff(), retries)
    )
    app = counter_app(make_app, client)
    browser = app.test_client()
    assert browser.get("/count").text == "1"  # an idle connection, then the server dies
    private_redis.stop()
    refuser = _Refuser(private_redis.port)
    try:
        assert browser.get("/count").status_code == 503
    finally:
        refuser.close()
    assert 1 <= refuser.accepted <= retries + 1


def test_the_store_leaves_the_pools_max_connections_to_the_app(
    client: redis.Redis, make_app: AppFactory
) -> None:
    """A pool of one connection: the app's own command in the view still gets it."""
    pool = redis.ConnectionPool(port=client.get_connection_kwargs()["port"], max_connections=1)
    app = counter_app(make_app, redis.Redis(connection_pool=pool))
    key = f"hits:{secrets.token_hex(4)}"

    @app.route("/hit")
    def hit() -> str:
        session["x"] = session.get("x", 0) + 1
        return str(app.config["SESSION_REDIS"].incr(key))

    browser = app.test_client()
    assert [browser.get("/hit").text for _ in range(3)] == ["1", "2", "3"]
    assert browser.get("/get").text == "3"
    client.delete(key)


def test_a_resp3_client_goes_through_the_client(client: redis.Redis, make_app: AppFactory) -> None:
    """Its pool may follow maintenance notifications, which only its own connections see."""
    resp3 = redis.Redis(port=client.get_connection_kwargs()["port"], protocol=3)
    for locking in (True, False):
        app = counter_app(make_app, resp3, SESSION_DILL_LOCKING=locking)
        browser = app.test_client()
        assert [browser.get("/count").text for _ in range(3)] == ["1", "2", "3"]
        assert browser.get("/get").text == "3"  # read, unchanged: a touch
    assert client.keys("lock:*") == []


@pytest.mark.parametrize(
    "command",
    [
        ("GET", "session:{abc}"),
        ("SET", "lock:{abc}", b"t.1764000000000.60000", "NX", "GET", "PX", 60000, -1),
        ("EVALSHA", "a" * 40, 3, "k1", "k2", "k3", "token", 60000, 1764000000000, 0.5, -1),
        ("SET", "sessi\u00f3n:{x}", b"\x00\r\n" * 5000, "XX", "PX", 10),  # over redis-py's cutoff
        ("ECHO", b"", ""),
        ("SET", bytearray(b"k"), memoryview(b"v" * 10), "EX", 7),
    ],
    ids=["get", "set-ints", "evalsha-float", "large-unicode", "empty", "bytes-like"],
)
def test_commands_are_packed_as_redis_py_packs_them(command: tuple[Any, ...]) -> None:
    assert b"".join(packed(command)) == _packed_by_redis_py(command)
    assert b"".join(packed(command, "latin-1")) == _packed_by_redis_py(command, "latin-1")
    for argument in command:  # a long one is sent as it is, not copied into the command
        if isinstance(argument, bytes) and len(argument) > _CUTOFF:
            assert any(piece is argument for piece in packed(command))


@pytest.mark.parametrize("argument", [True, None, 1j, ["a"]])
def test_what_redis_py_refuses_to_send_is_refused(argument: object) -> None:
    with pytest.raises(redis.exceptions.DataError):
        packed(("SET", "k", argument))
    with pytest.raises(redis.exceptions.DataError):
        _packed_by_redis_py(("SET", "k", argument))


def _packed_by_redis_py(command: tuple[Any, ...], encoding: str = "utf-8") -> bytes:
    """What redis-py's Python packer (used without hiredis) sends for *command*."""
    encoder = Encoder(encoding, "strict", False)  # type: ignore[no-untyped-call]
    packer = PythonRespSerializer(6000, encoder.encode)
    return b"".join(packer.pack(*command))  # type: ignore[no-untyped-call]


def test_keys_are_sent_in_the_client_encoding(client: redis.Redis, make_app: AppFactory) -> None:
    """Keys are encoded as the client encodes them, by the store's own connections and by
    its scripts' callers alike: the client finds them, and so does the session listing."""
    port = client.get_connection_kwargs()["port"]
    latin = redis.Redis(port=port, encoding="latin-1")
    for locking in (True, False):
        prefix = f"sessi\u00f3n-{locking}:"
        app = counter_app(make_app, latin, SESSION_KEY_PREFIX=prefix, SESSION_DILL_LOCKING=locking)
        browser = app.test_client()
        assert [browser.get("/count").text for _ in range(3)] == ["1", "2", "3"]
        assert len(latin.keys(prefix + "*")) == 1
        settings = latin.connection_pool.connection_kwargs
        sent = prefix.encode(*key_encoding(settings))  # latin-1, or UTF-8 if hiredis packs
        assert client.keys(sent + b"*") == latin.keys(prefix + "*")
        with app.app_context():
            listed = list(app_interface(app).inventory(app).sessions())
        assert len(listed) == 1


def test_the_store_keeps_as_many_connections_as_requests_ran_at_once(
    private_redis: RedisServer, make_app: AppFactory
) -> None:
    checker = redis.Redis(port=private_redis.port)
    app = counter_app(make_app, redis.Redis(port=private_redis.port))
    browsers = [app.test_client() for _ in range(4)]
    for _ in range(10):  # one at a time: one connection serves them all
        for browser in browsers:
            assert browser.get("/count").status_code == 200
    alone = _connected_clients(checker)  # the checker's, the client pool's, the store's
    assert alone <= 3
    barrier = threading.Barrier(4)

    def burst(browser: Any) -> None:
        barrier.wait()
        for _ in range(20):
            assert browser.get("/count").status_code == 200

    threads = [threading.Thread(target=burst, args=(each,)) for each in browsers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert alone <= _connected_clients(checker) <= alone + 3  # at most one per request
    assert [int(browser.get("/get").text) for browser in browsers] == [30] * 4
    checker.close()


# -- locks ---------------------------------------------------------------------------------


def test_a_holder_whose_lease_ran_out_does_not_overwrite_the_next_holder(
    client: redis.Redis,
) -> None:
    store = RedisStore(client, secret=SECRET, lock_timeout=5, lock_lease=0.2)
    assert store.new(KEY).write(b"v0", 60)
    slow = store.open(KEY, lock=True)
    lock_key = store.lock_key(KEY)
    wait_until(lambda: not client.exists(lock_key), "the end of the first lease")
    next_holder = store.open(KEY, lock=True)
    assert next_holder.blob == b"v0"
    held = client.get(lock_key)
    with pytest.raises(
        StoreUnavailableError, match=r"not saved: its lock was no longer held \(its lease of 0\.2 s"
    ) as lost:
        slow.write(b"from the holder that lost its lock", 60)
    assert fingerprint(KEY) in str(lost.value)
    assert (lost.value.cause, lost.value.where) == ("lock lost", store.address)
    slow.release()  # must not release the next holder's lock
    assert client.get(NAME) == b"v0"
    assert client.get(lock_key) == held
    assert next_holder.write(b"from the next holder", 60)
    with pytest.raises(StoreUnavailableError, match="lease"):
        slow.write(b"late again", 60)
    assert client.get(NAME) == b"from the next holder"
    assert not client.exists(lock_key)  # the write released it in the same round trip


def test_a_request_waiting_for_a_lock_never_reads_the_session(
    private_redis: RedisServer,
) -> None:
    """Waiters poll every lock_poll: the first try reads the session in the round trip that
    tries the lock, but every poll after it is answered before the session (up to a
    megabyte) is read inside Redis."""
    client = redis.Redis(port=private_redis.port)
    store = RedisStore(client, secret=SECRET, lock_timeout=0.3)
    assert store.new(KEY).write(b"x" * 100_000, 60)
    holder = store.open(KEY, lock=True)
    client.config_resetstat()
    with pytest.raises(LockTimeoutError):
        store.open(KEY, lock=True)
    holder.release()
    stats = client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] >= 5  # polls of the lock, refused
    assert stats["cmdstat_mget"]["calls"] == 1  # the first try's


def test_the_lock_has_the_lease_as_its_ttl_and_a_missing_session_takes_no_lock(
    client: redis.Redis,
) -> None:
    store = RedisStore(client, secret=SECRET, lock_timeout=5, lock_lease=30)
    missing = store.open(KEY, lock=True)
    assert missing.blob is None
    assert client.keys("*") == []
    assert store.new(KEY).write(b"v0", 60)
    held = store.open(KEY, lock=True)
    assert 0 < client.pttl(store.lock_key(KEY)) <= 30_000
    held.release()
    held.release()
    assert not client.exists(store.lock_key(KEY))
    assert store.cleanup() == 0


def test_a_lock_held_by_a_killed_process_frees_itself_after_the_lease(
    redis_server: RedisServer, client: redis.Redis, make_app: AppFactory, tmp_path: Path
) -> None:
    env = app_env(redis_server, tmp_path / "files", FLASK_SESSION_DILL_LOCK_LEASE="1")
    server = serve_redis_app(tmp_path, env)
    try:
        sid = None
        status, text, sid = fetch(server.url + "/count", sid)
        assert (status, text) == (200, "1")

        def hold() -> None:
            with contextlib.suppress(OSError):  # the server dies under this request
                fetch(server.url + "/hold", sid)

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        lock_key = KeyNames(SECRET).of(f"session:{sid}").lock
        wait_until(lambda: bool(client.exists(lock_key)), "the /hold request taking the lock")
    finally:
        server.stop(signal.SIGKILL)
    assert client.exists(lock_key)  # left behind by the killed process
    app = counter_app(make_app, client, SESSION_DILL_LOCK_TIMEOUT=10)
    browser = app.test_client()
    browser.set_cookie("session", str(sid))
    assert browser.get("/count").text == "2"  # waited for the lease, the held change is lost


# -- several processes -----------------------------------------------------------------


def test_two_app_servers_sharing_only_redis_serve_one_session(
    redis_server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    common = {"FLASK_SESSION_DILL_LOCK_TIMEOUT": "30"}
    dirs = [tmp_path / "files-a", tmp_path / "files-b"]
    servers = [
        gunicorn(tmp_path, "tests.apps.redis_app:create_app()", app_env(redis_server, d, **common))
        for d in dirs
    ]
    try:
        a, b = (server.url for server in servers)
        pids = [{fetch(url + "/pid")[1] for _ in range(6)} for url in (a, b)]
        assert not pids[0] & pids[1]  # two separate sets of processes

        status, _, sid = fetch(a + "/start")
        assert status == 200 and sid is not None
        for expected in range(1, 7):  # alternately: state carries over
            url = (a, b)[expected % 2]
            assert fetch(url + "/count", sid)[:2] == (200, str(expected))

        clients, rounds = 16, 10
        failures: list[str] = []

        def work(n: int) -> None:
            for i in range(rounds):
                url = (a, b)[(n + i) % 2]
                status, text, _ = fetch(url + "/count", sid)
                if status != 200:
                    failures.append(f"{status} {text}")

        threads = [threading.Thread(target=work, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        total = str(6 + clients * rounds)
        assert fetch(a + "/get", sid)[1] == total
        assert fetch(b + "/get", sid)[1] == total
    finally:
        for server in servers:
            server.stop()
    for directory in dirs:  # nothing went through the filesystem
        assert not directory.exists() or not any(directory.rglob("*"))


# -- Redis down or stalled -------------------------------------------------------------


def test_redis_stopped_gives_503_with_a_log_line_then_recovers(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    server = serve_redis_app(tmp_path, app_env(private_redis, tmp_path / "files"))
    try:
        status, text, sid = fetch(server.url + "/count")
        assert (status, text) == (200, "1")
        private_redis.stop()
        status, text, _ = fetch(server.url + "/count", sid)
        assert status == 503
        assert str(private_redis.port) not in text  # the cause is logged, not shown
        assert fetch(server.url + "/pid", sid)[0] == 200  # requests without the session
        log = server.log.read_text()
        assert f"127.0.0.1:{private_redis.port}/0" in log and "Connection refused" in log
        private_redis.restart()  # an empty Redis (no persistence): the session is gone
        status, text, sid = fetch(server.url + "/count", sid)
        assert (status, text) == (200, "1")
        assert fetch(server.url + "/count", sid)[:2] == (200, "2")
    finally:
        server.stop()


def test_a_stalled_redis_gives_503_instead_of_hanging(
    private_redis: RedisServer, make_app: AppFactory
) -> None:
    url = f"redis://127.0.0.1:{private_redis.port}/0"
    app = counter_app(make_app, redis_client(url, timeout=0.5))
    browser = app.test_client()
    assert browser.get("/count").text == "1"
    private_redis.freeze()
    statuses: list[int] = []
    try:
        request = threading.Thread(
            target=lambda: statuses.append(browser.get("/count").status_code), daemon=True
        )
        request.start()
        request.join(60)  # a hang detector, far above the client's timeouts
        assert not request.is_alive(), "the request hung on a stalled Redis"
    finally:
        private_redis.thaw()
    assert statuses == [503]
    assert browser.get("/count").text == "2"


def test_a_client_without_socket_timeout_is_warned_about(
    redis_server: RedisServer, make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_dill_session"):
        counter_app(make_app, redis.Redis(port=redis_server.port, socket_timeout=None))
    assert any("socket_timeout" in r.getMessage() for r in caplog.records)


def test_a_short_ttl_runs_out_in_redis_itself(client: redis.Redis, make_app: AppFactory) -> None:
    app = counter_app(make_app, client, PERMANENT_SESSION_LIFETIME=timedelta(milliseconds=300))
    browser = app.test_client()
    assert browser.get("/count").text == "1"
    cookie = browser.get_cookie("session")
    assert cookie is not None
    key = redis_store_of(app).session_key("session:" + cookie.value)
    assert 0 < client.pttl(key) <= 300
    wait_until(lambda: not client.exists(key), "Redis expiring the session")
    assert browser.get("/count").text == "1"


def test_quarantine_keeps_the_blob_under_its_fingerprint_with_its_own_ttl(
    client: redis.Redis, make_app: AppFactory
) -> None:
    app = counter_app(make_app, client, SESSION_DILL_QUARANTINE_LIFETIME=3600)
    browser = app.test_client()
    assert browser.get("/count").text == "1"
    cookie = browser.get_cookie("session")
    assert cookie is not None
    key = "session:" + cookie.value
    name = redis_store_of(app).session_key(key)
    client.set(name, b"garbage", px=60_000)
    assert browser.get("/count").text == "1"  # a fresh session
    kept = client.keys(f"quarantine:{name}:{fingerprint(key)}:*")
    assert len(kept) == 1
    assert client.get(kept[0]) == b"garbage"
    assert 3_500_000 < client.pttl(kept[0]) <= 3_600_000


# -- configuration ---------------------------------------------------------------------


def test_redis_backend_needs_a_redis_client(make_app: AppFactory) -> None:
    with pytest.raises(ConfigError, match="SESSION_REDIS"):
        make_app(SESSION_DILL_BACKEND="redis")
    with pytest.raises(ConfigError, match=r"SESSION_REDIS: a redis-py client .* lacks"):
        make_app(SESSION_DILL_BACKEND="redis", SESSION_REDIS="redis://127.0.0.1:6379")
    with pytest.raises(ConfigError, match="decode_responses=False"):
        make_app(SESSION_DILL_BACKEND="redis", SESSION_REDIS=redis.Redis(decode_responses=True))


class NotAClient:
    """Has some of a client's methods, not all: accepted or refused by what it can do."""

    def get(self, name: str) -> None:
        return None

    def set(self, name: str, value: bytes) -> None:
        return None


def test_a_client_is_checked_by_what_it_can_do(redis_cluster: RedisClusterServers) -> None:
    with pytest.raises(ConfigError, match=r"got NotAClient, which lacks register_script, "):
        RedisStore(NotAClient(), secret=SECRET)  # type: ignore[arg-type]
    decoding = redis_cluster.client(decode_responses=True)
    with decoding, pytest.raises(ConfigError, match="decode_responses=False"):
        RedisStore(decoding, secret=SECRET)
    with redis_cluster.client() as cluster:
        assert RedisStore(cluster, secret=SECRET).address.startswith("cluster 127.0.0.1:")


def test_wait_must_end_before_the_socket_timeout(
    redis_server: RedisServer, make_app: AppFactory
) -> None:
    client = redis.Redis(port=redis_server.port, socket_timeout=0.5)
    with pytest.raises(ConfigError, match=r"SESSION_DILL_REDIS_WAIT waits up to 500 ms, not less"):
        counter_app(make_app, client, SESSION_DILL_REDIS_WAIT=(1, 500))
    counter_app(make_app, client, SESSION_DILL_REDIS_WAIT=(1, 499))


# -- helpers -------------------------------------------------------------------------------


def app_env(server: RedisServer, files: Path, **extra: str) -> dict[str, str]:
    return {
        "FDS_REDIS_URL": f"redis://127.0.0.1:{server.port}/0",
        "FLASK_SECRET_KEY": SECRET,
        "FLASK_SESSION_FILE_DIR": str(files),
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def serve_redis_app(tmp_path: Path, env: dict[str, str]) -> Server:
    """``python -m tests.apps.redis_app`` (Werkzeug's threaded server) on a free port."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.apps.redis_app"]
    return Server(argv, port, {**env, "PORT": str(port)}, tmp_path)


def fetch(url: str, sid: str | None = None) -> tuple[int, str, str | None]:
    """GET *url* with the session cookie *sid*: status, body, and the session id after."""
    request = urllib.request.Request(url)
    if sid is not None:
        request.add_header("Cookie", f"session={sid}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, body, headers = response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as error:
        status, body, headers = error.code, error.read().decode(), error.headers
    for header in headers.get_all("Set-Cookie") or []:
        cookie = http.cookies.SimpleCookie(header)
        if "session" in cookie:
            sid = cookie["session"].value or None
    return status, body, sid
