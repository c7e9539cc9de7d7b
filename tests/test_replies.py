"""The Redis store reads its replies itself (``stores._replies``): the same values and errors
as redis-py's own reading, whatever the reply and however it arrives; a reply it cannot
read fails the call and the connection, nothing more."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, BusyLoadingError
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from flask_dill_session.exc import StoreUnavailableError
from flask_dill_session.stores._connections import Connections
from flask_dill_session.stores.redis import RedisStore

from .support import RedisServer

pytestmark = pytest.mark.redis

BIG = bytes(range(256)) * 4096  # 1 MiB: many reads
REPLIES: list[tuple[Any, ...]] = [
    ("SET", "k", "v"),  # +OK
    ("SET", "k", "w", "NX", "GET"),  # a bulk string (the old value), nothing set
    ("SET", "missing", "v", "XX", "GET"),  # null
    ("MGET", "k", "missing", "k"),  # an array holding a null
    ("SET", "empty", ""),
    ("GET", "empty"),  # an empty bulk string
    ("EXISTS", "k", "k", "missing"),  # an integer
    ("SET", "big", BIG),
    ("GET", "big"),
    ("EVAL", "return {1, 'a', false, {2, {}}, -3}", 0),  # nested arrays, Lua's false
    ("EVAL", "return false", 0),
    ("EVAL", "return {}", 0),  # an empty array
]
ERRORS: list[tuple[Any, ...]] = [
    ("EVAL", "return redis.error_reply('MY failure')", 0),
    ("EVALSHA", "0" * 40, 0),  # NoScriptError
    ("NOSUCHCOMMAND",),
]


def _replies(conns: Connections, command: tuple[Any, ...]) -> Any:
    """The reply to *command*, or its error as (type, message)."""
    try:
        return conns.execute(*command)
    except redis.exceptions.ResponseError as exc:
        return type(exc), str(exc)


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("read_size", [1, 7, 65536], ids=["1 byte", "7 bytes", "64 KiB"])
def test_replies_are_read_as_redis_py_reads_them(
    redis_server: RedisServer, client: redis.Redis, protocol: int, read_size: int
) -> None:
    """Every kind of reply (no command changes what the others find), each split at every
    byte (a recv of 1 byte) or in pieces, and a pipeline of them all: as redis-py's
    ``read_response`` reads them (a pool with health checks, which the store leaves to
    redis-py)."""
    settings: dict[str, Any] = {
        "port": redis_server.port,
        "protocol": protocol,
        "socket_timeout": 5,
    }
    ours = Connections(redis.ConnectionPool(socket_read_size=read_size, **settings))
    theirs = Connections(redis.ConnectionPool(health_check_interval=3600, **settings))
    assert ours._read_size == read_size and theirs._read_size is None
    for command in REPLIES + ERRORS + [("GET", "big")]:  # read on after errors
        assert _replies(ours, command) == _replies(theirs, command), command
    assert ours.pipeline(*REPLIES) == theirs.pipeline(*REPLIES)
    with pytest.raises(redis.exceptions.ResponseError, match="MY failure"):
        ours.pipeline(("GET", "k"), ("EVAL", "return redis.error_reply('MY failure')", 0))
    assert ours.execute("GET", "k") == b"v"  # the error was read whole: in order


def test_a_connection_that_reads_its_own_way_is_left_to_redis_py(
    redis_server: RedisServer,
) -> None:
    """Sentinel's connections handle a demoted master in their ``read_response``."""
    sentinel = redis.sentinel.Sentinel([("127.0.0.1", redis_server.port)])  # type: ignore[no-untyped-call]
    pool = SentinelConnectionPool("mymaster", sentinel)  # type: ignore[no-untyped-call]
    assert Connections(pool)._read_size is None


class _Liar:
    """A server on loopback that answers the first command of each connection (after the
    client's ``CLIENT SETINFO``) with :attr:`answer`, then closes it, or with
    :attr:`keep_open` answers each later command ``ok`` until the client closes it; counts
    its connections."""

    def __init__(self) -> None:
        self.answer = b""
        self.keep_open = False
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.connections += 1
                while b"SETINFO" in conn.recv(65536):  # the client's handshake, one by one
                    conn.sendall(b"+OK\r\n")
                conn.sendall(self.answer)
                with contextlib.suppress(OSError):
                    while self.keep_open and conn.recv(65536):
                        conn.sendall(b"$2\r\nok\r\n")

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept (closing would not)
        self.sock.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


def _pool_of(liar: _Liar) -> redis.ConnectionPool:
    """A pool of connections to *liar* that never retry and need no ``HELLO``."""
    return redis.ConnectionPool(
        port=liar.port, protocol=2, socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )


@pytest.fixture
def liar() -> Iterator[_Liar]:
    server = _Liar()
    yield server
    server.close()


def test_push_messages_go_to_the_parsers_handler_and_the_replies_follow(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    """A RESP3 push (here a client-side caching invalidation, sent as the pipeline's own
    ``SET`` changes a key the connection tracks) goes to the parser's push handler, as
    redis-py's reading hands it, and the replies are read on."""
    settings: dict[str, Any] = {"port": redis_server.port, "protocol": 3, "socket_timeout": 5}
    results = []
    for pool in (
        redis.ConnectionPool(**settings),
        redis.ConnectionPool(health_check_interval=3600, **settings),  # read by redis-py
    ):
        conns = Connections(pool)
        pushed: list[Any] = []
        assert conns.execute("CLIENT", "TRACKING", "ON") == b"OK"
        conns._idle[-1]._parser.set_invalidation_push_handler(pushed.append)
        assert conns.execute("GET", "tracked") is None  # tracked from now on
        replies = conns.pipeline(("SET", "tracked", "v"), ("GET", "tracked"), ("GET", "k"))
        results.append((replies, pushed))
        client.delete("tracked")
    ours, theirs = results
    assert ours == theirs
    assert ours[0] == [b"OK", b"v", None] and ours[1] == [[b"invalidate", [b"tracked"]]]


@pytest.mark.parametrize(
    ("answer", "reply"),
    [
        (b">2\r\n+message\r\n+x\r\n$2\r\nok\r\n", b"ok"),
        (b"$2\r\nok\r\n>2\r\n+message\r\n+x\r\n", b"ok"),
    ],
    ids=["before the reply", "after it"],
)
def test_a_push_message_beside_a_reply_is_read_whole(
    liar: _Liar, answer: bytes, reply: bytes
) -> None:
    """Nothing of it is left for the next command to read (with no handler: RESP2)."""
    conns = Connections(_pool_of(liar))
    liar.answer = answer
    assert conns.execute("GET", "k") == reply


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"-LOADING Redis is loading the dataset in memory\r\n", BusyLoadingError),
        (b"-NOAUTH Authentication required.\r\n", AuthenticationError),
    ],
    ids=["LOADING", "NOAUTH"],
)
def test_error_replies_that_redis_py_raises_at_once_are_raised(
    liar: _Liar, answer: bytes, error: type[Exception]
) -> None:
    """As redis-py's parser does (they are connection errors: retried, then 503), even
    as the first of two replies, and never taken for a reply."""
    conns = Connections(_pool_of(liar))
    liar.answer, liar.keep_open = answer, True
    with pytest.raises(error):
        conns.pipeline(("GET", "k"), ("GET", "k"))
    liar.answer, liar.keep_open = b"$2\r\nok\r\n", False
    assert conns.execute("GET", "k") == b"ok"
    assert liar.connections == 2  # closed after the error, though the server kept it open
    liar.answer = answer
    store = RedisStore(redis.Redis(connection_pool=_pool_of(liar)), secret="secret")
    for action in (
        lambda: store.new("key").write(b"v", 60),  # SET NX: not reported as written
        lambda: store.open("key", lock=True),
    ):
        with pytest.raises(StoreUnavailableError, match=error.__name__):
            action()


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (b"%1\r\n+a\r\n+b\r\n", redis.exceptions.InvalidResponse, "unexpected reply type '%'"),
        (b"+OK\r\n+MORE\r\n", redis.exceptions.InvalidResponse, "more than the commands"),
        (b":12x\r\n", redis.exceptions.InvalidResponse, "malformed reply"),
        (b"$10\r\nabc", redis.exceptions.ConnectionError, "Connection closed by server"),
        (b"$3\r\nabcdefgh", redis.exceptions.InvalidResponse, "more than the commands"),
        (b"+OK", redis.exceptions.ConnectionError, "Connection closed by server"),
        (b"$99999999999999\r\nabc", redis.exceptions.ConnectionError, "closed by server"),
        (b">x\r\n", redis.exceptions.InvalidResponse, "malformed reply"),
    ],
    ids=[
        "a map",
        "one reply too many",
        "not a number",
        "cut short",
        "too long",
        "no CRLF",
        "a length no reply has",
        "a push of no length",
    ],
)
def test_a_reply_that_cannot_be_read_fails_the_call_and_its_connection(
    liar: _Liar, answer: bytes, error: type[Exception], message: str
) -> None:
    """Raised as redis-py's own errors (the store answers them 503); the connection is
    closed, even where the server keeps it open, and the next call connects again."""
    conns = Connections(_pool_of(liar))
    liar.answer = answer
    liar.keep_open = error is redis.exceptions.InvalidResponse  # else the server closed it
    with pytest.raises(error, match=message):
        conns.execute("GET", "k")
    liar.answer, liar.keep_open = b"$2\r\nok\r\n", False
    assert conns.execute("GET", "k") == b"ok"
    assert liar.connections == 2
