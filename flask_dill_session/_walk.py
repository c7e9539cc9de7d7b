"""Walking session values: the path to a value, and the values bound to this process.

Flask and werkzeug classes are recognized by module and name, so nothing here imports
them, and proxies are recognized by their real type, so none is resolved by accident.
"""

from __future__ import annotations

import collections
import io
import mmap
import pickle
import reprlib
import select
import selectors
import socket
import subprocess
import tempfile
import threading
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

ROOT = "session"
MAX_DEPTH = 40
MAX_PATH = 200
_REDUCE = f".__reduce_ex__({pickle.HIGHEST_PROTOCOL})"
_ATOMS = frozenset({int, float, complex, bool, str, bytes, type(None)})
_PLAIN = _ATOMS | {dict, list, tuple, set, frozenset, type, types.FunctionType, types.CodeType}
# In-memory buffers hold no descriptor: they load back anywhere (a FileStorage around one
# is still refused, as an upload).
_PLAIN |= {io.BytesIO, io.StringIO}
_SEQUENCES: tuple[type, ...] = (list, tuple, collections.deque)
_SETS: tuple[type, ...] = (set, frozenset, type({}.keys()), type({}.values()), type({}.items()))
_OPAQUE: tuple[type, ...] = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
)


class Refusal(NamedTuple):
    """Why a value bound to this process cannot be stored, and what to store instead."""

    what: str
    hint: str
    in_class_ok: bool = False  # allowed in a class body that dill copies by value


def _select_types() -> tuple[type, ...]:
    found: list[Any] = [getattr(select, name, None) for name in ("epoll", "kqueue", "devpoll")]
    if hasattr(select, "poll"):
        found.append(type(select.poll()))
    return (selectors.BaseSelector, *(kind for kind in found if isinstance(kind, type)))


_BY_CLASS: tuple[tuple[tuple[type, ...], Refusal], ...] = (
    (
        (io.IOBase, tempfile._TemporaryFileWrapper),
        Refusal("an open file object", "store its contents or its path"),
    ),
    ((socket.socket,), Refusal("a socket of this process", "store its address")),
    (_select_types(), Refusal("an I/O selector of this process", "create it where it is used")),
    ((subprocess.Popen,), Refusal("a subprocess handle", "store its pid or its arguments")),
    ((mmap.mmap,), Refusal("a memory map of this process", "store its bytes or a path")),
    (
        (
            type(threading.Lock()),
            type(threading.RLock()),
            threading.Condition,
            threading.Semaphore,
            threading.Event,
            threading.Barrier,
        ),
        Refusal(
            "a threading primitive of this process",
            "a copy would be a new, unrelated one; create it where it is used",
            in_class_ok=True,
        ),
    ),
)

_APP = Refusal("the Flask app", "use current_app where it is needed; do not store it")
_CONTEXT = Refusal("a Flask context", "store the values you need from it")
_PROXY = Refusal("a LocalProxy", "")
#: class name -> (package of its module, refusal)
_BY_NAME: dict[str, tuple[str, Refusal]] = {
    "FileStorage": (
        "werkzeug",
        Refusal("FileStorage wraps an open file", "store its bytes or a path"),
    ),
    "LocalProxy": ("werkzeug", _PROXY),
    "Request": ("werkzeug", Refusal("the request object", "store the values you need from it")),
    "Flask": ("flask", _APP),
    "App": ("flask", _APP),
    "SessionMixin": ("flask", Refusal("the session itself", "store its data")),
    "_AppCtxGlobals": ("flask", Refusal("flask.g", "store the values you need from it")),
    "AppContext": ("flask", _CONTEXT),
    "RequestContext": ("flask", _CONTEXT),
}


def refusal(obj: Any, in_class: bool = False) -> Refusal | None:
    """Why *obj* is bound to this process (an open file, a socket, a lock, the app, a
    request, the session, a proxy to one of them...), or None if it is not.

    *in_class*: *obj* is reached through a class body, where threading primitives are
    allowed (they are the class's own, not session data).
    """
    cls = type(obj)
    if cls in _PLAIN:
        return None
    for classes, found in _BY_CLASS:
        if issubclass(cls, classes):
            return None if in_class and found.in_class_ok else found
    for klass in cls.__mro__:
        entry = _BY_NAME.get(klass.__qualname__)
        if entry is not None and _in_package(klass, entry[0]):
            return _proxy_refusal(obj) if entry[1] is _PROXY else entry[1]
    return None


def _in_package(klass: type, package: str) -> bool:
    module = str(getattr(klass, "__module__", ""))
    return module == package or module.startswith(package + ".")


def _proxy_refusal(proxy: Any) -> Refusal:
    try:
        target = object.__getattribute__(proxy, "_get_current_object")()
    except Exception:
        return Refusal("an unbound LocalProxy", "store the value it stands for, not the proxy")
    found = refusal(target)
    if found is None:
        what = f"a LocalProxy to a {type(target).__name__}"
        return Refusal(what, "store the value, not the proxy")
    hint = f"{found.hint}, not the proxy" if found.hint.startswith("store") else found.hint
    return Refusal(f"{found.what} (a LocalProxy to it)", hint)


def captured_name(obj: Any, target: Any) -> str | None:
    """The name under which function *obj* captures *target* (a global or a closure
    variable it uses), if it does."""
    function = getattr(obj, "__func__", obj)
    if not isinstance(function, types.FunctionType):
        return None
    cells = function.__closure__ or ()
    for name, cell in zip(function.__code__.co_freevars, cells, strict=False):
        try:
            if cell.cell_contents is target:
                return name
        except ValueError:  # an empty cell
            continue
    for name in _names(function.__code__):
        if function.__globals__.get(name) is target:
            return name
    return None


def _names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def walk(root: Any, fails: Callable[[Any], bool], depth: int = MAX_DEPTH) -> tuple[str, Any]:
    """Descend from *root* into the first child for which *fails* is true, then into its
    first such child, and so on; return the path taken (as Python-like text, capped at
    ``MAX_PATH`` characters) and the value reached.

    Each object is tried once (so reference cycles end), the walk goes at most *depth*
    steps, and it does not enter values bound to this process (see :func:`refusal`).
    """
    steps: list[str] = []
    node = root
    seen = {id(root): root}  # values kept alive, so that their ids stay theirs
    while len(steps) < depth:
        for step, child in children(node):
            if id(child) in seen:
                continue
            seen[id(child)] = child
            if fails(child):
                steps.append(step)
                node = child
                break
        else:
            break
    return shorten(ROOT + "".join(steps)), node


def children(obj: Any) -> Iterator[tuple[str, Any]]:
    """The values pickling *obj* would save, each with the step that names it: items of
    containers (dict keys too), attributes in ``__dict__`` and in ``__slots__`` of the class
    and its bases, or the arguments and state of a custom ``__reduce_ex__``/``__getstate__``.
    Values that are always serializable (numbers, strings, None) are left out, and values
    bound to this process have none (they are not entered)."""
    try:
        for step, child in _children(obj):
            if type(child) not in _ATOMS:
                yield step, child
    except Exception:  # a value that breaks when inspected has no children to show
        return


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    cls = type(obj)
    if refusal(obj) is not None:
        return
    if issubclass(cls, dict):
        yield from _items(list(dict.items(obj)))
    elif issubclass(cls, types.MappingProxyType):
        yield from _items(list(obj.items()))
    elif issubclass(cls, _SEQUENCES):
        yield from ((f"[{index}]", value) for index, value in enumerate(tuple(obj)))
    elif issubclass(cls, _SETS):
        yield from ((f" member {safe_repr(value)}", value) for value in tuple(obj))
    elif not issubclass(cls, _OPAQUE):
        yield from _state(obj)


def _items(items: Iterable[tuple[Any, Any]]) -> Iterator[tuple[str, Any]]:
    for key, value in items:
        if type(value) not in _ATOMS:
            yield f"[{safe_repr(key)}]", value
        if type(key) not in _ATOMS:
            yield f" key {safe_repr(key)}", key


def _state(obj: Any) -> Iterator[tuple[str, Any]]:
    cls = type(obj)
    attributes = getattr(obj, "__dict__", None)
    if _overrides(cls, "__reduce_ex__") or _overrides(cls, "__reduce__"):
        yield from _reduced(obj, attributes)
    elif _overrides(cls, "__getstate__"):
        yield ".__getstate__()", obj.__getstate__()
    else:
        if isinstance(attributes, dict):
            yield from ((f".{name}", value) for name, value in list(attributes.items()))
        yield from _slots(obj)


def _overrides(cls: type, name: str) -> bool:
    return any(name in vars(klass) for klass in cls.__mro__ if klass is not object)


def _reduced(obj: Any, attributes: Any) -> Iterator[tuple[str, Any]]:
    reduced = obj.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    if not isinstance(reduced, tuple):
        return
    args = reduced[1] if len(reduced) > 1 and isinstance(reduced[1], tuple) else ()
    named = args is getattr(obj, "args", None)  # exceptions reduce to their own args
    for index, value in enumerate(args):
        yield (f".args[{index}]" if named else f"{_REDUCE}[1][{index}]"), value
    state = reduced[2] if len(reduced) > 2 else None
    if state is not None and state is attributes:
        yield from ((f".{name}", value) for name, value in list(state.items()))
    elif state is not None:
        yield f"{_REDUCE}[2]", state


def _slots(obj: Any) -> Iterator[tuple[str, Any]]:
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{name}"
            descriptor = klass.__dict__.get(name)
            if descriptor is None:
                continue
            try:
                value = descriptor.__get__(obj, klass)
            except AttributeError:  # an unset slot
                continue
            yield f".{name}", value


class _SafeRepr(reprlib.Repr):
    """Bounded ``repr``: long or deep values are abbreviated, a failing one is named."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = 60

    def repr_instance(self, obj: Any, level: int) -> str:
        try:
            text = repr(obj)
        except Exception:
            return f"<unprintable {type(obj).__name__}>"
        return text if len(text) <= self.maxother else text[: self.maxother - 3] + "..."


_repr = _SafeRepr()


def safe_repr(obj: Any) -> str:
    """``repr(obj)``, at most about 60 characters, never raising."""
    try:
        return _repr.repr(obj)
    except Exception:
        return f"<unprintable {type(obj).__name__}>"


def shorten(path: str, limit: int = MAX_PATH) -> str:
    """*path*, with its middle replaced by ``...`` if it is longer than *limit*."""
    if len(path) <= limit:
        return path
    head = (limit - 3) // 2
    return path[:head] + "..." + path[len(path) - (limit - 3 - head) :]
