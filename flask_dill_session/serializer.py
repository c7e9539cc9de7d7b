"""Session payloads: C ``pickle`` where it is exact, ``dill`` where it is needed.

A payload starts with a one-byte tag naming its loader. Plain data (anything C
pickle writes without referring to ``__main__``) costs what C pickle costs; lambdas,
closures, modules and interactively or locally defined code go through dill, and their
tag records the Python and dill versions that wrote them, because dill's code objects
do not survive a change of Python minor version. This module knows no Flask.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import sys
import threading
from collections.abc import Iterator
from typing import Any

import dill

from .exc import BadPayloadError, SessionSerializationError

PICKLE = b"p"
DILL = b"d"
PROTOCOL = pickle.HIGHEST_PROTOCOL
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
_DILL_STAMP = f"{PYTHON} {dill.__version__}".encode()
_MAX_PATH_DEPTH = 40

# dill's pickler and unpickler keep global state and are not thread-safe
# (uqfoundation/dill#350); the C pickle path never takes this lock.
_dill_lock = threading.RLock()


def dumps(data: dict[str, Any]) -> bytes:
    """Serialize *data*; raise :class:`SessionSerializationError` naming the failing key path."""
    try:
        body = pickle.dumps(data, PROTOCOL)
    except RecursionError:
        raise _locate(data, "nested too deep to serialize", depth=1) from None
    except Exception:
        pass
    else:
        # C pickle stores __main__ objects by name, which another process cannot load.
        if b"__main__" not in body or not _refers_to_main(body):
            return PICKLE + body
    try:
        with _dill_lock:
            body = _dill_dumps(data)
    except RecursionError:
        raise _locate(data, "nested too deep to serialize", depth=1) from None
    except Exception as exc:
        raise _locate(data, str(exc)) from exc
    return DILL + bytes([len(_DILL_STAMP)]) + _DILL_STAMP + body


def loads(payload: bytes) -> dict[str, Any]:
    """Load a payload made by :func:`dumps`; raise :class:`BadPayloadError` if it cannot be."""
    tag = payload[:1]
    try:
        if tag == PICKLE:
            data = pickle.loads(payload[1:])  # a bytes copy unpickles faster than a memoryview
        elif tag == DILL:
            end = 2 + payload[1]
            python, _, dill_version = payload[2:end].decode().partition(" ")
            if python != PYTHON:
                raise BadPayloadError(
                    f"dill payload written by Python {python} (dill {dill_version}),"
                    f" this is Python {PYTHON}; its code is not portable"
                )
            with _dill_lock:
                data = _DillUnpickler(io.BytesIO(memoryview(payload)[end:])).load()
        else:
            raise BadPayloadError(f"unknown payload tag {tag!r}")
    except BadPayloadError:
        raise
    except (ImportError, AttributeError) as exc:  # code gone: the message names code only
        raise BadPayloadError(f"cannot load payload: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # other messages may quote session data: keep them out of logs
        raise BadPayloadError(f"cannot load payload: {type(exc).__name__}") from exc
    if not isinstance(data, dict):
        raise BadPayloadError(f"payload is a {type(data).__name__}, not a dict")
    return data


_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}
_MEMO_GETS = {"BINGET", "LONG_BINGET", "GET"}


def _refers_to_main(body: bytes) -> bool:
    """Whether a pickle names a global of ``__main__`` (not merely holds that text)."""
    memo: list[Any] = []
    pushed: list[Any] = [None, None]  # the last two values pushed, for STACK_GLOBAL
    for opcode, arg, _ in pickletools.genops(body):
        name = opcode.name
        if name == "GLOBAL" and str(arg).split(" ", 1)[0] == "__main__":
            return True
        if name == "STACK_GLOBAL" and pushed[-2] == "__main__":
            return True
        if name == "MEMOIZE":
            memo.append(pushed[-1])
        elif name in _STRINGS:
            pushed.append(arg)
        elif name in _MEMO_GETS:
            pushed.append(memo[arg] if isinstance(arg, int) and arg < len(memo) else None)
        else:
            pushed.append(None)
    return False


class _DillUnpickler(dill.Unpickler):  # type: ignore[misc]
    """dill's unpickler, but a class dill stored by value from ``__main__`` resolves to the
    class of that name in this process's ``__main__`` when there is one, so instances keep
    their type (and ``==``, ``isinstance``) where the class is defined."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("dill._dill", "dill.dill") and name == "_create_type":
            return _main_class_or_new
        return super().find_class(module, name)


def _main_class_or_new(metaclass: type, name: str, bases: tuple[type, ...], *rest: Any) -> Any:
    namespace = rest[0] if rest else {}
    existing = getattr(sys.modules.get("__main__"), name, None)
    if (
        namespace.get("__module__") == "__main__"
        and isinstance(existing, type)
        and existing.__module__ == "__main__"
        and existing.__qualname__ == name
    ):
        return existing
    return dill._dill._create_type(metaclass, name, bases, *rest)


# dill copies a lock as a new, unrelated lock: in a session that is never what was meant,
# so locks are refused like generators.
_REFUSED = (type(threading.Lock()), type(threading.RLock()))


class _DillPickler(dill.Pickler):  # type: ignore[misc]
    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if type(obj) in _REFUSED:
            raise pickle.PicklingError(f"cannot pickle {type(obj).__name__!r} object")
        super().save(obj, save_persistent_id)


def _dill_dumps(obj: Any) -> bytes:
    file = io.BytesIO()
    _DillPickler(file, PROTOCOL, recurse=True).dump(obj)
    return file.getvalue()


def sizes_by_key(data: dict[str, Any]) -> list[tuple[str, int]]:
    """Serialized size of each top-level value, largest first."""
    sizes = [(key, len(dumps({key: value}))) for key, value in data.items()]
    return sorted(sizes, key=lambda item: item[1], reverse=True)


def _locate(
    data: dict[str, Any], reason: str, depth: int = _MAX_PATH_DEPTH
) -> SessionSerializationError:
    """Find the deepest value (up to *depth*) that does not serialize and name its path."""
    path, obj = "session", data
    for _ in range(depth):
        for step, child in _children(obj):
            if _fails(child):
                path, obj = path + step, child
                break
        else:
            break
    return SessionSerializationError(path, type(obj).__name__, reason)


def _fails(obj: Any) -> bool:
    try:
        with _dill_lock:
            _dill_dumps(obj)
    except Exception:
        return True
    return False


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield f"[{key!r}]", value
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield f"[{index}]", value
    elif isinstance(obj, (set, frozenset)):
        for value in obj:
            yield f" member {value!r}", value
    else:
        for name, value in getattr(obj, "__dict__", {}).items():
            yield f".{name}", value
        for name in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, name):
                yield f".{name}", getattr(obj, name)
