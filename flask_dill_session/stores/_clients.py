"""What the Redis store needs of a client, whatever its class: a ``redis.Redis`` (also one
made by Sentinel's ``master_for``) or a ``redis.cluster.RedisCluster``.

The store checks methods, not classes (:func:`check`), names where a client connects for
log lines (:func:`describe`), finds the client of each primary to ``SCAN`` (:func:`primaries`)
and of the node that holds a key to load a script there (:func:`run_script`) or to ``WAIT``
on the connection that wrote (:func:`send_and_wait`), and keeps deadlines in the server's
clock (:class:`ServerClock`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias, cast

import redis
import redis.exceptions
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.utils import HIREDIS_AVAILABLE

from ..exc import ConfigError

#: A client the store accepts; any object with the methods of :data:`NEEDED` will do.
Client: TypeAlias = "redis.Redis | RedisCluster"

#: The methods the store calls on its client.
NEEDED = (
    "register_script",
    "script_load",
    "get_encoder",
    "get_connection_kwargs",
    "pipeline",
    "get",
    "mget",
    "set",
    "pexpire",
    "delete",
    "scan_iter",
)

#: Every exception the client raises: ``RedisError`` and the rest of redis-py's exception
#: classes, some of which are not ``RedisError`` (``RedisClusterException``,
#: ``SlotNotCoveredError``, ...), Sentinel's (``MasterNotFoundError`` is a
#: ``ConnectionError``), and ``OSError`` from below it.
CLIENT_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    *(
        cls
        for cls in vars(redis.exceptions).values()
        if isinstance(cls, type)
        and issubclass(cls, Exception)
        and cls.__module__ == "redis.exceptions"
    ),
)


def check(client: object) -> None:
    """Raise :class:`ConfigError` unless *client* has every method the store needs and
    returns bytes."""
    missing = [name for name in NEEDED if not callable(getattr(client, name, None))]
    if missing:
        raise ConfigError(
            "a redis-py client (redis.Redis, Sentinel's master_for(...), or"
            f" redis.cluster.RedisCluster) is required, got {type(client).__name__}, which"
            f" lacks {', '.join(missing)}"
        )
    if getattr(client, "get_encoder")().decode_responses:  # noqa: B009
        raise ConfigError(
            "the Redis client must be made with decode_responses=False:"
            " sessions are stored as bytes"
        )


def is_cluster(client: Client) -> bool:
    """Whether *client* routes keys to the nodes of a Redis Cluster."""
    return callable(getattr(client, "get_node_from_key", None)) and callable(
        getattr(client, "get_primaries", None)
    )


def describe(client: Client) -> str:
    """Where *client* connects, for log lines: ``host:port/db`` or the socket path; the
    sentinel service and its sentinels; the nodes of a cluster."""
    if is_cluster(client):
        nodes = sorted(node.name for node in getattr(client, "get_nodes")())  # noqa: B009
        return f"cluster {','.join(nodes)}"
    kwargs = client.get_connection_kwargs()
    pool = getattr(client, "connection_pool", None)
    service = getattr(pool, "service_name", None)
    if service is not None:
        sentinels = getattr(getattr(pool, "sentinel_manager", None), "sentinels", [])
        places = ",".join(_place(each.get_connection_kwargs()) for each in sentinels)
        return f"sentinel service {service} via {places or '?'}/{kwargs.get('db', 0)}"
    return f"{_place(kwargs)}/{kwargs.get('db', 0)}"


def _place(kwargs: dict[str, Any]) -> str:
    path = kwargs.get("path")
    # redis-py's defaults where the client was given none (a pool made with a port only)
    return str(path) if path else f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def socket_timeout(client: Client) -> float | None:
    """The client's ``socket_timeout``: how long it waits for a reply."""
    value = client.get_connection_kwargs().get("socket_timeout")
    return None if value is None else float(value)


def primaries(client: Client) -> list[redis.Redis]:
    """A client of each primary: every master of a cluster, else *client* itself."""
    if is_cluster(client):
        return [_node_client(node) for node in getattr(client, "get_primaries")()]  # noqa: B009
    return [cast(redis.Redis, client)]


def node_of(client: Client, name: str | bytes) -> redis.Redis:
    """A client of the node that holds key *name* (*client* itself unless a cluster), so
    that commands pipelined on it share one connection."""
    if is_cluster(client):
        return _node_client(getattr(client, "get_node_from_key")(name))  # noqa: B009
    return cast(redis.Redis, client)


def packs_in_python(settings: Mapping[str, Any]) -> bool:
    """Whether connections made with *settings* (a pool's ``connection_kwargs``) pack
    commands with redis-py's Python packer: no hiredis, no packer of the pool's own."""
    return not HIREDIS_AVAILABLE and settings.get("command_packer") is None


def key_encoding(settings: Mapping[str, Any]) -> tuple[str, str]:
    """How connections made with *settings* send a ``str`` (encoding, errors): in UTF-8 when
    redis-py packs commands in C (hiredis packs strings in UTF-8, whatever the client's
    encoding), else in the client's ``encoding``."""
    if HIREDIS_AVAILABLE and settings.get("command_packer") is None:
        return "utf-8", "strict"
    return settings.get("encoding", "utf-8"), settings.get("encoding_errors", "strict")


def run_script(client: Client, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """``EVALSHA`` *script*; a node that does not know it loads it, that node alone (redis-py
    would load it on every primary, which fails while one of them is down)."""
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        node_of(client, keys[0]).script_load(script.script)
        return client.evalsha(script.sha, len(keys), *keys, *args)


def send_and_wait(
    client: Client,
    name: str | bytes,
    commands: Sequence[tuple[Any, ...]],
    wait: tuple[int, int],
    script: Script | None = None,
) -> tuple[list[Any], int]:
    """Send *commands* and then ``WAIT replicas ms`` (*wait*) on one connection to the node
    holding key *name*, in one round trip: their replies, and how many replicas confirmed
    them. If the node did not know *script*, it is loaded and the commands sent again
    (none of them ran). An error reply is raised."""
    node = node_of(client, name)
    for attempt in range(2):
        pipe = node.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        pipe.execute_command("WAIT", *wait)  # type: ignore[no-untyped-call]
        *replies, acked = pipe.execute(raise_on_error=False)
        unknown = any(isinstance(each, redis.exceptions.NoScriptError) for each in replies)
        if not unknown or script is None or attempt:
            break
        node.script_load(script.script)
    for each in [*replies, acked]:
        if isinstance(each, Exception):
            raise each
    return replies, int(acked)


def _node_client(node: Any) -> redis.Redis:
    result = node.redis_connection
    if result is None:
        raise redis.exceptions.RedisClusterException(f"no connection to node {node.name}")
    return cast(redis.Redis, result)


class ServerClock:
    """Deadlines in the Redis server's clock: ours, plus an offset learned from its replies.

    A command the client gave up on (its ``socket_timeout`` passed) may still reach Redis
    later, for instance once a stalled server runs again. So the tries to lock carry the
    instant the client gives up, ``socket_timeout`` after sending: past it, the
    lock-and-read script takes no lock, and a lock the first try took is orphaned (its
    token names the deadline) and taken over by the next request, so a stall leaves no
    lock behind for the rest of a lease. (The write needs no offset: it tells the time by
    the lock's TTL, :meth:`~._lock.SessionLock.least_left`.) The offset between the two
    clocks is learned from ``TIME``, in the lock-and-read script's replies and in the
    first try when the offset is not :meth:`fresh`; a refusal that reaches the client in
    time (so due to the offset, not to a stall) is retried once with the offset just
    learned.

    *timeout* is the client's ``socket_timeout`` (``None``: it never gives up, and calls
    carry no deadline). The nodes of a cluster share one offset: keep their clocks in sync.
    """

    #: Seconds an offset is taken as known after it was learned (:meth:`fresh`).
    FRESH = 1.0

    def __init__(self, timeout: float | None, now: Callable[[], float] = time.time) -> None:
        self.timeout = timeout
        self.now = now
        self.offset = 0.0  # seconds the server's clock is ahead of ours
        self.error = 0.0  # how far off the offset may be: half the round trip it came from
        self.learned = -math.inf  # when the offset was last learned (our clock)

    def deadline(self, sent: float) -> int:
        """The server-clock instant (ms) a call sent at *sent* is given up; 0 for never."""
        if self.timeout is None:
            return 0
        return math.floor((sent + self.offset + self.timeout) * 1000)

    def learn(self, server_ms: int, sent: float, received: float) -> None:
        """Take the offset from a reply, if its round trip was short enough to tell it."""
        if self.timeout is not None and received - sent < self.timeout / 4:
            self.offset = server_ms / 1000 - (sent + received) / 2
            self.error = (received - sent) / 2
            self.learned = received  # last: a thread that finds it fresh finds the rest

    def fresh(self, now: float) -> bool:
        """Whether the offset was learned less than :attr:`FRESH` seconds before *now* (or
        no deadline is sent): then a clock step since, of the size of the timeout, is all
        that could make a deadline computed with it wrong."""
        # learned after *now* by another thread: as fresh
        return self.timeout is None or abs(now - self.learned) < self.FRESH

    def in_time(self, sent: float, received: float, error: float = 0.0) -> bool:
        """Whether a reply came before the client would have given up on it; with *error*
        (the offset's, when the deadline was computed), whether the server surely ran the
        call before the deadline it was given."""
        return self.timeout is None or received - sent + error < self.timeout
