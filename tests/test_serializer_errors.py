"""The dump side's refusals and errors: values bound to this process, key paths through any
structure, recursive closures, ``vouched`` and ``locate``."""

from __future__ import annotations

import contextlib
import copyreg
import enum
import io
import ipaddress
import mmap
import os
import pickle
import pickletools
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import types
import uuid
from collections import ChainMap, Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any
from zoneinfo import ZoneInfo

import dill
import pytest
from flask import Flask, current_app, g, request, session
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.codec import PLAIN
from flask_dill_session import SessionSerializationError, serializer
from flask_dill_session.loader import Loader

from .apps.roundtrip_app import Item, Point
from .conftest import AppFactory
from .test_serializer import load


def refused(data: dict[str, Any]) -> SessionSerializationError:
    """The error :func:`serializer.dumps` raises for *data*."""
    with pytest.raises(SessionSerializationError) as info:
        serializer.dumps(data)
    return info.value


def _generator() -> Iterator[int]:
    yield 1


def rolled(spooled: Any) -> bool:
    """Whether a SpooledTemporaryFile has moved its data to a file on disk."""
    return bool(spooled._rolled)


def behind(proxy: Any) -> Any:
    """The object a Flask proxy stands for."""
    return proxy._get_current_object()


# -- files -------------------------------------------------------------------------------

FILE = "an open file object; store its contents or its path"


@pytest.mark.parametrize("mode", ["w", "rb+"])
def test_a_real_open_file_is_refused(tmp_path: Path, mode: str) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with open(tmp_path / "notes.txt", mode) as file:
        error = refused({"notes": file})
    assert error.path == "session['notes']"
    assert error.type_name == type(file).__name__
    assert str(error) == f"cannot serialize session['notes']: {type(file).__name__} ({FILE})"


def test_in_memory_buffers_are_stored_they_hold_no_descriptor() -> None:
    for stream in (io.BytesIO(b"data"), io.StringIO("text")):
        stream.seek(2)
        loaded = Loader().load(serializer.dumps({"user": {"avatar": stream}})).data
        copy = loaded["user"]["avatar"]
        assert type(copy) is type(stream) and copy.getvalue() == stream.getvalue()
        assert copy.tell() == 2


@pytest.mark.parametrize("size", [100, 10_000], ids=["in-memory", "rolled-over"])
def test_a_spooled_temporary_file_is_refused(size: int) -> None:
    with tempfile.SpooledTemporaryFile(max_size=1000) as spooled:
        spooled.write(b"x" * size)
        assert rolled(spooled) == (size > 1000)
        if not rolled(spooled):
            pickle.dumps(spooled)  # C pickle alone would store it
        error = refused({"draft": [1, spooled]})
    assert (error.path, error.type_name) == ("session['draft'][1]", "SpooledTemporaryFile")
    assert FILE in str(error)


def test_temporary_files_are_refused() -> None:
    with tempfile.TemporaryFile() as unnamed, tempfile.NamedTemporaryFile() as named:
        assert refused({"f": unnamed}).path == "session['f']"
        error = refused({"f": named})
    assert (error.path, error.type_name) == ("session['f']", "_TemporaryFileWrapper")
    assert FILE in str(error)


def test_a_pipe_is_refused_and_stays_open() -> None:
    read_fd, write_fd = os.pipe()
    with open(read_fd, "rb") as reader, open(write_fd, "wb") as writer:
        error = refused({"pipe": (reader, writer)})
        assert (error.path, error.type_name) == ("session['pipe'][0]", "BufferedReader")
        assert FILE in str(error)
        writer.write(b"still open")
        writer.flush()
        assert reader.read(10) == b"still open"


@pytest.fixture
def upload_app() -> Flask:
    """An app whose view tries to store the uploaded file and answers with the error."""
    app = Flask(__name__)

    @app.post("/upload")
    def upload() -> dict[str, Any]:
        file = request.files["file"]
        try:
            serializer.dumps({"profile": {"avatar": file}})
        except SessionSerializationError as exc:
            answer = {"path": exc.path, "type": exc.type_name, "message": str(exc)}
            return answer | {"rolled": rolled(file.stream)}
        return {"path": None}

    return app


@pytest.mark.parametrize("size", [100, 600 * 1024], ids=["small", "over-500KiB"])
def test_an_uploaded_file_storage_is_refused(upload_app: Flask, size: int) -> None:
    upload = {"file": (io.BytesIO(b"x" * size), "avatar.png")}
    response = upload_app.test_client().post("/upload", data=upload)
    # Werkzeug's test client spools a request body over 500 KiB to a temporary file and
    # closes it only after following redirects: close it here.
    response.request.input_stream.close()
    answer = response.get_json()
    assert answer["rolled"] == (size > 500 * 1024)  # werkzeug keeps 500 KiB in memory
    assert (answer["path"], answer["type"]) == ("session['profile']['avatar']", "FileStorage")
    assert answer["message"] == (
        "cannot serialize session['profile']['avatar']: FileStorage"
        " (FileStorage wraps an open file; store its bytes or a path)"
    )


# -- other values bound to this process --------------------------------------------------


def _process_bound(kind: str, stack: contextlib.ExitStack) -> Any:
    if kind == "socket":
        return stack.enter_context(socket.socket())
    if kind == "selector":
        return stack.enter_context(selectors.DefaultSelector())
    if kind == "mmap":
        return stack.enter_context(mmap.mmap(-1, 16))
    if kind == "Popen":
        return stack.enter_context(subprocess.Popen([sys.executable, "-c", "pass"]))
    return {
        "lock": threading.Lock,
        "RLock": threading.RLock,
        "Condition": threading.Condition,
        "Semaphore": threading.Semaphore,
        "Event": threading.Event,
    }[kind]()


@pytest.mark.parametrize(
    ("kind", "type_name", "what"),
    [
        ("socket", "socket", "a socket of this process; store its address"),
        ("selector", selectors.DefaultSelector.__name__, "an I/O selector"),
        ("mmap", "mmap", "a memory map of this process"),
        ("Popen", "Popen", "a subprocess handle; store its pid or its arguments"),
        ("lock", "lock", "a threading primitive of this process"),
        ("RLock", "RLock", "a copy would be a new, unrelated one"),
        ("Condition", "Condition", "a threading primitive"),
        ("Semaphore", "Semaphore", "a threading primitive"),
        ("Event", "Event", "a threading primitive"),
    ],
)
def test_values_bound_to_this_process_are_refused(kind: str, type_name: str, what: str) -> None:
    with contextlib.ExitStack() as stack:
        error = refused({"ok": 1, "held": {"it": _process_bound(kind, stack)}})
    assert (error.path, error.type_name) == ("session['held']['it']", type_name)
    assert what in str(error)


class Guarded:
    """A class that keeps a lock of its own in its body."""

    lock = threading.Lock()


def test_a_lock_in_a_main_class_body_is_not_refused_but_one_in_an_instance_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # dill copies a __main__ class with its body; the class's lock is not session data.
    body = {"__module__": "__main__", "__qualname__": "FdsGuarded", "lock": threading.Lock()}
    main_class = type("FdsGuarded", (), body)
    monkeypatch.setattr(sys.modules["__main__"], "FdsGuarded", main_class, raising=False)
    obj: Any = main_class()
    obj.n = 3
    payload = serializer.dumps({"obj": obj})
    assert payload[:1] == serializer.DILL
    assert load(payload)["obj"].n == 3

    obj.own = threading.Lock()
    error = refused({"obj": obj})
    assert (error.path, error.type_name) == ("session['obj'].own", "lock")


def test_an_instance_of_an_importable_class_with_a_lock_in_its_body_is_plain() -> None:
    payload = serializer.dumps({"guarded": Guarded()})
    assert payload == pickle.dumps({"guarded": Guarded()}, serializer.PROTOCOL)


# -- Flask objects -----------------------------------------------------------------------


def test_the_app_is_refused() -> None:
    error = refused({"app": Flask(__name__)})
    assert (error.path, error.type_name) == ("session['app']", "Flask")
    assert "the Flask app; use current_app where it is needed; do not store it" in str(error)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("request", "the request object (a LocalProxy to it); store the values you need"),
        ("g", "flask.g (a LocalProxy to it); store the values you need from it, not the proxy"),
        ("session", "the session itself (a LocalProxy to it); store its data, not the proxy"),
        ("current_app", "the Flask app (a LocalProxy to it); use current_app where"),
    ],
)
def test_flask_proxies_are_refused_saying_what_they_stand_for(
    make_app: AppFactory, name: str, message: str
) -> None:
    proxies = {"request": request, "g": g, "session": session, "current_app": current_app}
    with make_app().test_request_context("/"):
        error = refused({"x": proxies[name]})
    assert (error.path, error.type_name) == ("session['x']", "LocalProxy")
    assert f"cannot serialize session['x']: LocalProxy ({message}" in str(error)


def test_a_proxy_outside_any_context_is_refused() -> None:
    error = refused({"x": [request]})
    assert (error.path, error.type_name) == ("session['x'][0]", "LocalProxy")
    assert "an unbound LocalProxy" in str(error)


@pytest.mark.parametrize(
    ("name", "type_name", "message"),
    [
        ("request", "Request", "the request object; store the values you need from it"),
        ("g", "_AppCtxGlobals", "flask.g; store the values you need from it"),
        ("session", "DillSession", "the session itself; store its data"),
    ],
)
def test_the_objects_behind_the_proxies_are_refused(
    make_app: AppFactory, name: str, type_name: str, message: str
) -> None:
    proxies: dict[str, Any] = {"request": request, "g": g, "session": session}
    with make_app().test_request_context("/"):
        g.user = "alice"  # flask.g with plain data: C pickle alone would store it
        error = refused({"x": behind(proxies[name])})
    assert (error.path, error.type_name) == ("session['x']", type_name)
    assert str(error) == f"cannot serialize session['x']: {type_name} ({message})"


def test_the_session_stored_in_itself_is_refused(make_app: AppFactory) -> None:
    app = make_app()

    @app.get("/")
    def index() -> str:
        session["me"] = behind(session)
        return "stored"

    with pytest.raises(SessionSerializationError) as info:
        app.test_client().get("/")
    assert (info.value.path, info.value.type_name) == ("session['me']", "DillSession")
    assert "the session itself; store its data" in str(info.value)


def test_a_real_request_object_gives_a_short_path(make_app: AppFactory) -> None:
    app = make_app()

    @app.get("/")
    def index() -> str:
        session["req"] = behind(request)  # its environ refers back to it
        return "stored"

    with pytest.raises(SessionSerializationError) as info:
        app.test_client().get("/")
    assert str(info.value) == (
        "cannot serialize session['req']: Request"
        " (the request object; store the values you need from it)"
    )


def test_a_function_capturing_current_app_names_what_it_captured() -> None:
    def app_name() -> str:
        return current_app.name

    with Flask(__name__).app_context():
        error = refused({"name_of": app_name})
    assert (error.path, error.type_name) == ("session['name_of']", "function")
    assert str(error) == (
        "cannot serialize session['name_of']: function (it captures current_app,"
        " the Flask app (a LocalProxy to it); define it in an importable module)"
    )


def test_a_closure_over_the_app_names_what_it_captured() -> None:
    def make_view(app: Flask) -> Callable[[], str]:
        return lambda: app.name

    error = refused({"views": [make_view(Flask(__name__))]})
    assert (error.path, error.type_name) == ("session['views'][0]", "function")
    assert "it captures app, the Flask app; define it in an importable module" in str(error)


# -- recursive closures ------------------------------------------------------------------


def make_factorial() -> Callable[[int], int]:
    def factorial(n: int) -> int:
        return 1 if n <= 1 else n * factorial(n - 1)

    return factorial


def test_a_recursive_closure_round_trips() -> None:
    factorial = make_factorial()
    with pytest.raises(RecursionError):
        dill.dumps(factorial, recurse=True)  # what dumps tries first
    payload = serializer.dumps({"factorial": factorial, "n": 5})
    assert payload[:1] == serializer.DILL
    loaded = load(payload)
    assert loaded["factorial"](loaded["n"]) == 120


# -- key paths through any structure -----------------------------------------------------


class Base:
    __slots__ = ("__hidden", "source")


class Derived(Base):
    __slots__ = ("n",)


class Unprintable:
    def __repr__(self) -> str:
        raise ValueError("no repr")


class Holder:
    """Hashable, holding whatever it is given."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Holder()"


def _slotted(**values: Any) -> Derived:
    obj = Derived()
    for name, value in values.items():
        setattr(obj, name, value)
    return obj


def _self_containing_list() -> list[Any]:
    items: list[Any] = [1]
    items.append(items)
    items.append(_generator())
    return items


def _self_containing_dict() -> dict[str, Any]:
    data: dict[str, Any] = {"a": 1}
    data["self"] = data
    data["gen"] = _generator()
    return data


def _deep_dicts(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for level in range(depth):
        node[f"level{level:02}"] = node = {}
    node["gen"] = _generator()
    return root


def _path_cases() -> list[tuple[dict[str, Any], str]]:
    return [
        ({"obj": _slotted(n=1, source=_generator())}, "session['obj'].source"),
        ({"obj": _slotted(_Base__hidden=_generator())}, "session['obj']._Base__hidden"),
        ({"queue": deque([1, "two", _generator()])}, "session['queue'][2]"),
        ({"d": {Unprintable(): _generator()}}, "session['d'][<unprintable Unprintable>]"),
        ({"d": {"a": 1, Holder(_generator()): 2}}, "session['d'] key Holder().value"),
        ({"s": frozenset({Holder(_generator())})}, "session['s'] member Holder().value"),
        ({"v": {"a": Holder(_generator())}.values()}, "session['v'] member Holder().value"),
        ({"loop": _self_containing_list()}, "session['loop'][2]"),
        ({"loop": _self_containing_dict()}, "session['loop']['gen']"),
        ({"e": ValueError("bad", _generator())}, "session['e'].args[1]"),
        ({"k" * 300: _generator()}, f"session['{'k' * 27}...{'k' * 28}']"),
    ]


@pytest.mark.parametrize(("data", "path"), _path_cases())
def test_unserializable_values_are_found_through_any_structure(
    data: dict[str, Any], path: str
) -> None:
    error = refused(data)
    assert (error.path, error.type_name) == (path, "generator")


def test_a_long_path_is_capped_in_the_middle_and_in_depth() -> None:
    error = refused({"deep": _deep_dicts(60)})
    assert len(error.path) == 200
    head, _, tail = error.path.partition("...")
    assert head.startswith("session['deep']['level00']['level01']")
    assert tail.endswith("['level38']")  # 40 steps at most
    assert error.type_name == "dict"


# -- vouched -----------------------------------------------------------------------------


def _globals(payload: bytes) -> set[tuple[str, str]]:
    """The (module, name) of every global a pickle refers to."""
    found: set[tuple[str, str]] = set()
    memo: list[Any] = []
    pushed: list[Any] = []
    for opcode, arg, _ in pickletools.genops(payload):
        if opcode.name == "STACK_GLOBAL":
            found.add((pushed[-2], pushed[-1]))
        elif opcode.name in ("GLOBAL", "INST"):
            module, name = str(arg).split(" ", 1)
            found.add((module, name))
        assert opcode.name not in ("EXT1", "EXT2", "EXT4")
        if opcode.name == "MEMOIZE":
            memo.append(pushed[-1])
        elif opcode.name in ("BINGET", "LONG_BINGET"):
            assert isinstance(arg, int)
            pushed.append(memo[arg])
        else:
            pushed.append(arg if opcode.name == "SHORT_BINUNICODE" else None)
    return found


#: What a vouched-for payload may refer to: stdlib types that always load back.
STDLIB = {
    datetime, date, time, timedelta, timezone, Decimal, Fraction, uuid.UUID, uuid.SafeUUID,
    OrderedDict, deque, Counter, defaultdict, ChainMap, complex, bytearray, set, frozenset,
    range, slice, list, dict, tuple, int, float, str, bytes, bool, getattr, ZoneInfo,
    PurePath, PurePosixPath, PureWindowsPath, Path, type(Path()), types.SimpleNamespace,
    ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network,
    ipaddress.IPv6Network, ipaddress.IPv4Interface, ipaddress.IPv6Interface,
}  # fmt: skip


def _resolve(module: str, name: str) -> Any:
    obj: Any = sys.modules[module]
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _assert_only_stdlib(payload: bytes) -> None:
    for module, name in _globals(payload):
        assert _resolve(module, name) in STDLIB, (module, name)


STDLIB_VALUES = [
    datetime(2024, 5, 17, 9, 30),
    date(2024, 5, 17),
    time(9, 30),
    timedelta(days=1, seconds=5),
    timezone,
    Decimal("1.10"),
    Fraction(1, 3),
    uuid.UUID(int=7),
    uuid.SafeUUID.safe,
    OrderedDict(a=1),
    deque([1, 2], maxlen=5),
    Counter("hello"),
    defaultdict(list, a=[1]),
    ChainMap({"a": 1}, {"b": 2}),
    complex(1, 2),
    bytearray(b"abc"),
    {1, 2},
    frozenset({3}),
    range(1, 10, 2),
    slice(1, 5),
    PurePosixPath("/srv/a"),
    PureWindowsPath("C:/a"),
    Path("/srv/b"),
    ZoneInfo("UTC"),
    ipaddress.ip_address("192.0.2.1"),
    ipaddress.ip_address("2001:db8::1"),
    ipaddress.ip_network("192.0.2.0/24"),
    ipaddress.ip_interface("2001:db8::1/64"),
    types.SimpleNamespace(a=1),
]


def copy(payload: bytes) -> bytes:
    """An equal payload that is another object (``bytes(payload)`` would be the same one)."""
    return bytes(bytearray(payload))


def test_the_plain_benchmark_session_is_vouched_for() -> None:
    payload = serializer.dumps(PLAIN)
    assert serializer.vouched(payload)
    assert pickle.loads(payload) == PLAIN


@pytest.mark.parametrize("value", STDLIB_VALUES, ids=lambda value: type(value).__name__)
def test_each_stdlib_type_is_vouched_for(value: Any) -> None:
    payload = serializer.dumps({"v": value})
    assert serializer.vouched(copy(payload))
    _assert_only_stdlib(payload)
    loaded = pickle.loads(payload)
    assert loaded["v"] == value and type(loaded["v"]) is type(value)


@pytest.mark.parametrize("cls", sorted(STDLIB, key=repr), ids=lambda cls: cls.__qualname__)
def test_each_stdlib_type_itself_is_vouched_for(cls: Any) -> None:
    payload = serializer.dumps({"cls": cls})
    assert serializer.vouched(copy(payload))
    assert pickle.loads(payload)["cls"] is cls


class Color(enum.Enum):
    RED = 1


NOT_VOUCHED: dict[str, Any] = {
    "app class": Point(1, 2),
    "app dataclass": Item("pen", 1),
    "enum": Color.RED,
    "function": load,
    "builtin function": len,
    "aware datetime": datetime(2024, 5, 17, tzinfo=UTC),  # module string memoized
    "STACK_GLOBAL byte in text": "en \N{EN DASH} dash",
    "STACK_GLOBAL byte in bytes": b"\x93",
}


@pytest.mark.parametrize("value", NOT_VOUCHED.values(), ids=NOT_VOUCHED.keys())
def test_other_plain_payloads_are_not_vouched_for_but_load(value: Any) -> None:
    payload = serializer.dumps({"v": value, "when": datetime(2024, 5, 17)})
    stored, vouched = serializer.stored(payload)
    assert (stored, vouched) == (serializer.PICKLE + payload, False)  # loaded with the hooks
    assert not serializer.vouched(payload)
    assert pickle.loads(payload)["v"] == value
    assert Loader().load(stored).data["v"] == value


def test_dill_and_legacy_payloads_are_not_vouched_for() -> None:
    assert not serializer.vouched(serializer.dumps({"f": lambda: 1}))
    assert not serializer.vouched(serializer.PICKLE + pickle.dumps({"a": 1}))
    assert not serializer.vouched(b"")


def test_nothing_is_vouched_for_while_copyreg_extensions_are_registered() -> None:
    data = {"p": Point(1, 2)}
    copyreg.add_extension(Point.__module__, "Point", 0x7FFF_FFF0)
    try:
        payload = serializer.dumps(data)
        assert pickle.STACK_GLOBAL not in payload  # the class is an extension code
        assert not serializer.vouched(payload)
    finally:
        copyreg.remove_extension(Point.__module__, "Point", 0x7FFF_FFF0)


_leaves = st.one_of(
    st.integers(),
    st.text(),
    st.binary(),
    st.sampled_from(STDLIB_VALUES),
    st.sampled_from(list(NOT_VOUCHED.values())),
    st.builds(Point, st.integers(), st.integers()),
)
_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=5), _values, max_size=5))
def test_a_vouched_for_payload_refers_to_stdlib_types_only(data: dict[str, Any]) -> None:
    payload = serializer.dumps(data)
    if serializer.vouched(copy(payload)):
        _assert_only_stdlib(payload)
        pickle.loads(payload)
    else:
        assert serializer.stored(payload)[0][:1] in (serializer.PICKLE, serializer.DILL)


# -- locate ------------------------------------------------------------------------------


class Member:
    """Hashed by name; its team is a set that holds it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.team = {self}

    def __hash__(self) -> int:
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Member) and other.name == self.name

    def __repr__(self) -> str:
        return f"Member({self.name!r})"


class QuotaExceeded(Exception):
    def __init__(self, *, limit: int) -> None:
        super().__init__(f"over the quota of {limit}")
        self.limit = limit


def round_trip_fails(value: Any) -> bool:
    try:
        load(serializer.dumps({"value": value}))
    except Exception:
        return True
    return False


@pytest.mark.parametrize(
    ("data", "path", "type_name", "error"),
    [
        # loading builds the member's own team before its name, and hashes it into it
        ({"crew": [1, {Member("ann")}]}, "session['crew'][1] member Member('ann')", "Member",
         AttributeError),
        # loading calls QuotaExceeded("over the quota of 3"): a positional argument
        ({"errors": [ValueError("x"), QuotaExceeded(limit=3)]}, "session['errors'][1]",
         "QuotaExceeded", TypeError),
    ],
)  # fmt: skip
def test_locate_names_a_value_that_serializes_but_does_not_load(
    data: dict[str, Any], path: str, type_name: str, error: type[Exception]
) -> None:
    payload = serializer.dumps(data)
    assert serializer.vouched(payload) is False
    with pytest.raises(error):
        pickle.loads(payload)
    located = serializer.locate(data, "does not load back", fails=round_trip_fails)
    assert (located.path, located.type_name) == (path, type_name)
    assert str(located) == f"cannot serialize {path}: {type_name} (does not load back)"


def test_locate_follows_a_cycle_once() -> None:
    crew: list[Any] = []
    crew.append(crew)
    crew.append(Member("ann"))
    located = serializer.locate({"crew": crew}, "does not load back", fails=round_trip_fails)
    assert (located.path, located.type_name) == ("session['crew'][1]", "Member")
