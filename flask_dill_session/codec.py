"""The codec: session data to authenticated stored bytes and back, in one place.

:class:`Codec` is all the interface knows of serialization: :meth:`~Codec.dumps` makes
the payload (refusing what cannot be stored), :meth:`~Codec.seal` authenticates it
(refusing, first, what would not load back), :meth:`~Codec.open` authenticates a stored
blob and loads it, dropping only the keys that cannot be loaded and applying the app's
version policy. This module knows no Flask.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from . import envelope, serializer
from .envelope import PERMANENT, RETIRED, Envelope
from .exc import SessionSerializationError, SessionTooLargeError
from .loader import Loader

#: ``migrator(data, stored_version) -> data``: brings a session stored under another
#: ``SESSION_DILL_VERSION`` up to date.
Migrator = Callable[[dict[str, Any], "str | None"], dict[str, Any]]


class Meta(NamedTuple):
    """What is stored beside the data, authenticated with it."""

    permanent: bool
    created: float
    expires: float | None  # the absolute deadline, if any; of a retired blob, its grace's end
    retired: bool = False  # the id was replaced by regenerate: readable during a grace only


class Opened(NamedTuple):
    """A stored session, authenticated and loaded."""

    data: dict[str, Any]
    payload: bytes | None  # the payload *data* was loaded from; None: *data* differs
    meta: Meta
    reseal: bool  # sealed with a fallback key or another format: rewrite on the next save
    dropped: Mapping[str, str]  # top-level keys that could not be kept, and why
    notes: tuple[str, ...]  # what loaded, but differently than stored (for the log)


class Codec:
    """Serializes and authenticates one app's sessions.

    *version* is ``SESSION_DILL_VERSION``; *migrator* brings sessions of another version
    up to date (without one, their keys that hold objects of the app's classes are
    dropped); *renames* and *app_modules* go to :class:`~.loader.Loader`.
    """

    def __init__(
        self,
        secret: str | bytes,
        fallbacks: Sequence[str | bytes] = (),
        *,
        encrypt: bool = False,
        version: str | None = None,
        renames: Mapping[str, str] | None = None,
        app_modules: Sequence[str] = (),
        max_size: int | None = None,
        migrator: Migrator | None = None,
    ) -> None:
        self.envelope = Envelope(secret, fallbacks, encrypt=encrypt)
        self.loader = Loader(renames=renames, app_modules=app_modules)
        self.version = version
        self.max_size = max_size
        self.migrator = migrator

    def dumps(self, data: dict[str, Any]) -> bytes:
        """The payload of *data*; raise :class:`SessionSerializationError` naming the key
        path of a value that cannot be stored, or :class:`SessionTooLargeError`."""
        payload = serializer.dumps(data)
        if self.max_size is not None and len(payload) > self.max_size:
            largest = serializer.sizes_by_key(data)[:3]
            raise SessionTooLargeError(len(payload), self.max_size, largest)
        return payload

    def changed(self, payload: bytes, loaded: bytes | None) -> bool:
        """Whether *payload* (of :meth:`dumps`) holds other data than *loaded* (of
        :meth:`open`)."""
        if loaded is None:
            return True
        if payload == loaded:
            return False
        # Equal data can serialize differently in another process (a set of strings is
        # ordered by per-process hashes): compare with what this process makes of it.
        return payload != serializer.dumps(self.loader.load(serializer.stored(loaded)[0]).data)

    def seal(self, key: str, data: dict[str, Any], payload: bytes, meta: Meta) -> bytes:
        """The blob to store under *key*. A payload that is not vouched for is loaded back
        first: a value that would not load raises :class:`SessionSerializationError` now,
        instead of being lost on the next request."""
        stored, vouched = serializer.stored(payload)
        if not vouched:
            try:
                self.loader.load_strict(stored)
            except Exception as exc:
                raise self._unloadable(data, exc) from exc
        return self.envelope.seal(
            key,
            stored,
            flags=(PERMANENT if meta.permanent else 0) | (RETIRED if meta.retired else 0),
            created=meta.created,
            expires=meta.expires,
            version=self.version,
        )

    def open(self, key: str, blob: bytes) -> Opened:
        """Authenticate and load *blob*, stored under *key*.

        Raises :class:`~.exc.BadPayloadError` (tampered, malformed, unloadable: quarantine
        it) or :class:`~.exc.ForeignPayloadError` (another key or Python: leave it).
        """
        return self._load(self.envelope.open(key, blob))

    def inspect(self, blob: bytes) -> tuple[bytes, Opened]:
        """:meth:`open` without the store key, for the operations commands: the address of
        the session *blob* belongs to, and the session. Blobs of earlier formats raise
        :class:`~.exc.ForeignPayloadError` (they name no session)."""
        sealed = self.envelope.inspect(blob)
        assert sealed.address is not None
        return sealed.address, self._load(sealed)

    def _load(self, sealed: envelope.Opened) -> Opened:
        data, dropped, notes = self.loader.load(sealed.payload)
        current = sealed.version == self.version
        if not current:  # the rare case: copies to add to
            dropped, more = dict(dropped), list(notes)
            data = self._upgrade(sealed.payload, data, sealed.version, dropped, more)
            notes = tuple(more)
        flags = sealed.flags
        meta = Meta(bool(flags & PERMANENT), sealed.created, sealed.expires, bool(flags & RETIRED))
        payload = serializer.unstored(sealed.payload) if current and not dropped else None
        return Opened(data, payload, meta, not sealed.current_key, dropped, notes)

    def _upgrade(
        self,
        payload: bytes,
        data: dict[str, Any],
        stored: str | None,
        dropped: dict[str, str],
        notes: list[str],
    ) -> dict[str, Any]:
        """Data stored by another version of the app: migrated, or trimmed to plain data."""
        if self.migrator is not None:
            try:
                return self.migrator(data, stored)
            except Exception as exc:
                notes.append(
                    f"the migrator failed on a session of version {stored!r}"
                    f" ({type(exc).__name__}: {exc}); keeping its plain data only"
                )
                data = self.loader.load(payload).data  # as stored, not half migrated
        for key in list(data):
            if not _stored_alone(data[key])[1]:
                del data[key]
                dropped[key] = (
                    f"stored by version {stored!r} of the app (this is {self.version!r}) and"
                    " holds the app's objects; a migrator can keep it"
                )
        return data

    def _unloadable(self, data: dict[str, Any], exc: Exception) -> SessionSerializationError:
        reason = f"it would not load back: {type(exc).__name__}"

        def fails(value: Any) -> bool:
            try:
                self.loader.load_strict(_stored_alone(value)[0])
            except Exception:
                return True
            return False

        return serializer.locate(data, reason, fails)


def _stored_alone(value: Any) -> tuple[bytes, bool]:
    """*value* stored as a session of its own, and whether that is vouched for."""
    return serializer.stored(serializer.dumps({"value": value}))
