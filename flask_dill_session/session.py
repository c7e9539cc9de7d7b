"""The session object handed to views: a dict that loads itself on first use."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from flask.sessions import SessionMixin

if TYPE_CHECKING:
    from .exc import SessionUnavailableError
    from .stores.base import Entry


class DillSession(dict[str, Any], SessionMixin):
    """A dict-like session whose data is read from the store only when first used.

    ``sid`` is the session id (reading it uses the session, so it is always the id the
    session is stored under), ``new`` is true until the session has been stored, and
    ``permanent`` is kept with the stored session. ``modified`` follows werkzeug's
    ``CallbackDict`` exactly: set by an assignment, ``del``, ``update``, ``|=``,
    ``clear`` or ``popitem`` that succeeds, by ``pop`` of a present key and
    ``setdefault`` of an absent one, never by a read (deeper changes are found when
    saving). ``accessed`` is set by any use.
    """

    # Per-request state. Flags that a request rarely changes are class defaults: an
    # instance assigns one only when it changes it (a session is made for every request).
    modified = False
    accessed = False
    created = 0.0
    entry: Entry | None = None  # the store entry this request holds
    payload: bytes | None = None  # serialized data as loaded, for change detection
    reseal = False  # stored under a fallback key: rewrite with the current one
    foreign = False  # the cookie's session is readable elsewhere only: keep the cookie
    readonly = False  # used by a view marked readonly: loaded unlocked, never saved
    saved = False  # save_session has run: a later use is read-only, unlocked
    after_view = False  # the view has returned: a store failure now answers 503
    failed = False  # the request ended in an unhandled exception
    rotated = False  # stored before under another id (regenerate): not created here
    unavailable: SessionUnavailableError | None = None  # why it could not be used
    indexed_user: str | None = None  # the user it is indexed under, as loaded
    retired = False  # its id was replaced by regenerate: served read-only (grace)

    def __init__(
        self, sid: str | None, permanent: bool, loader: Callable[[DillSession], None]
    ) -> None:
        super().__init__()
        self._sid = sid
        self.cookie_sid = sid  # the id the request's cookie named, if it was valid
        self.new = sid is None
        self.stored_permanent = permanent  # the flag as stored, to tell a change of it
        self._permanent = permanent
        self._loader: Callable[[DillSession], None] | None = loader

    @property
    def sid(self) -> str:
        """The session id: a string in every view (a new session has one before it is
        stored; no cookie is set and nothing is stored unless it is written)."""
        self._read()
        return self._sid or ""

    # -- loading -------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether this request has used the session (and so read it from the store)."""
        return self._loader is None

    def load(self) -> None:
        """Read the session from the store now, if not done yet."""
        loader, self._loader = self._loader, None
        if loader is not None:
            try:
                loader(self)
            except BaseException:
                self._loader = loader
                raise

    def _restore(
        self,
        data: dict[str, Any],
        entry: Entry,
        *,
        payload: bytes | None,
        created: float,
        permanent: bool,
        reseal: bool,
    ) -> None:
        """Become the stored session: its data, entry, payload and flags."""
        dict.update(self, data)
        self.entry = entry
        self.payload = payload
        self.created = created
        self._permanent = self.stored_permanent = permanent
        self.reseal = reseal
        self.new = False

    def _reset(self, sid: str, entry: Entry, *, created: float) -> None:
        """Become a new session *sid*, not stored yet (data is left as it is)."""
        self._sid = sid
        self.entry = entry
        self.new = True
        self.payload = None
        self.created = created

    # -- the dict, loading on first use ---------------------------------------------
    # Reads call _read; writes call it too, then set ``modified`` once they succeeded.

    def _read(self) -> None:
        if self._loader is not None:
            self.load()
        self.accessed = True

    @property
    def permanent(self) -> bool:
        self._read()  # the stored session's flag, not the configured default
        return self._permanent

    @permanent.setter
    def permanent(self, value: bool) -> None:
        self._read()
        self._permanent = bool(value)
        self.modified = True  # as Flask's, which assigns session["_permanent"]

    def __getitem__(self, key: str) -> Any:
        self._read()
        return dict.__getitem__(self, key)

    def __contains__(self, key: object) -> bool:
        self._read()
        return dict.__contains__(self, key)

    def __iter__(self) -> Iterator[str]:
        self._read()
        return dict.__iter__(self)

    def __reversed__(self) -> Iterator[str]:
        self._read()
        return dict.__reversed__(self)

    def __len__(self) -> int:
        self._read()
        return dict.__len__(self)

    def __repr__(self) -> str:
        self._read()
        return dict.__repr__(self)

    def __eq__(self, other: object) -> bool:
        self._read()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        self._read()
        return dict.__ne__(self, other)

    def __or__(self, other: Any) -> Any:
        self._read()
        return dict.__or__(self, other)

    def __ror__(self, other: Any) -> Any:
        self._read()
        return dict.__ror__(self, other)

    def get(self, key: str, default: Any = None) -> Any:
        self._read()
        return dict.get(self, key, default)

    def keys(self) -> Any:
        self._read()
        return dict.keys(self)

    def values(self) -> Any:
        self._read()
        return dict.values(self)

    def items(self) -> Any:
        self._read()
        return dict.items(self)

    def copy(self) -> dict[str, Any]:
        self._read()
        return dict.copy(self)

    def __setitem__(self, key: str, value: Any) -> None:
        self._read()
        dict.__setitem__(self, key, value)
        self.modified = True

    def __delitem__(self, key: str) -> None:
        self._read()
        dict.__delitem__(self, key)
        self.modified = True

    def __ior__(self, other: Any) -> DillSession:  # type: ignore[override]
        self._read()
        dict.update(self, other)
        self.modified = True
        return self

    def clear(self) -> None:
        self._read()
        dict.clear(self)
        self.modified = True

    def pop(self, key: str, *default: Any) -> Any:
        self._read()
        present = dict.__contains__(self, key)
        value = dict.pop(self, key, *default)
        if present:
            self.modified = True
        return value

    def popitem(self) -> tuple[str, Any]:
        self._read()
        item = dict.popitem(self)
        self.modified = True
        return item

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._read()
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        dict.__setitem__(self, key, default)
        self.modified = True
        return default

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._read()
        dict.update(self, *args, **kwargs)
        self.modified = True
