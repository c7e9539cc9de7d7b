"""Reading the replies to the Redis store's own commands, straight from the socket.

redis-py reads a reply through several layers (the connection, its parser, a socket buffer
that seeks and reads lines), each call costing more than the reply's bytes: a round trip
of one ``MGET`` costs a quarter more Python that way (measured in instructions: 88k
against 72k). The store's commands get only a few kinds of reply, read here in one pass
over what one ``recv`` brought: simple strings, errors, integers, bulk strings, nulls and
arrays of them (RESP2 and RESP3 alike), as redis-py returns them with
``decode_responses=False``. As redis-py does, an error reply becomes its parser's exception
(``parse_error``), raised at once if it is a connection error (``LOADING``, ``NOAUTH``...),
else returned in its place; a RESP3 push message (a maintenance notification, say) that
comes with the replies goes to the parser's push handler, and the reply after it is read.
Anything else (a map, bytes no command asked for) is refused as ``InvalidResponse``, and
the caller then closes the connection.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import redis.exceptions

_CRLF = b"\r\n"
_BULK, _ARRAY, _INTEGER, _SIMPLE, _ERROR, _NULL, _PUSH = b"$*:+-_>"
_PIECE = 1 << 22  # the most one recv asks for while a long bulk string comes in
_PUSHED = object()  # what a push message reads as: not a reply


class Replies:
    """The replies arriving on *sock*, read with :meth:`next`, then :meth:`finish`. Error
    replies are made by *parse_error*, push messages handed to *handle_push* (the
    connection's parser's); *size* bytes are asked of each ``recv``."""

    __slots__ = ("_buffer", "_handle_push", "_parse_error", "_pos", "_size", "_sock")

    def __init__(
        self,
        sock: socket.socket,
        size: int,
        parse_error: Callable[[str], Exception],
        handle_push: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        self._sock = sock
        self._size = size
        self._parse_error = parse_error
        self._handle_push = handle_push
        self._buffer = b""
        self._pos = 0

    def next(self) -> Any:
        """The next reply, after any push messages; an error reply that is not a
        connection error is returned (a ``ResponseError``), not raised."""
        reply = self._value()
        while reply is _PUSHED:
            reply = self._value()
        return reply

    def finish(self) -> None:
        """Read the push messages that came after the last reply; refuse anything else."""
        while self._pos < len(self._buffer):
            if self._buffer[self._pos] != _PUSH:
                raise redis.exceptions.InvalidResponse("received more than the commands' replies")
            self._value()

    def _value(self) -> Any:
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
            error = self._parse_error(line.decode("utf-8", "replace"))
            if isinstance(error, redis.exceptions.ConnectionError):
                raise error
            return error
        if kind == _PUSH:
            message = [self.next() for _ in range(int(line))]
            if self._handle_push is not None:
                self._handle_push(message)
            return _PUSHED
        raise redis.exceptions.InvalidResponse(f"unexpected reply type {chr(kind)!r}")

    def _more(self) -> bytes:
        """Receive more; the buffer keeps what was not read yet."""
        data = self._recv(self._size)
        self._buffer = self._buffer[self._pos :] + data
        self._pos = 0
        return self._buffer

    def _long(self, length: int) -> bytes:
        """A bulk string of *length* bytes that did not come whole: its pieces are joined
        once it has come (not each time one comes), and a length no reply has costs no
        memory before the bytes arrive."""
        pieces = [self._buffer[self._pos :]]
        have = len(pieces[0])
        while have < length + 2:
            piece = self._recv(max(self._size, min(length + 2 - have, _PIECE)))
            pieces.append(piece)
            have += len(piece)
        whole = b"".join(pieces)
        del pieces  # the joined copy alone from here
        self._buffer, self._pos = whole, length + 2
        if whole[length : length + 2] != _CRLF:
            raise redis.exceptions.InvalidResponse("a bulk string not ended by CRLF")
        return whole[:length]

    def _recv(self, size: int) -> bytes:
        try:
            data = self._sock.recv(size)
        except TimeoutError as exc:
            raise redis.exceptions.TimeoutError("Timeout reading from socket") from exc
        except OSError as exc:
            raise redis.exceptions.ConnectionError(
                f"Error while reading from socket: {exc.args}"
            ) from exc
        if not data:
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        return data
