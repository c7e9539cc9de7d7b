"""Session payloads, the dump side: C ``pickle`` where it is exact, ``dill`` where needed.

Plain data (anything C pickle writes without referring to ``__main__``) is C pickle's own
output, untagged: it starts with pickle's PROTO opcode, and costs what C pickle costs.
Lambdas, closures, modules and interactively or locally defined code go through dill, tagged
with the Python and dill versions that wrote them, because dill's code objects do not survive
a change of Python minor version. Values bound to this process (open files, sockets, locks,
the app, the request, the session...) are refused on both paths. This module knows no Flask.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import pickletools
import re
import sys
import threading
from collections.abc import Callable
from copyreg import _extension_registry  # type: ignore[attr-defined]
from typing import Any

import dill

from ._walk import Refusal, captured_name, refusal, walk
from .exc import SessionSerializationError

PICKLE = b"p"  # stored C pickle that names the app's classes (before 0.2: any C pickle)
DILL = b"d"
PROTOCOL = pickle.HIGHEST_PROTOCOL
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
_DILL_STAMP = f"{PYTHON} {dill.__version__}".encode()
_STACK_GLOBAL = pickle.STACK_GLOBAL

#: dill's pickler and unpickler keep global state and are not thread-safe
#: (uqfoundation/dill#350): hold this around either. The C pickle path never takes it.
dill_lock = threading.RLock()

# A module string in a pickle that may name __main__ or a class of a refused value: only
# then is the pickle parsed to see what it really refers to.
_SUSPECT = re.compile(rb"\x8c.(?:__main__\x94|_io\x94|tempfile\x94|werkzeug|flask)", re.DOTALL)
_REFUSABLE_MODULES = ("_io", "tempfile", "werkzeug", "flask")

#: Globals that always load back: stdlib types, no app classes, enums or functions
#: (``getattr`` rebuilds bound methods, as of ``ZoneInfo._unpickle``). The most common
#: come first: :func:`vouched` tries them in this order.
_VOUCHED = {
    "datetime": "datetime date timedelta time timezone",
    "uuid": "UUID SafeUUID",
    "decimal": "Decimal",
    "fractions": "Fraction",
    "collections": "OrderedDict deque Counter defaultdict ChainMap",
    "zoneinfo": "ZoneInfo ZoneInfo._unpickle",
    "ipaddress": "IPv4Address IPv6Address IPv4Network IPv6Network IPv4Interface IPv6Interface",
    # the module pickle names: pathlib._local as of Python 3.13
    pathlib.PurePath.__module__: "PurePath PurePosixPath PureWindowsPath"
    " Path PosixPath WindowsPath",
    "types": "SimpleNamespace",
    "builtins": "getattr complex bytearray set frozenset range slice"
    " list dict tuple int float str bytes bool",
}


def _pushed_strings(*texts: str) -> bytes:
    """How C pickle (protocol 4 and up) pushes short strings met for the first time."""
    return b"".join(
        pickle.SHORT_BINUNICODE + bytes([len(text)]) + text.encode() + pickle.MEMOIZE
        for text in texts
    )


_VOUCHED_GLOBALS = tuple(
    _pushed_strings(module, name) for module, names in _VOUCHED.items() for name in names.split()
)


def dumps(data: dict[str, Any]) -> bytes:
    """Serialize *data*: C pickle's own output where that is exact (it starts with the
    PROTO opcode), else ``DILL`` + version stamp + dill.

    Raise :class:`SessionSerializationError` naming the key path of a value that cannot be
    serialized or is bound to this process.
    """
    try:
        body = pickle.dumps(data, PROTOCOL)
    except RecursionError:
        raise _too_deep(data) from None
    except Exception:
        return _dill_payload(data)
    if _SUSPECT.search(body) is not None:
        modules = _global_modules(body)
        if "__main__" in modules:  # C pickle names __main__ objects, another process has none
            return _dill_payload(data)
        if any(module.startswith(_REFUSABLE_MODULES) for module in modules):
            _refuse_bound_values(data)
    return body


def stored(payload: bytes) -> tuple[bytes, bool]:
    """*payload* as it is stored, and whether it is vouched for: surely loads back.

    C pickle that names only standard-library types (datetime, Decimal, UUID...) is
    stored as it is and loaded with ``pickle.loads``; C pickle naming other globals (the
    app's classes) is tagged ``PICKLE``, so that loading resolves them with the app's
    renames and checks them. A scan of the bytes, cheap enough for every write; not
    vouched for only means "not known" (a global other than these, a module string pickle
    memoized for a second global of one module, a STACK_GLOBAL byte inside data).
    """
    if payload[:1] != pickle.PROTO:
        return payload, False
    end = payload.find(_STACK_GLOBAL)
    while end != -1 and payload.endswith(_VOUCHED_GLOBALS, 0, end):
        end = payload.find(_STACK_GLOBAL, end + 1)
    if end == -1 and not _extension_registry:
        return payload, True
    return PICKLE + payload, False


def unstored(payload: bytes) -> bytes:
    """The inverse of :func:`stored`: the payload :func:`dumps` would make of the same data."""
    return payload[1:] if payload[:1] == PICKLE else payload


def vouched(payload: bytes) -> bool:
    """Whether :func:`stored` vouches for *payload*: it surely loads back."""
    return stored(payload)[1]


def locate(
    data: dict[str, Any], reason: str, fails: Callable[[Any], bool]
) -> SessionSerializationError:
    """The error for the deepest value of *data* for which *fails* is true, naming its key
    path (reference cycles are followed once, the path is capped in depth and length)."""
    path, value = walk(data, fails)
    return SessionSerializationError(path, type(value).__name__, reason)


def sizes_by_key(data: dict[str, Any]) -> list[tuple[str, int]]:
    """Serialized size of each top-level value, largest first."""
    sizes = [(key, len(dumps({key: value}))) for key, value in data.items()]
    return sorted(sizes, key=lambda item: item[1], reverse=True)


def _dill_payload(data: dict[str, Any]) -> bytes:
    # recurse=True stores only the globals code uses, but overflows on a recursive closure.
    for recurse in (True, False):
        try:
            body = _dill_dumps(data, recurse)
        except RecursionError:
            continue
        except _Refused as refused:
            raise _refused_error(data, refused, recurse) from None
        except Exception as exc:
            raise locate(data, str(exc), _dill_fails) from exc
        return DILL + bytes([len(_DILL_STAMP)]) + _DILL_STAMP + body
    raise _too_deep(data)


def _refuse_bound_values(data: dict[str, Any]) -> None:
    """Raise if *data*, which C pickle wrote, holds a value bound to this process."""
    try:
        _dill_dumps(data, recurse=True)
    except _Refused as refused:
        raise _refused_error(data, refused, recurse=True) from None
    except Exception:  # C pickle wrote it: only refusals matter here
        pass


def _refused_error(
    data: dict[str, Any], refused: _Refused, recurse: bool
) -> SessionSerializationError:
    target, why = refused.obj, refused.why
    path, value = walk(data, lambda value: _reaches(value, target, recurse))
    if value is target:
        reason = f"{why.what}; {why.hint}"
    elif (name := captured_name(value, target)) is not None:
        reason = f"it captures {name}, {why.what}; define it in an importable module"
    else:
        reason = f"it holds {why.what}; {why.hint}"
    return SessionSerializationError(path, type(value).__name__, reason)


def _too_deep(data: dict[str, Any]) -> SessionSerializationError:
    path, value = walk(data, _overflows, depth=1)
    return SessionSerializationError(path, type(value).__name__, "nested too deep to serialize")


def _overflows(value: Any) -> bool:
    try:
        pickle.dumps(value, PROTOCOL)
    except RecursionError:
        return True
    except Exception:
        try:
            _dill_dumps(value, recurse=False)
        except RecursionError:
            return True
        except Exception:
            return False
    return False


def _dill_fails(value: Any) -> bool:
    for recurse in (True, False):
        try:
            _dill_dumps(value, recurse)
        except RecursionError:
            continue
        except Exception:
            return True
        return False
    return True


def _reaches(value: Any, target: Any, recurse: bool) -> bool:
    """Whether pickling *value* saves *target* (other refused values are skipped)."""
    try:
        _dill_dumps(value, recurse, target)
    except _Found:
        return True
    except Exception:
        return False
    return False


def _global_modules(body: bytes) -> set[str]:
    """The modules whose globals a pickle names (not merely holds as text)."""
    modules: set[str] = set()
    memo: list[Any] = []
    pushed: list[Any] = [None, None]  # the values pushed so far, for STACK_GLOBAL
    for opcode, arg, _ in pickletools.genops(body):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            modules.add(str(arg).split(" ", 1)[0])
        elif name == "STACK_GLOBAL" and isinstance(pushed[-2], str):
            modules.add(pushed[-2])
        if name == "MEMOIZE":
            memo.append(pushed[-1])
        elif name in _STRINGS:
            pushed.append(arg)
        elif name in _MEMO_GETS:
            pushed.append(memo[arg] if isinstance(arg, int) and arg < len(memo) else None)
        else:
            pushed.append(None)
    return modules


_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}
_MEMO_GETS = {"BINGET", "LONG_BINGET", "GET"}


class _Refused(Exception):
    """A value bound to this process met while pickling."""

    def __init__(self, obj: Any, why: Refusal) -> None:
        super().__init__(why.what)
        self.obj = obj
        self.why = why


class _Found(Exception):
    """The value searched for was met while pickling."""


_NOTHING: Any = object()


class _DillPickler(dill.Pickler):  # type: ignore[misc]
    """dill's pickler, raising :class:`_Refused` on a value bound to this process.

    Given a *target*, it searches instead: it raises :class:`_Found` on meeting that
    object, and saves other refused values as None.
    """

    def __init__(self, file: io.BytesIO, recurse: bool, target: Any = _NOTHING) -> None:
        super().__init__(file, PROTOCOL, recurse=recurse)
        self._target = target
        self._in_class = 0  # depth of class bodies being saved

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if obj is self._target:
            raise _Found
        found = refusal(obj, in_class=self._in_class > 0)
        if found is not None:
            if self._target is _NOTHING:
                raise _Refused(obj, found)
            obj = None
        if not issubclass(type(obj), type):
            super().save(obj, save_persistent_id)
            return
        self._in_class += 1
        try:
            super().save(obj, save_persistent_id)
        finally:
            self._in_class -= 1


def _dill_dumps(obj: Any, recurse: bool, target: Any = _NOTHING) -> bytes:
    file = io.BytesIO()
    with dill_lock:
        _DillPickler(file, recurse, target).dump(obj)
    return file.getvalue()
