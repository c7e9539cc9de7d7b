"""Loading session payloads: exactly where nothing can go wrong, key by key where it can.

A payload (made by :func:`serializer.dumps`) is untagged C pickle (it starts with the
PROTO opcode), legacy ``p`` + C pickle, or ``d`` + version stamp + dill. Loading is tried
in up to three ways, each only when the one before cannot vouch for the result:

1. ``pickle.loads``, for C pickle that names only standard-library types (untagged);
2. an unpickler whose ``find_class`` applies ``SESSION_DILL_RENAMES`` and resolves classes
   and functions that dill stored by value from ``__main__`` to the running app's own
   (whether the app runs as a script or is imported); dataclass instances are then checked
   against their class's current fields;
3. if that raises (a class renamed or removed, a state the class no longer accepts), a
   tolerant unpickler that builds a :class:`~._salvage.Missing` placeholder for whatever
   fails. The top-level keys holding placeholders are dropped; the rest survives.

This module knows no Flask.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import pkgutil
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from types import FunctionType, MappingProxyType, ModuleType
from typing import Any, NamedTuple

import dill

from ._salvage import drop_unloadable, missing_class, name_of, why_failed
from .exc import BadPayloadError, ForeignPayloadError
from .serializer import DILL, PICKLE, PYTHON, dill_lock

_PROTO = b"\x80"


class Loaded(NamedTuple):
    """A loaded session: its data, the keys dropped (key -> why) and notes for the log."""

    data: dict[str, Any]
    dropped: Mapping[str, str]
    notes: tuple[str, ...]


_NOTHING_DROPPED: Mapping[str, str] = MappingProxyType({})


def _plain(data: dict[str, Any]) -> Loaded:
    """A fully loaded session (made without NamedTuple's Python-level ``__new__``)."""
    return tuple.__new__(Loaded, (data, _NOTHING_DROPPED, ()))


class Loader:
    """Loads payloads for one app.

    *renames* maps old qualified names to new ones (``"old.module.Cart"`` ->
    ``"shop.cart.Cart"``; a bare module name renames the whole module). *app_modules*
    names the modules an app's ``__main__`` code may live in when imported (Flask's
    ``app.import_name``).
    """

    def __init__(
        self, *, renames: Mapping[str, str] | None = None, app_modules: Sequence[str] = ()
    ) -> None:
        self.renames = dict(renames or {})
        self.app_modules = tuple(name for name in app_modules if name != "__main__")
        self.script_module = _script_module_name()

    def load(self, payload: bytes) -> Loaded:
        """Load *payload*, dropping only the top-level keys whose values cannot be loaded.

        Raises :class:`ForeignPayloadError` for dill code of another Python version and
        :class:`BadPayloadError` for a payload that cannot be read at all.
        """
        if payload[:1] == _PROTO:  # standard-library types only: nothing to resolve
            try:
                data = pickle.loads(payload)
            except Exception:
                pass  # cannot happen to what dumps vouched for; the tolerant path will say
            else:
                if type(data) is dict:
                    return _plain(data)
        body, is_dill = _split(payload)
        resolver = _Resolver(self)
        try:
            data = _as_dict(resolver.load(body, is_dill))
        except BadPayloadError:
            raise
        except Exception:
            resolver = _Resolver(self)
            data = _as_dict(resolver.load_tolerant(body))
        dropped = drop_unloadable(data, resolver.broken) if resolver.needs_check else {}
        return Loaded(data, dropped, tuple(resolver.notes))

    def load_strict(self, payload: bytes) -> dict[str, Any]:
        """Load *payload* exactly as a request would, raising on any failure (a trial load)."""
        body, is_dill = _split(payload)
        resolver = _Resolver(self)
        data = _as_dict(resolver.load(body, is_dill))
        if resolver.needs_check:
            problems = drop_unloadable(dict(data), resolver.broken)
            if problems:
                key, why = next(iter(problems.items()))
                raise ValueError(f"session[{key!r}] does not load back: {why}")
        return data


def _split(payload: bytes) -> tuple[bytes, bool]:
    """``(pickle body, whether it is dill's)``; refuse what this process cannot load."""
    tag = payload[:1]
    if tag == _PROTO:
        return payload, False
    if tag == PICKLE:
        return payload[1:], False
    if tag == DILL:
        end = 2 + payload[1]
        python, _, dill_version = payload[2:end].decode(errors="replace").partition(" ")
        if python != PYTHON:
            raise ForeignPayloadError(
                f"dill payload written by Python {python} (dill {dill_version}), this is"
                f" Python {PYTHON}: its code can only be loaded there"
            )
        return payload[end:], True
    raise BadPayloadError(f"unknown payload tag {tag!r}")


def _as_dict(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadPayloadError(f"payload is a {type(data).__name__}, not a dict")
    return data


def _script_module_name() -> str | None:
    """The module name the ``__main__`` script would have if imported (``app`` for
    ``python app.py``, ``pkg.app`` for ``python -m pkg.app``); None in an interpreter."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        return str(spec.name)
    path = getattr(main, "__file__", None)
    if not path:
        return None
    name = path.rsplit("/", 1)[-1]
    return name[:-3] if name.endswith(".py") else None


# -- finding classes -----------------------------------------------------------------------

_DILL_MODULES = ("dill._dill", "dill.dill")


class _Resolver:
    """One load's ``find_class`` policy, and what it found on the way."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader
        self.notes: list[str] = []
        self.needs_check = False  # a dataclass or a placeholder was made: walk the data
        self.broken: dict[int, tuple[Any, str]] = {}  # id -> (object, why) for failed builds

    def load(self, body: bytes, is_dill: bool) -> Any:
        if not is_dill:
            return _HookedUnpickler(io.BytesIO(body), self).load()
        with dill_lock:
            return _DillUnpickler(io.BytesIO(body), self).load()

    def load_tolerant(self, body: bytes) -> Any:
        try:
            with dill_lock:  # it may run dill's constructors
                return _TolerantUnpickler(io.BytesIO(body), self).load()
        except Exception as exc:
            raise BadPayloadError(f"cannot load payload: {type(exc).__name__}") from exc

    def find_class(self, module: str, name: str, find: Callable[[str, str], Any]) -> Any:
        """Resolve ``module.name`` with renames and the app's ``__main__``, then *find*."""
        renames = self.loader.renames
        target = renames.get(f"{module}.{name}")
        if target is not None:
            found = pkgutil.resolve_name(target)
            return self._seen(found)
        module = renames.get(module, module)
        if module in _DILL_MODULES or (module, name) == ("types", "new_class"):
            hook = _DILL_HOOKS.get(name)
            if hook is not None:
                return lambda *args: hook(self, *args)
        if module == self.loader.script_module and module not in sys.modules:
            found = self.lookup(name)  # stored by an imported app, loaded by its script
            if found is not None:
                return self._seen(found)
        return self._seen(find(module, name))

    def _seen(self, found: Any) -> Any:
        if isinstance(found, type) and dataclasses.is_dataclass(found):
            self.needs_check = True
        return found

    def lookup(self, qualname: str) -> Any:
        """The running app's object of *qualname* (its modules, then ``__main__``), if any.

        dill gives a nested class only its ``__name__`` when it rebuilds it, so a bare name
        that is not a module global is also looked for in the classes of the module.
        """
        if "<" in qualname:  # local classes and lambdas exist only by value
            return None
        names = [*self.loader.app_modules, "__main__"]
        for module in filter(None, (sys.modules.get(name) for name in names)):
            found: Any = module
            for part in qualname.split("."):
                found = getattr(found, part, None)
            if found is None and "." not in qualname:
                found = _nested(module, qualname)
            if found is not None and not isinstance(found, ModuleType):
                return found
        return None

    # dill's constructors for what it stores by value, resolved to the running app's

    def create_type(
        self, metaclass: type, name: str, bases: Any, *rest: Any, _new: Any = None
    ) -> Any:
        namespace: dict[str, Any] = rest[0] if rest else {}
        if namespace.get("__module__") == "__main__":
            qualname = str(namespace.get("__qualname__", name))
            existing = self.lookup(qualname)
            if isinstance(existing, type) and _defines_all(existing, namespace):
                return self._seen(existing)
            if "<" not in qualname:
                change = "no longer matches" if isinstance(existing, type) else "is gone"
                self.notes.append(
                    f"class {qualname} was rebuilt from its stored definition: the running"
                    f" app's definition {change}"
                )
        if _new is not None:
            return self._seen(types.new_class(name, *_new))
        return self._seen(dill._dill._create_type(metaclass, name, bases, *rest))

    def new_class(self, name: str, bases: Any = (), kwds: Any = None, body: Any = None) -> Any:
        """``types.new_class``, which dill uses for classes with ``__orig_bases__``
        (``Generic[T]``): the class body tells whether it was stored from ``__main__``."""
        namespace: dict[str, Any] = {}
        if body is not None:
            body(namespace)
        return self.create_type(type, name, (), namespace, _new=(bases, kwds, body))

    def create_function(self, code: Any, globs: Any, *rest: Any) -> Any:
        qualname = getattr(code, "co_qualname", "<")
        closure = rest[2] if len(rest) > 2 else None
        if closure is None and isinstance(globs, dict) and globs.get("__name__") == "__main__":
            existing = self.lookup(qualname)
            if isinstance(existing, FunctionType):
                return existing
        return dill._dill._create_function(code, globs, *rest)

    def create_namedtuple(self, name: str, fields: Any, module: str, *rest: Any) -> Any:
        if module == "__main__":
            existing = self.lookup(name)
            if isinstance(existing, type) and getattr(existing, "_fields", None) == tuple(fields):
                return existing
        return dill._dill._create_namedtuple(name, fields, module, *rest)


_DILL_HOOKS: dict[str, Callable[..., Any]] = {
    "_create_type": _Resolver.create_type,
    "_create_function": _Resolver.create_function,
    "_create_namedtuple": _Resolver.create_namedtuple,
    "new_class": _Resolver.new_class,
}


def _nested(module: ModuleType, name: str) -> type | None:
    """The one class called *name* nested in a class of *module*, if there is exactly one."""
    found: list[type] = []
    todo = [v for v in vars(module).values() if isinstance(v, type)]
    seen: set[type] = set()
    while todo:
        cls = todo.pop()
        if cls in seen or cls.__module__ != module.__name__:
            continue
        seen.add(cls)
        inner = [v for v in vars(cls).values() if isinstance(v, type)]
        found.extend(v for v in inner if v.__name__ == name and v.__module__ == module.__name__)
        todo.extend(inner)
    return found[0] if len(set(found)) == 1 else None


def _defines_all(cls: type, namespace: Mapping[str, Any]) -> bool:
    """Whether *cls* still has every attribute the stored class body defined."""
    return all(hasattr(cls, name) for name in namespace if not _dunder(name))


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


class _HookedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, resolver: _Resolver) -> None:
        super().__init__(file)
        self.resolver = resolver

    def find_class(self, module: str, name: str) -> Any:
        return self.resolver.find_class(module, name, super().find_class)


class _DillUnpickler(dill.Unpickler):  # type: ignore[misc]
    def __init__(self, file: io.BytesIO, resolver: _Resolver) -> None:
        super().__init__(file)
        self.resolver = resolver

    def find_class(self, module: str, name: str) -> Any:
        return self.resolver.find_class(module, name, super().find_class)


_load_build: Callable[[Any], None] = pickle._Unpickler.dispatch[pickle.BUILD[0]]


class _TolerantUnpickler(pickle._Unpickler):
    """Pure-Python unpickler: what cannot be found or built becomes a placeholder."""

    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: RUF012 (the class's own table)
    stack: list[Any]  # the pure-Python unpickler's working state, unlike the C one's
    append: Callable[[Any], None]

    def __init__(self, file: io.BytesIO, resolver: _Resolver) -> None:
        super().__init__(file)
        self.resolver = resolver
        self._dill = dill.Unpickler(io.BytesIO(b""))  # for dill's own find_class rules

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.resolver.find_class(module, name, self._dill.find_class)
        except ImportError:
            why = f"module {module} is gone"
        except AttributeError:
            why = f"{module} no longer defines {name}"
        self.resolver.needs_check = True
        return missing_class(f"{module}.{name}", why)

    def _guard(self, build: Callable[[], Any], about: Any) -> Any:
        try:
            return build()
        except Exception as exc:
            self.resolver.needs_check = True
            return missing_class(name_of(about), why_failed(exc))()

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        stack[-1] = self._guard(lambda: func(*args), func)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._guard(lambda: cls.__new__(cls, *args), cls))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._guard(lambda: cls.__new__(cls, *args, **kwargs), cls))

    def load_build(self) -> None:
        instance = self.stack[-2]  # below its state, which load_build pops first
        try:
            _load_build(self)
        except Exception as exc:
            self.resolver.needs_check = True
            self.resolver.broken[id(instance)] = (
                instance,
                f"{name_of(type(instance))}: {why_failed(exc)}",
            )

    _overrides: tuple[tuple[bytes, Any], ...] = (
        (pickle.REDUCE, load_reduce),
        (pickle.NEWOBJ, load_newobj),
        (pickle.NEWOBJ_EX, load_newobj_ex),
        (pickle.BUILD, load_build),
    )
    dispatch.update((opcode[0], method) for opcode, method in _overrides)
