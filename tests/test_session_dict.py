"""``DillSession`` as a dict: every method against Flask's own ``SecureCookieSession``.

Each row runs one operation on both, from the same data: same result (or the same
exception), same data after, same ``modified``. Ours sets ``accessed`` on any use; Flask
(3.1.3 on) sets it through the request context, which the last tests compare in a request.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, session
from flask.globals import request_ctx
from flask.sessions import SecureCookieSession

from flask_dill_session import DillSession, Session

Operation = Callable[[Any], Any]  # called with a dict subclass: both sessions are


def ior(other: dict[str, Any]) -> Operation:
    def run(mapping: Any) -> Any:
        mapping |= other
        return None

    return run


def delete(key: str) -> Operation:
    def run(mapping: Any) -> Any:
        del mapping[key]

    return run


def assign(key: str, value: Any) -> Operation:
    def run(mapping: Any) -> Any:
        mapping[key] = value

    return run


DATA = {"a": 1, "b": [2]}

#: id -> (initial data, operation)
TABLE: dict[str, tuple[dict[str, Any], Operation]] = {
    "getitem present": (DATA, lambda m: m["a"]),
    "getitem absent": (DATA, lambda m: m["x"]),
    "setitem new key": (DATA, assign("x", 3)),
    "setitem same value": (DATA, assign("a", 1)),
    "setitem other value": (DATA, assign("a", 9)),
    "del present": (DATA, delete("a")),
    "del absent": (DATA, delete("x")),
    "|= new keys": (DATA, ior({"x": 3})),
    "|= nothing": (DATA, ior({})),
    "| (a new dict)": (DATA, lambda m: m | {"x": 3}),
    "| reflected": (DATA, lambda m: {"x": 3} | m),
    "update mapping": (DATA, lambda m: m.update({"x": 3})),
    "update kwargs": (DATA, lambda m: m.update(x=3, a=1)),
    "update pairs": (DATA, lambda m: m.update([("x", 3)])),
    "update same values": (DATA, lambda m: m.update({"a": 1})),
    "update nothing": (DATA, lambda m: m.update()),
    "update empty": (DATA, lambda m: m.update({})),
    "clear": (DATA, lambda m: m.clear()),
    "clear on empty": ({}, lambda m: m.clear()),
    "popitem": (DATA, lambda m: m.popitem()),
    "popitem on empty": ({}, lambda m: m.popitem()),
    "setdefault present": (DATA, lambda m: m.setdefault("a", 7)),
    "setdefault absent": (DATA, lambda m: m.setdefault("x", 7)),
    "setdefault absent, no default": (DATA, lambda m: m.setdefault("x")),
    "pop present": (DATA, lambda m: m.pop("a")),
    "pop present with default": (DATA, lambda m: m.pop("a", None)),
    "pop absent with default": (DATA, lambda m: m.pop("_remember", None)),
    "pop absent": (DATA, lambda m: m.pop("x")),
    "get present": (DATA, lambda m: m.get("a")),
    "get absent": (DATA, lambda m: m.get("x")),
    "get absent with default": (DATA, lambda m: m.get("x", 5)),
    "keys": (DATA, lambda m: list(m.keys())),
    "values": (DATA, lambda m: list(m.values())),
    "items": (DATA, lambda m: list(m.items())),
    "in present": (DATA, lambda m: "a" in m),
    "in absent": (DATA, lambda m: "x" in m),
    "iteration": (DATA, lambda m: list(m)),
    "reversed": (DATA, lambda m: list(reversed(m))),
    "len": (DATA, len),
    "bool": (DATA, bool),
    "bool on empty": ({}, bool),
    "copy": (DATA, lambda m: m.copy()),
    "dict()": (DATA, dict),
    "==": (DATA, lambda m: m == {"a": 1, "b": [2]}),
    "!=": (DATA, lambda m: m != {"a": 1}),
    "nested change": (DATA, lambda m: m["b"].append(3)),
}


def ours(data: dict[str, Any]) -> DillSession:
    """A stored session holding *data*, loaded on first use as in a request."""

    def load(loading: DillSession) -> None:
        dict.update(loading, data)

    return DillSession("sid", True, load)


def copied(data: dict[str, Any]) -> dict[str, Any]:
    """A copy one level deep: the lists in the table's data are changed by some rows."""
    return {key: list(value) if isinstance(value, list) else value for key, value in data.items()}


def outcome(mapping: Any, operation: Operation) -> tuple[str, Any]:
    try:
        return "returned", operation(mapping)
    except Exception as exc:
        return "raised", type(exc)


@pytest.mark.parametrize("name", list(TABLE))
def test_each_dict_method_sets_modified_as_flask_does(name: str) -> None:
    initial, operation = TABLE[name]
    flask_session = SecureCookieSession(copied(initial))
    dill_session = ours(copied(initial))
    expected = outcome(flask_session, operation)
    got = outcome(dill_session, operation)
    assert got == expected
    assert dict.copy(dill_session) == dict(flask_session)
    assert dill_session.modified is flask_session.modified
    assert dill_session.accessed is True  # any use, read or write
    assert dill_session.loaded


def test_the_table_covers_every_public_dict_method() -> None:
    """A method added to dict (or to the table's coverage) must not go unnoticed."""
    methods = {name for name in dir(dict) if not name.startswith("_")} - {"fromkeys"}
    exercised = {
        *("clear", "copy", "get", "items", "keys", "pop", "popitem", "setdefault"),
        *("update", "values"),
    }
    assert methods == exercised
    dunders = (
        *("__getitem__", "__setitem__", "__delitem__", "__contains__", "__iter__"),
        *("__len__", "__reversed__", "__or__", "__ror__", "__ior__", "__eq__", "__ne__"),
    )
    for name in dunders:
        assert name in vars(DillSession), name  # each loads before it answers


def test_permanent_marks_modified_as_flask_does() -> None:
    """Flask's ``permanent`` setter assigns ``session["_permanent"]``: always modified."""
    for value in (True, False):
        flask_session = SecureCookieSession({"_permanent": True})
        dill_session = ours({})
        flask_session.permanent = value
        dill_session.permanent = value
        assert dill_session.modified is flask_session.modified is True
        assert dill_session.permanent is value


def test_reading_the_flag_or_nothing_at_all_leaves_modified_and_accessed_unset() -> None:
    dill_session = ours(DATA)
    assert not dill_session.loaded and dill_session.accessed is False
    assert dill_session.permanent is True  # reading the flag is a use, not a change
    assert dill_session.accessed is True and dill_session.modified is False


# -- in a request: the same flags through flask.session -------------------------------------


def apps(tmp_path: Path) -> dict[str, Flask]:
    cookie = Flask("cookie")
    cookie.config.update(SECRET_KEY="table-secret")
    dill = Flask("dill")
    dill.config.update(
        SECRET_KEY="table-secret", SESSION_TYPE="dill", SESSION_FILE_DIR=str(tmp_path)
    )
    Session(dill)
    for app in (cookie, dill):

        @app.route("/start")
        def start() -> str:
            session.update(DATA)
            return "started"

    return {"cookie": cookie, "dill": dill}


@pytest.mark.parametrize("name", list(TABLE))
def test_each_dict_method_in_a_request_as_flask_does(name: str, tmp_path: Path) -> None:
    initial, operation = TABLE[name]
    seen = {}
    for kind, app in apps(tmp_path).items():
        client = app.test_client()
        if initial:
            client.get("/start")
        with client:
            client.get("/")  # a 404: a pushed request context, the session opened
            opened = request_ctx._session
            assert opened is not None
            fresh = (opened.modified, opened.accessed)
            result = outcome(session, operation)
            seen[kind] = (fresh, result, dict(opened), opened.modified, opened.accessed)
    assert seen["dill"] == seen["cookie"]
