"""An app whose classes live in the app's own module, run as a script or imported.

    python -m tests.apps.main_app write DIR          # classes in __main__ (dill by value)
    python -c "from tests.apps.main_app import main; main()" write DIR   # imported
    ... check DIR SID                                # prints {kind: true/false} as JSON

Whichever way one process wrote the session, the other way must load objects of the
running app's own classes: same type, equal, methods intact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from flask import Flask, session

from flask_dill_session import Session

from .cli import run

T = TypeVar("T")


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)


class Outer:
    class Inner:
        def __init__(self, name: str) -> None:
            self.name = name

        def __eq__(self, other: object) -> bool:
            return type(other) is type(self) and vars(other) == vars(self)


class Box(Generic[T]):
    def __init__(self, content: T) -> None:
        self.content = content

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)


class Money(NamedTuple):
    amount: int
    currency: str = "EUR"

    def label(self) -> str:
        return f"{self.amount} {self.currency}"


@dataclass
class Line:
    sku: str
    tags: list[str] = field(default_factory=list)


def double(x: int) -> int:
    return 2 * x


def values() -> dict[str, Any]:
    return {
        "point": Point(1, -2),
        "inner": Outer.Inner("in"),
        "box": Box[int](5),
        "money": Money(3),
        "line": Line("p-1", ["a"]),
        "function": double,
    }


def matches(kind: str, got: Any) -> bool:
    """Of the running app's own class (not a copy), equal, and with working methods."""
    expected = values()[kind]
    if kind == "function":
        return got is double
    same_type = type(got) is type(expected)
    if kind == "money":
        return same_type and got == expected and got.label() == "3 EUR"
    if kind == "point":
        return same_type and got == expected and got.norm1() == 3 and isinstance(got, Point)
    return same_type and got == expected


def create_app(session_dir: str) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="main-secret", SESSION_TYPE="dill", SESSION_FILE_DIR=session_dir)
    Session(app)

    @app.post("/store")
    def store() -> str:
        session.update(values())
        return "stored"

    @app.get("/check")
    def check() -> dict[str, bool]:
        return {kind: kind in session and matches(kind, session[kind]) for kind in values()}

    return app


def main(argv: Sequence[str] | None = None) -> None:
    run(create_app, argv)


if __name__ == "__main__":
    main()
