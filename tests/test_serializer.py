"""The codec: C pickle where it is exact, dill where it is needed, errors that name the key."""

from __future__ import annotations

import datetime as datetime_module
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_dill_session import DillSessionError, SessionSerializationError, serializer
from flask_dill_session.loader import Loader

from .apps.roundtrip_app import KINDS, Item, Point, make_adder, matches, values
from .support import ROOT

DILL_KINDS = {"lambda", "closure", "module"}
PLAIN_KINDS = [kind for kind in KINDS if kind not in DILL_KINDS]


def load(payload: bytes) -> dict[str, Any]:
    """Load a payload of :func:`serializer.dumps` as a request would."""
    loaded = Loader().load(payload)
    assert loaded.dropped == {}
    return loaded.data


def roundtrip(data: dict[str, Any]) -> dict[str, Any]:
    return load(serializer.dumps(data))


# -- the fast path and the tag -----------------------------------------------------------


@pytest.mark.parametrize("kind", PLAIN_KINDS)
def test_plain_data_is_exactly_c_pickle(kind: str) -> None:
    data = {kind: values()[kind]}
    payload = serializer.dumps(data)
    body = pickle.dumps(data, serializer.PROTOCOL)
    assert payload == body  # untagged: PROTO is the tag
    # stored as it is when it names only stdlib types, else tagged to load with the hooks
    assert serializer.stored(payload) in ((body, True), (serializer.PICKLE + body, False))


def test_a_whole_session_of_plain_data_takes_the_fast_path() -> None:
    data = {kind: values()[kind] for kind in PLAIN_KINDS}
    assert serializer.dumps(data) == pickle.dumps(data, serializer.PROTOCOL)
    plain = {kind: values()[kind] for kind in ("int", "float", "set", "naive_datetime")}
    assert serializer.stored(serializer.dumps(plain))[1]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("lambda", lambda x: x + 1),
        ("closure", make_adder(2)),
        ("module", datetime_module),
        ("lambda_in_a_list", [1, 2, lambda: 3]),
    ],
)
def test_what_pickle_cannot_do_goes_through_dill(name: str, value: Any) -> None:
    payload = serializer.dumps({name: value})
    assert payload[:1] == serializer.DILL
    stamp = payload[2 : 2 + payload[1]].decode()
    assert stamp.split(" ")[0] == f"{sys.version_info[0]}.{sys.version_info[1]}"


def test_local_classes_and_functions_go_through_dill() -> None:
    class Local:
        def __init__(self, n: int) -> None:
            self.n = n

    def local_function(x: int) -> int:
        return x - 1

    payload = serializer.dumps({"obj": Local(4), "fn": local_function})
    assert payload[:1] == serializer.DILL
    data = load(payload)
    assert data["obj"].n == 4
    assert data["fn"](10) == 9


def test_main_objects_that_c_pickle_accepts_still_go_through_dill(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # C pickle writes a __main__ class by name, which another process cannot load.
    main_class = type("FdsMainThing", (), {"__module__": "__main__"})
    monkeypatch.setattr(sys.modules["__main__"], "FdsMainThing", main_class, raising=False)
    obj: Any = main_class()
    obj.n = 5
    assert b"__main__" in pickle.dumps({"obj": obj}, serializer.PROTOCOL)  # pickle accepts it
    payload = serializer.dumps({"obj": obj})
    assert payload[:1] == serializer.DILL
    loaded = load(payload)["obj"]
    assert loaded.n == 5
    assert type(loaded) is main_class  # this process has the class: instances keep it


_WRITE_MAIN = """
import sys
from flask_dill_session import serializer

class Thing:
    def __init__(self, n):
        self.n = n
    def double(self):
        return self.n * 2

def triple(x):
    return x * 3

payload = serializer.dumps({"thing": Thing(21), "triple": triple})
assert payload[:1] == serializer.DILL, payload[:1]
with open(sys.argv[1], "wb") as file:
    file.write(payload)
"""

_READ_WITHOUT_CLASS = """
import sys
from flask_dill_session.loader import Loader

with open(sys.argv[1], "rb") as file:
    data = Loader().load(file.read()).data
print(type(data["thing"]).__name__, data["thing"].double(), data["triple"](5))
"""

_READ_WITH_CLASS = """
import sys
from flask_dill_session.loader import Loader

class Thing:
    def __init__(self, n):
        self.n = n
    def double(self):
        return self.n * 2

with open(sys.argv[1], "rb") as file:
    data = Loader().load(file.read()).data
print(type(data["thing"]) is Thing, isinstance(data["thing"], Thing), data["thing"].n)
"""


def _python(code: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_main_classes_and_functions_load_in_another_process(tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    _python(_WRITE_MAIN, str(payload))
    assert _python(_READ_WITHOUT_CLASS, str(payload)) == "Thing 42 15"
    assert _python(_READ_WITH_CLASS, str(payload)) == "True True 21"


# -- fidelity ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_value_kind_comes_back_equal_and_of_the_same_type(kind: str) -> None:
    assert matches(kind, roundtrip({kind: values()[kind]})[kind])


def test_all_kinds_together_and_shared_references() -> None:
    shared = [1, 2]
    data = {**values(), "a": shared, "b": shared}
    loaded = roundtrip(data)
    assert [kind for kind in KINDS if not matches(kind, loaded[kind])] == []
    assert loaded["a"] is loaded["b"]


def test_app_objects_keep_their_methods_and_state() -> None:
    loaded = roundtrip({"point": Point(3, 4), "item": Item("cup", 2)})
    assert loaded["point"] == Point(3, 4) and type(loaded["point"]) is Point
    assert loaded["item"] == Item("cup", 2) and type(loaded["item"]) is Item


# -- unserializable values ---------------------------------------------------------------


class Cart:
    def __init__(self, items: list[Any]) -> None:
        self.items = items


def _generator() -> Iterator[int]:
    yield 1


def _cases() -> list[tuple[dict[str, Any], str, str]]:
    return [
        ({"gen": _generator()}, "session['gen']", "generator"),
        ({"ok": 1, "lock": threading.Lock()}, "session['lock']", "lock"),
        ({"rlock": threading.RLock()}, "session['rlock']", "RLock"),
        ({"cart": Cart(["a", "b", _generator()])}, "session['cart'].items[2]", "generator"),
        ({"data": [1, {"x": threading.Lock()}]}, "session['data'][1]['x']", "lock"),
        ({"cart": Cart([threading.Lock()]), "f": lambda: 1}, "session['cart'].items[0]", "lock"),
    ]


@pytest.mark.parametrize(("data", "path", "type_name"), _cases())
def test_unserializable_values_name_their_key_path_and_type(
    data: dict[str, Any], path: str, type_name: str
) -> None:
    with pytest.raises(SessionSerializationError) as info:
        serializer.dumps(data)
    assert f"{path}: {type_name}" in str(info.value)
    assert info.value.path == path
    assert info.value.type_name == type_name
    assert isinstance(info.value, DillSessionError)


def _deep_list(depth: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(depth):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


class Node:
    def __init__(self, next_node: Node | None) -> None:
        self.next = next_node


def _deep_nodes(depth: int) -> Node:
    node: Node | None = None
    for _ in range(depth):
        node = Node(node)
    assert node is not None
    return node


@pytest.mark.parametrize(
    "make",
    [
        lambda: {"deep": _deep_list(20_000)},
        lambda: {"deep": _deep_nodes(20_000)},
        lambda: {"deep": _deep_list(20_000), "f": lambda: 1},  # the dill path recurses too
    ],
    ids=["list", "objects", "with-lambda"],
)
def test_data_nested_too_deep_is_a_serialization_error(make: Callable[[], dict[str, Any]]) -> None:
    with pytest.raises(SessionSerializationError) as info:
        serializer.dumps(make())
    assert "session['deep']" in str(info.value)
    assert "nested too deep" in str(info.value)
