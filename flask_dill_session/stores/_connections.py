"""The Redis store's commands, sent on connections of its own instead of through the client.

A command through ``redis.Redis`` checks a connection out of the pool and back in, with the
pool's lock, events and metrics: that costs more CPU than packing the command and reading
its reply (measured: about 85 µs against 64 µs of a process's CPU per ``EVALSHA`` on
loopback). A request that uses its session sends two commands, so the store keeps a few
connections of its own, made with the pool's connection class and settings (so with its
host, credentials, TLS, protocol and Sentinel's master lookup), and sends each command on
one of them with its retry policy (one the server closed while idle is found before use,
with one ``poll``: ``_stale``). There are as many as requests ran at once; the pool
neither counts nor holds them (its ``max_connections`` is left to the app's own commands),
and a forked child drops them. A cluster client routes every key to its node itself, and a
pool whose connections cache replies or follow maintenance notifications gives them more
to do: their commands go through the client.

Commands are packed here (:func:`packed`) unless redis-py packs them in C (``hiredis``) or
the pool names a packer of its own: redis-py's Python packer joins the whole command again
for each argument, which costs a request about 7 µs of CPU for its two commands. Replies
are read here too (:mod:`._replies`), but where the connection class reads them its own
way (Sentinel's, which notices a demoted master) or health checks are on: there, by its
``read_response``.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import weakref
from collections.abc import Sequence
from typing import Any

import redis.exceptions
from redis.commands.core import Script
from redis.connection import AbstractConnection

from ._clients import Client, is_cluster, key_encoding, packs_in_python
from ._replies import Replies

_CUTOFF = 6000  # bytes: redis-py's buffer cutoff, over which an argument is sent alone
_READ_SIZE = 65536  # bytes asked of each recv, unless the client's socket_read_size says


def own_connections(client: Client) -> Connections | None:
    """Connections of the store's own for *client*'s pool; ``None`` (its commands go
    through the client) for a cluster client, a client with no such pool, or one whose
    pool has its connections cache replies or follow maintenance notifications."""
    pool = getattr(client, "connection_pool", None)
    if is_cluster(client) or pool is None or not hasattr(pool, "connection_kwargs"):
        return None
    if getattr(pool, "cache", None) is not None:
        return None
    notified = getattr(pool, "maint_notifications_enabled", None)  # RESP3 only ("auto" too)
    if str(pool.connection_kwargs.get("protocol")) == "3" and callable(notified) and notified():
        return None
    return Connections(pool)


class Connections:
    """Sends commands on connections made like a client's connection *pool* makes its own
    (same class and settings), but not counted or kept by the pool; replies are as Redis
    sent them (no response callbacks: ``SET`` answers ``b"OK"`` or ``None``)."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        settings = pool.connection_kwargs
        # How packed() encodes strings; None: the connections pack commands themselves.
        self._encoding = key_encoding(settings) if packs_in_python(settings) else None
        # How much each recv asks for where replies are read here (:mod:`._replies`); None:
        # read by the connection, whose class reads them its own way (Sentinel's), or with
        # health checks (each read times the next).
        plain = pool.connection_class.read_response is AbstractConnection.read_response
        self._read_size: int | None = (
            settings.get("socket_read_size", _READ_SIZE)
            if plain and not settings.get("health_check_interval")
            else None
        )
        self._idle: list[Any] = []  # list.pop and list.append are atomic: no lock needed
        self._pid = os.getpid()
        # Disconnect them when the store goes. As garbage of a reference cycle (an app is
        # one) a connection's own __del__ may run after its socket's, which then warns that
        # it was never closed; the finalizer holds them, so they are closed first.
        weakref.finalize(self, _disconnect_all, self._idle)

    def execute(self, *command: Any) -> Any:
        """Send *command*, return its reply."""
        return self.pipeline(command)[0]

    def pipeline(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send *commands* in one round trip, return their replies; an error reply is raised
        once every reply is read."""
        connection = self._take()
        try:
            return _call(connection, commands, self._encoding, self._read_size)
        except BaseException as exc:
            _settle(connection, exc)
            raise
        finally:
            self._idle.append(connection)  # kept even when disconnected: it reconnects

    def evalsha(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``EVALSHA`` *script*; a server that does not know it loads it first (scripts are
        the server's, whichever connection loads them)."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return self.execute(*command)
        except redis.exceptions.NoScriptError:
            self.execute("SCRIPT", "LOAD", script.script)
        return self.execute(*command)

    def _take(self) -> Any:
        if os.getpid() != self._pid:  # a forked child: the parent's sockets are not ours
            self._idle.clear()  # (asked each time: uWSGI forks without Python's fork hooks)
            self._pid = os.getpid()
        try:
            connection = self._idle.pop()
        except IndexError:
            return self._pool.connection_class(**self._pool.connection_kwargs)
        if _connected(connection) and _stale(connection):
            connection.disconnect()
        return connection


def _call(
    connection: Any,
    commands: Sequence[tuple[Any, ...]],
    encoding: tuple[str, str] | None,
    read_size: int | None,
) -> list[Any]:
    """Send *commands* and read their replies as the client would: connect first if need be
    (Sentinel's connections ask for the master), then send with the connection's retry
    policy (a connection error disconnects, and the commands are sent again). Strings are
    packed in *encoding* (name, errors); ``None``: by the connection's own packer. Replies
    are read by :mod:`._replies`, *read_size* bytes asked of each ``recv``, or by the
    connection's ``read_response`` if ``None``."""
    if not _connected(connection):
        connection.connect()
    if encoding is None:
        data = connection.pack_commands(commands)
    else:
        data = [piece for command in commands for piece in packed(command, *encoding)]
        if len(data) == len(commands):  # no argument sent alone: one piece, one send
            data = [b"".join(data)]

    def send() -> list[Any]:
        connection.send_packed_command(data)
        if read_size is None:
            replies = _read_each(connection, commands)
        else:
            replies = _read(connection, len(commands), read_size)
        for reply in replies:  # all read: the connection is in order
            if isinstance(reply, redis.exceptions.ResponseError):
                raise reply
        return replies

    replies: list[Any] = connection.retry.call_with_retry(
        send, lambda _error: connection.disconnect()
    )
    return replies


def _read(connection: Any, count: int, size: int) -> list[Any]:
    """*count* replies read from *connection*'s socket (:mod:`._replies`), *size* bytes
    asked of each ``recv``; error replies among them, not raised."""
    parser = connection._parser
    replies = Replies(
        connection._sock, size, parser.parse_error, getattr(parser, "handle_push_response", None)
    )
    try:
        read = [replies.next() for _ in range(count)]
        replies.finish()
    except (ValueError, IndexError) as exc:  # a length that is not one, an empty push...
        raise redis.exceptions.InvalidResponse(f"malformed reply: {exc}") from exc
    return read


def _read_each(connection: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """A reply per command, read by the connection's ``read_response``; error replies
    among them, not raised."""
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(connection.read_response())
        except redis.exceptions.ResponseError as exc:  # read whole: read on
            replies.append(exc)
    return replies


Piece = bytes | bytearray | memoryview


def packed(command: Sequence[Any], encoding: str = "utf-8", errors: str = "strict") -> list[Piece]:
    """*command* in the Redis protocol, an array of bulk strings, in pieces to send in turn:
    each argument's bytes as redis-py's Python packer makes them (bytes-like as they are,
    strings in *encoding*, numbers by ``repr``), and like it, an argument longer than
    ``_CUTOFF`` bytes (or a memoryview) is a piece of its own, never copied.

    The store's own commands are strings, bytes and ints, none long: they take the short
    way, one piece (packing is the largest part of the Python a command costs)."""
    head = [b"*%d\r\n" % len(command)]
    for argument in command:
        kind = type(argument)
        if kind is str:
            data = argument.encode(encoding, errors)
        elif kind is bytes:
            data = argument
        elif kind is int:
            data = b"%d" % argument  # repr's digits
        else:
            return _pieces(command, encoding, errors)
        if len(data) > _CUTOFF:
            return _pieces(command, encoding, errors)
        head.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return [b"".join(head)]


def _pieces(command: Sequence[Any], encoding: str, errors: str) -> list[Piece]:
    """:func:`packed`, whatever the arguments."""
    pieces: list[Piece] = []
    head = [b"*%d\r\n" % len(command)]
    for argument in command:
        if isinstance(argument, str):
            data: Piece = argument.encode(encoding, errors)
        elif isinstance(argument, (bytes, bytearray, memoryview)):
            data = argument
        elif isinstance(argument, (int, float)) and not isinstance(argument, bool):
            data = repr(argument).encode()
        else:
            raise redis.exceptions.DataError(f"cannot send a {type(argument).__name__}")
        if len(data) > _CUTOFF or isinstance(data, memoryview):
            head.append(b"$%d\r\n" % len(data))
            pieces += (b"".join(head), data)
            head = [b"\r\n"]
        else:
            head.append(b"$%d\r\n%s\r\n" % (len(data), data))
    pieces.append(b"".join(head))
    return pieces


def _connected(connection: Any) -> bool:
    """Whether *connection* has its socket (``is_connected``, where redis-py has it)."""
    state = getattr(connection, "is_connected", None)
    return bool(state) if state is not None else connection._sock is not None


def _stale(connection: Any) -> bool:
    """Whether a connected *connection* was closed by the server while idle (reading that
    raises) or holds a stray reply: what the client's pool checks before use.

    A plain socket (TCP or Unix) is asked with one ``poll``, where there is one: here every
    reply is read whole, so an idle socket is readable only once the server closed it or
    sent what no command asked for. Others (TLS may hold bytes of its own) are asked as the
    pool asks them."""
    sock = getattr(connection, "_sock", None)
    poll = getattr(select, "poll", None)  # none on Windows; eventlet's monkey patch drops it
    if poll is not None and type(sock) is socket.socket:
        poller = poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    try:
        return bool(connection.can_read())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return True


def _disconnect_all(connections: list[Any]) -> None:
    for connection in connections:
        with contextlib.suppress(Exception):
            connection.disconnect()
    connections.clear()


def _settle(connection: Any, exc: BaseException) -> None:
    """After *exc*: an error reply was read whole and leaves the connection in order; any
    other failure may leave a reply half read, so the connection starts afresh."""
    if not isinstance(exc, redis.exceptions.ResponseError):
        connection.disconnect()
