"""One version of an app, for deploy tests: its classes come from ``shop.py`` in SHOP_DIR.

    python -m tests.apps.deploy_app login DIR       # prints the session cookie
    python -m tests.apps.deploy_app show DIR SID    # prints {"status", "body"} as JSON

``FDS_VERSION`` sets ``SESSION_DILL_VERSION``, ``FDS_RENAMES`` (JSON) sets
``SESSION_DILL_RENAMES``, ``FDS_MIGRATE=1`` registers a migrator that marks the cart
(``fail``: that then raises);
``FDS_SECRET``, ``FDS_FALLBACKS`` (JSON) and ``FDS_ENCRYPT=1`` set the keys and encryption.
Warnings of flask_dill_session go to stderr, one line each.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import sys
from typing import Any

from flask import Flask, request, session
from werkzeug.exceptions import InternalServerError

from flask_dill_session import Session


def create_app(session_dir: str) -> Flask:
    sys.path.insert(0, os.environ["SHOP_DIR"])
    import shop  # type: ignore[import-not-found]  # the version under test, from SHOP_DIR

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=os.environ.get("FDS_SECRET", "deploy-secret"),
        SECRET_KEY_FALLBACKS=json.loads(os.environ.get("FDS_FALLBACKS", "[]")),
        SESSION_DILL_ENCRYPT=os.environ.get("FDS_ENCRYPT") == "1",
        SESSION_TYPE="dill",
        SESSION_FILE_DIR=session_dir,
        SESSION_DILL_VERSION=os.environ.get("FDS_VERSION") or None,
        SESSION_DILL_RENAMES=json.loads(os.environ.get("FDS_RENAMES", "{}")),
    )
    extension = Session(app)
    if os.environ.get("FDS_MIGRATE"):

        @extension.migrator
        def migrate(data: dict[str, Any], version: str | None) -> dict[str, Any]:
            data["cart"].items.append(f"migrated from {version}")
            if os.environ["FDS_MIGRATE"] == "fail":
                raise LookupError("no migration for this session")
            return data

    @app.post("/login")
    def login() -> str:
        session["user_id"] = 42
        session["cart"] = shop.Cart(["apple"])
        session["line"] = shop.Line("p-1")
        session["note"] = os.environ.get("FDS_NOTE", "")
        return "ok"

    @app.post("/store/<kind>")
    def store(kind: str) -> str:
        session[kind] = unloadable(kind)
        return "stored"

    @app.errorhandler(500)
    def failed(error: InternalServerError) -> tuple[dict[str, str], int]:
        return {"error": str(error.original_exception)}, 500

    @app.get("/show")
    def show() -> dict[str, Any]:
        cart, line = session.get("cart"), session.get("line")
        return {
            "user_id": session.get("user_id"),
            "cart": None if cart is None else [type(cart).__name__, cart.items, cart.count()],
            "line": None if line is None else dataclasses.asdict(line),
        }

    return app


class Node:
    """Hashes by its name, and is a member of its own set: pickles, but never unpickles."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.peers = {self}

    def __hash__(self) -> int:
        return hash(self.name)


class RefusedError(Exception):
    def __init__(self, *, code: int) -> None:
        super().__init__(f"refused with {code}")


def unloadable(kind: str) -> Any:
    """A value that serializes but would not load back, or is bound to this process."""
    if kind == "upload":
        return request.files["file"]
    if kind == "hash_cycle":
        return [Node("a")]
    return RefusedError(code=3)


def main() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s %(message)s")
    command, session_dir, *rest = sys.argv[1:]
    client = create_app(session_dir).test_client()
    if command == "store":
        kind, sid = rest
        client.set_cookie("session", sid)
        upload = {"file": (io.BytesIO(b"x" * 600 * 1024), "big.bin")} if kind == "upload" else {}
        response = client.post(f"/store/{kind}", data=upload)
        print(json.dumps({"status": response.status_code, "body": response.get_json()}))
    elif command == "login":
        client.post("/login")
        cookie = client.get_cookie("session")
        assert cookie is not None
        print(cookie.value)
    else:
        client.set_cookie("session", rest[0])
        response = client.get("/show")
        cookies = response.headers.getlist("Set-Cookie")
        print(
            json.dumps(
                {"status": response.status_code, "body": response.get_json(), "cookies": cookies}
            )
        )


if __name__ == "__main__":
    main()
