"""Reading the replies to the Redis store's own commands, straight from the socket.

redis-py reads a reply through several layers (the connection, its parser, a socket buffer
that seeks and reads lines), each call costing more than the reply's bytes: with a
pipeline's second reply, about 40% of the Python a request spends on Redis (measured in
instructions: 87k against 46k per round trip of one ``MGET``). The store's commands get
only a few kinds of reply, read here in one pass over what one ``recv`` brought: simple
strings, errors, integers, bulk strings, nulls and arrays of them (RESP2 and RESP3 alike),
as redis-py returns them with ``decode_responses=False``. Error replies become redis-py's
own exceptions (its parser's ``parse_error``); anything else (a map, a push...) is refused
as ``InvalidResponse``, and the connection is then closed by the caller.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import redis.exceptions

_CRLF = b"\r\n"
_BULK, _ARRAY, _INTEGER, _SIMPLE, _ERROR, _NULL = b"$*:+-_"


class Replies:
    """The replies arriving on *sock*, read one by one with :meth:`next`; errors are made
    by *parse_error* (the connection's parser's)."""

    __slots__ = ("_buffer", "_parse_error", "_pos", "_size", "_sock")

    def __init__(
        self, sock: socket.socket, size: int, parse_error: Callable[[str], Exception]
    ) -> None:
        self._sock = sock
        self._size = size  # bytes asked of each recv
        self._parse_error = parse_error
        self._buffer = b""
        self._pos = 0

    def next(self) -> Any:
        """The next reply; an error reply is returned (a ``ResponseError``), not raised."""
        buffer, pos = self._buffer, self._pos
        end = buffer.find(_CRLF, pos)
        while end < 0:
            buffer, pos = self._more(), 0
            end = buffer.find(_CRLF)
        kind, line = buffer[pos], buffer[pos + 1 : end]
        self._pos = end + 2
        if kind == _BULK:
            length = int(line)
            if length < 0:
                return None
            stop = self._pos + length
            if stop + 2 > len(buffer):
                return self._long(length)
            self._pos = stop + 2
            return buffer[end + 2 : stop]
        if kind == _ARRAY:
            count = int(line)
            return None if count < 0 else [self.next() for _ in range(count)]
        if kind == _INTEGER:
            return int(line)
        if kind == _SIMPLE:
            return line
        if kind == _NULL:
            return None
        if kind == _ERROR:
            return self._parse_error(line.decode("utf-8", "replace"))
        raise redis.exceptions.InvalidResponse(f"unexpected reply type {chr(kind)!r}")

    def done(self) -> bool:
        """Whether every byte received was read (nothing the commands did not ask for)."""
        return self._pos == len(self._buffer)

    def _more(self) -> bytes:
        """Receive more; the buffer keeps what was not read yet."""
        data = self._recv(self._size)
        self._buffer = self._buffer[self._pos :] + data
        self._pos = 0
        return self._buffer

    def _long(self, length: int) -> bytes:
        """A bulk string of *length* bytes that did not come whole: received into one
        buffer of its size, so a large one is not copied again with each piece."""
        whole = bytearray(length + 2)
        view = memoryview(whole)
        have = len(self._buffer) - self._pos
        view[:have] = self._buffer[self._pos :]
        while have < length + 2:
            received = self._recv_into(view[have:])
            have += received
        self._buffer, self._pos = b"", 0
        if whole[length:] != _CRLF:
            raise redis.exceptions.InvalidResponse("a bulk string not ended by CRLF")
        return bytes(view[:length])

    def _recv(self, size: int) -> bytes:
        try:
            data = self._sock.recv(size)
        except OSError as exc:
            raise _read_error(exc) from exc
        if not data:
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        return data

    def _recv_into(self, view: memoryview) -> int:
        try:
            received = self._sock.recv_into(view)
        except OSError as exc:
            raise _read_error(exc) from exc
        if not received:
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        return received


def _read_error(exc: OSError) -> redis.exceptions.RedisError:
    """redis-py's exception for a failed ``recv``: a timeout (Python's, or the kernel's
    ``EAGAIN``: :func:`~._connections._timed_by_kernel`) or a connection error."""
    if isinstance(exc, (TimeoutError, BlockingIOError)):
        return redis.exceptions.TimeoutError("Timeout reading from socket")
    return redis.exceptions.ConnectionError(f"Error while reading from socket: {exc.args}")
