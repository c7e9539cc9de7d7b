"""What a tolerant load leaves behind, and what is kept of it.

A :class:`Missing` placeholder stands where a class could not be found or an object not
built; :func:`drop_unloadable` removes the top-level keys that hold one, or an object whose
stored state its class refused, or a dataclass instance that no longer fits its class (and
gives instances the defaults of fields added since). This module knows no Flask.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections import deque
from collections.abc import Iterator, Mapping
from types import FunctionType, ModuleType
from typing import Any


class Missing:
    """Stands in for a value that could not be loaded; the key holding it is dropped.

    It accepts whatever the unpickler does to the object it replaces (call, state,
    items), so one bad object does not stop the rest of the payload from loading.
    """

    missing = "?"  # what could not be loaded, e.g. "shop.cart.Cart"
    reason = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def add(self, item: Any) -> None:
        pass


def missing_class(what: str, reason: str) -> type[Missing]:
    return type("Missing", (Missing,), {"missing": what, "reason": reason})


def name_of(obj: Any) -> str:
    if isinstance(obj, type) and issubclass(obj, Missing):
        return obj.missing
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def why_failed(exc: BaseException) -> str:
    """An error's reason for the log: messages of import errors name code only; others
    may quote session data, so only their type is kept."""
    if isinstance(exc, (ImportError, AttributeError)):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


def drop_unloadable(data: dict[str, Any], broken: Mapping[int, tuple[Any, str]]) -> dict[str, str]:
    """Remove from *data* the top-level keys whose values hold placeholders, objects that
    failed to build, or dataclass instances that no longer fit their class; fill fields
    added since with their defaults. Return the dropped keys and why."""
    dropped: dict[str, str] = {}
    for key in list(data):
        why = _first_problem(data[key], broken)
        if why is not None:
            del data[key]
            dropped[key] = why
    return dropped


def _first_problem(value: Any, broken: Mapping[int, tuple[Any, str]]) -> str | None:
    seen: set[int] = set()
    todo = [value]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Missing) or (isinstance(obj, type) and issubclass(obj, Missing)):
            return f"{obj.missing} cannot be loaded: {obj.reason}"
        if id(obj) in broken:
            return f"{broken[id(obj)][1]} (its stored state is not accepted)"
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            why = _fit_dataclass(obj)
            if why is not None:
                return why
        todo.extend(_children(obj))
    return None


def _children(obj: Any) -> Iterator[Any]:
    if isinstance(obj, (str, bytes, int, float, type, ModuleType)) or obj is None:
        return
    if isinstance(obj, dict):
        yield from obj.keys()
        yield from obj.values()
    elif isinstance(obj, (list, tuple, set, frozenset, deque)):
        yield from obj
    elif isinstance(obj, FunctionType):
        yield from (cell.cell_contents for cell in obj.__closure__ or () if _filled(cell))
        yield from obj.__defaults__ or ()
    elif _ordinary(obj):
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            yield from state.values()
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if isinstance(name, str) and hasattr(obj, name):
                    yield getattr(obj, name)
    else:
        yield from _reduced(obj)


def _ordinary(obj: Any) -> bool:
    """Whether *obj* pickles as its ``__dict__`` and slots (no reduction of its own)."""
    cls: Any = type(obj)
    return cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__


def _reduced(obj: Any) -> Iterator[Any]:
    """What pickling *obj* saves: constructor arguments, state, items."""
    try:
        reduced = obj.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    except Exception:
        return
    if not isinstance(reduced, tuple):
        return
    args, state, items, pairs = (*reduced[1:], None, None, None, None)[:4]
    yield from args or ()
    if isinstance(state, tuple):  # (dict state, slots state)
        yield from state
    elif state is not None:
        yield state
    yield from items or ()
    yield from (value for pair in pairs or () for value in pair)


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _fit_dataclass(obj: Any) -> str | None:
    """Give *obj* the defaults of fields added since it was stored; say why it does not fit
    when a field has no stored value and no default, or a stored attribute is no field."""
    cls = type(obj)
    state = getattr(obj, "__dict__", None)
    for field in dataclasses.fields(obj):
        if hasattr(obj, field.name):
            continue
        if field.default is not dataclasses.MISSING:
            object.__setattr__(obj, field.name, field.default)
        elif field.default_factory is not dataclasses.MISSING:
            object.__setattr__(obj, field.name, field.default_factory())
        else:
            return f"{name_of(cls)} has a new field {field.name!r} with no default"
    if isinstance(state, dict):
        stale = [name for name in state if not hasattr(cls, name) and name not in _fields(cls)]
        if stale:
            return f"{name_of(cls)} no longer has the stored field(s) {', '.join(map(repr, stale))}"
    return None


def _fields(cls: type) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)}
