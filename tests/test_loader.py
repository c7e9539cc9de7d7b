"""Loading key by key: what cannot be loaded drops only the top-level key holding it."""

from __future__ import annotations

import functools
import importlib
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from flask_dill_session import serializer
from flask_dill_session.exc import BadPayloadError, ForeignPayloadError
from flask_dill_session.loader import Loader

from .support import ROOT

Deploy = Callable[[str], ModuleType]


@pytest.fixture
def deploy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deploy]:
    """Write (again) a module of a fresh name and import it: one version of the app's code."""
    name = f"shop_{uuid.uuid4().hex[:8]}"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)

    def write(source: str) -> ModuleType:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(name, None)
        importlib.invalidate_caches()
        return importlib.import_module(name)

    yield write
    sys.modules.pop(name, None)


V1 = """
import functools

class Cart:
    def __init__(self, items):
        self.items = list(items)

class Special(dict):
    pass

def price(item):
    return 3
"""


def test_a_missing_class_drops_every_key_that_holds_it_at_any_depth(deploy: Deploy) -> None:
    shop = deploy(V1)
    payload = serializer.dumps(
        {
            "user_id": 7,
            "cart": shop.Cart([1]),
            "nested": {"a": [({"x": shop.Cart([])},)]},
            "in_set": frozenset({1, (2, shop.Special)}),
            "subclassed": shop.Special(a=1),
            "dates": [1, 2],
        }
    )
    deploy("")  # everything removed
    loaded = Loader().load(payload)
    assert loaded.data == {"user_id": 7, "dates": [1, 2]}
    assert sorted(loaded.dropped) == ["cart", "in_set", "nested", "subclassed"]
    assert all("cannot be loaded" in why for why in loaded.dropped.values())


def test_a_missing_function_drops_its_key(deploy: Deploy) -> None:
    shop = deploy(V1)
    payload = serializer.dumps({"user_id": 7, "pricing": functools.partial(shop.price, 1)})
    deploy(V1.replace("def price", "def cost"))
    loaded = Loader().load(payload)
    assert loaded.data == {"user_id": 7}
    assert "price" in loaded.dropped["pricing"]


def test_a_state_the_class_refuses_drops_its_key_and_keeps_data_out_of_the_reason(
    deploy: Deploy,
) -> None:
    shop = deploy(V1)
    payload = serializer.dumps({"user_id": 7, "cart": shop.Cart(["secret-item"])})
    deploy(
        V1
        + """
Cart.__setstate__ = lambda self, state: int(state["items"][0])
"""
    )
    loaded = Loader().load(payload)
    assert loaded.data == {"user_id": 7}
    assert "ValueError" in loaded.dropped["cart"]
    assert "secret-item" not in loaded.dropped["cart"]
    with pytest.raises(ValueError):
        Loader().load_strict(payload)


def test_renames_map_a_class_or_a_whole_module(deploy: Deploy) -> None:
    shop = deploy(V1)
    payload = serializer.dumps({"cart": shop.Cart([1])})
    moved = deploy(V1.replace("class Cart", "class Basket"))
    loaded = Loader(renames={f"{shop.__name__}.Cart": f"{moved.__name__}.Basket"}).load(payload)
    assert type(loaded.data["cart"]) is moved.Basket and loaded.data["cart"].items == [1]
    assert loaded.dropped == {}


def test_a_module_rename_maps_every_class_of_it(deploy: Deploy, tmp_path: Path) -> None:
    shop = deploy(V1)
    payload = serializer.dumps({"cart": shop.Cart([2]), "kind": shop.Special(b=2)})
    (tmp_path / f"{shop.__name__}_v2.py").write_text(textwrap.dedent(V1))
    deploy("")
    loaded = Loader(renames={shop.__name__: f"{shop.__name__}_v2"}).load(payload)
    moved = sys.modules.pop(f"{shop.__name__}_v2")
    assert type(loaded.data["cart"]) is moved.Cart and loaded.data["cart"].items == [2]
    assert type(loaded.data["kind"]) is moved.Special and loaded.dropped == {}


def test_plain_data_takes_the_fast_path_and_loads_exactly() -> None:
    data = {"n": 1, "s": "x", "l": [1.5, None], "b": b"\x00"}
    assert Loader().load(serializer.dumps(data)) == (data, {}, ())


def test_unknown_tags_and_non_dicts_are_bad_payloads() -> None:
    with pytest.raises(BadPayloadError, match="unknown payload tag"):
        Loader().load(b"zzz")
    with pytest.raises(BadPayloadError, match="not a dict"):
        Loader().load(serializer.dumps({"x": 1})[:0] + b"\x80\x05K\x01.")


def test_dill_code_of_another_python_is_foreign_not_bad() -> None:
    payload = serializer.dumps({"f": lambda: 1})
    assert payload[:1] == serializer.DILL
    stamp = payload[2 : 2 + payload[1]]
    other = stamp.replace(serializer.PYTHON.encode(), b"2.7", 1)
    forged = payload[:1] + bytes([len(other)]) + other + payload[2 + payload[1] :]
    with pytest.raises(ForeignPayloadError, match=r"Python 2\.7"):
        Loader().load(forged)


_WRITER = """
import sys
from flask_dill_session import serializer

class Thing:
    def __init__(self):
        self.v = 1
    def old_method(self):
        return "old"

sys.stdout.write(serializer.dumps({"thing": Thing(), "user_id": 3}).hex())
"""

_READER = """
import sys
from flask_dill_session.loader import Loader

class Thing:
    def __init__(self):
        self.v = 1
{extra}
loaded = Loader().load(bytes.fromhex(sys.stdin.read()))
thing = loaded.data["thing"]
print(type(thing) is Thing, getattr(thing, "old_method", lambda: None)(), *loaded.notes)
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("    def old_method(self):\n        return 'new'", "True new"),
        (
            "",
            "False old class Thing was rebuilt from its stored definition: the running"
            " app's definition no longer matches",
        ),
    ],
    ids=["still-matches", "method-removed"],
)
def test_a_main_class_stored_by_value_resolves_to_the_running_one_while_it_matches(
    extra: str, expected: str
) -> None:
    def run(code: str, stdin: str = "") -> str:
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, input=stdin, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    payload = run(_WRITER)
    assert run(_READER.format(extra=extra), payload) == expected
