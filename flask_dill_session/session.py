"""The session object handed to views: a dict that loads itself on first use."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask.sessions import SessionMixin

if TYPE_CHECKING:
    from .stores.base import Entry


class DillSession(dict[str, Any], SessionMixin):
    """A dict-like session whose data is read from the store only when first used.

    ``sid`` is the session id, ``new`` is true until the session has been stored,
    ``modified`` is set by top-level writes (deeper changes are found when saving),
    ``accessed`` by any use, and ``permanent`` is kept with the stored session.
    """

    def __init__(
        self, sid: str | None, permanent: bool, loader: Callable[[DillSession], None]
    ) -> None:
        super().__init__()
        self.sid = sid
        self.cookie_sid = sid  # the id the request's cookie named, if it was valid
        self.new = sid is None
        self.modified = False
        self.accessed = False
        self.created = 0.0
        self.entry: Entry | None = None  # the store entry this request holds
        self.payload: bytes | None = None  # serialized data as loaded, for change detection
        self.reseal = False  # stored under a fallback key: rewrite with the current one
        self.foreign = False  # the cookie's session is readable elsewhere only: keep the cookie
        self.saved = False  # save_session has run: a later use is read-only, unlocked
        self.written = False  # this response wrote the session to the store
        self._permanent = permanent
        self._loader: Callable[[DillSession], None] | None = loader

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

    @property
    def permanent(self) -> bool:
        self.load()  # the stored session's flag, not the configured default
        return self._permanent

    @permanent.setter
    def permanent(self, value: bool) -> None:
        self.load()
        if bool(value) != self._permanent:
            self._permanent = bool(value)
            self.modified = True


def _wrap(name: str, *, writes: bool) -> Callable[..., Any]:
    method = getattr(dict, name)

    def wrapper(self: DillSession, *args: Any, **kwargs: Any) -> Any:
        if self._loader is not None:
            self.load()
        self.accessed = True
        if writes:
            self.modified = True
        return method(self, *args, **kwargs)

    wrapper.__name__ = name
    wrapper.__doc__ = method.__doc__
    return wrapper


_READS = (
    "__getitem__", "__contains__", "__iter__", "__reversed__", "__len__", "__repr__",
    "__eq__", "__ne__", "__or__", "get", "keys", "values", "items", "copy",
)  # fmt: skip
_WRITES = (
    "__setitem__",
    "__delitem__",
    "__ior__",
    "clear",
    "pop",
    "popitem",
    "setdefault",
    "update",
)

for _name in _READS:
    setattr(DillSession, _name, _wrap(_name, writes=False))
for _name in _WRITES:
    setattr(DillSession, _name, _wrap(_name, writes=True))
