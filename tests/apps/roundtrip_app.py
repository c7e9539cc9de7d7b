"""Every value kind a session must keep, and an app that stores and checks them.

Imported, it gives the values (:func:`values`), a check that a loaded value is the one
stored (:func:`matches`) and the app (:func:`create_app`). Run as a program, it writes or
checks one session in a process of its own, through the app and the Flask test client::

    python -m tests.apps.roundtrip_app write DIR        # prints the session cookie
    python -m tests.apps.roundtrip_app check DIR SID    # prints {kind: true/false} as JSON

Run with ``-m`` its classes and functions live in ``__main__`` (dill stores them by value);
run as ``python -c "from tests.apps.roundtrip_app import main; main()" ...`` they are
importable (C pickle stores the instances by reference).
"""

from __future__ import annotations

import datetime as datetime_module
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from types import FunctionType
from typing import Any
from uuid import UUID

from flask import Flask, session

from flask_dill_session import Session

from .cli import run

SECRET = "roundtrip-secret"


class Point:
    """An ordinary application class."""

    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((self.x, self.y))

    def __repr__(self) -> str:
        return f"Point({self.x}, {self.y})"


@dataclass
class Item:
    """An application dataclass."""

    name: str
    quantity: int
    tags: list[str] = field(default_factory=list)


def make_adder(n: int) -> Callable[[int], int]:
    """A closure over *n*."""

    def add(x: int) -> int:
        return x + n

    return add


def values() -> dict[str, Any]:
    """One value of each kind, by kind name."""
    return {
        "int": 2**70 + 1,
        "float": 0.1,
        "decimal": Decimal("1.10"),
        "str": "naïve ✓ text",
        "bytes": b"\x00\xffbytes",
        "tuple": (1, "a", (2.5, None)),
        "set": {1, "b", (3, 4)},
        "frozenset": frozenset({1, 2, "c"}),
        "list": [1, [2, [3, "d"]]],
        "nested_dict": {1: {(2, "x"): {frozenset({3}): None}}, 2.5: "f", None: [b"n"], "s": {}},
        "naive_datetime": datetime(2024, 2, 29, 13, 45, 1, 123456),
        "aware_datetime": datetime(2024, 2, 29, 13, 45, tzinfo=timezone(timedelta(hours=5.5))),
        "utc_datetime": datetime(2024, 2, 29, 8, 15, tzinfo=UTC),
        "date": date(2024, 2, 29),
        "timedelta": timedelta(days=-1, seconds=5, microseconds=7),
        "uuid": UUID("12345678-1234-5678-1234-567812345678"),
        "app_object": Point(1, 2),
        "dataclass": Item("pen", 3, ["blue", "fine"]),
        "lambda": lambda x: x * 3,
        "closure": make_adder(10),
        "module": datetime_module,
        "builtin": len,
    }


KINDS = tuple(values())


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same type all the way down (``1 == 1.0`` is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            any(same(key, other) for other in b) and same(value, b[key]) for key, value in a.items()
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (set, frozenset)):
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    if isinstance(a, datetime) and a.utcoffset() != b.utcoffset():
        return False  # aware datetimes at one instant in two zones compare equal
    return bool(a == b) and repr(a) == repr(b)


def matches(kind: str, got: Any) -> bool:
    """Whether *got*, loaded from a session, is the value of *kind* that was stored."""
    if kind == "lambda":
        return type(got) is FunctionType and got.__name__ == "<lambda>" and got(7) == 21
    if kind == "closure":
        return type(got) is FunctionType and got.__closure__ is not None and got(5) == 15
    if kind in ("module", "builtin"):
        return got is values()[kind]
    return same(got, values()[kind])


def create_app(session_dir: str) -> Flask:
    app = Flask(__name__)
    app.config.update(
        TESTING=True, SECRET_KEY=SECRET, SESSION_TYPE="dill", SESSION_FILE_DIR=session_dir
    )
    Session(app)

    @app.post("/store")
    def store() -> str:
        session.update(values())
        return "stored"

    @app.get("/check")
    def check() -> dict[str, bool]:
        missing = object()
        return {kind: matches(kind, session.get(kind, missing)) for kind in KINDS}

    return app


def main(argv: Sequence[str] | None = None) -> None:
    run(create_app, argv)


if __name__ == "__main__":
    main()
