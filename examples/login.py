"""Logins kept in a server-side dill session: log in, a cart object, log out, and
"log out other devices".

Run:  python examples/login.py   (serves http://127.0.0.1:5001)

Then, with curl or a browser (POST with a form, or ``curl -X POST``):

- ``POST /login?user=ann&password=ann-secret`` logs in: the session gets a new id
  (``regenerate()``), so an id seen before the login is worth nothing after it;
- ``POST /cart/add/<item>`` and ``GET /`` keep a ``Cart`` object in the session;
- ``GET /devices`` lists the user's sessions, from the user index;
- ``POST /logout-others`` logs out every other device of the user at once;
- ``POST /logout`` deletes the session on the server and clears the cookie (``destroy()``).

Every ``FLASK_*`` environment variable overrides the config of the same name, e.g.
``FLASK_SESSION_FILE_DIR=/some/dir``; ``PORT`` sets the port.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, abort, request, session

from flask_dill_session import (
    Session,
    current_session,
    destroy,
    regenerate,
    revoke_other_sessions,
)
from flask_dill_session.interface import DillSessionInterface

#: A stand-in for a user table: name -> password (a real app stores hashes).
USERS = {"ann": "ann-secret", "ben": "ben-secret"}


@dataclass
class Cart:
    """A small object kept in the session as it is."""

    items: list[str] = field(default_factory=list)

    def add(self, item: str) -> int:
        self.items.append(item)
        return len(self.items)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(SESSION_TYPE="dill", SESSION_DILL_USER_KEY="user_id")
    app.config.from_prefixed_env()
    # A random secret per process: sessions end with it. Set FLASK_SECRET_KEY to keep them.
    app.config.setdefault("SECRET_KEY", os.urandom(32).hex())
    Session(app)

    @app.get("/")
    def home() -> dict[str, Any]:
        cart: Cart = session.get("cart", Cart())
        return {"user": session.get("user_id"), "cart": cart.items}

    @app.post("/login")
    def login() -> dict[str, Any]:
        user = request.values.get("user", "")
        password = request.values.get("password", "")
        if not hmac.compare_digest(USERS.get(user, ""), password) or not password:
            abort(403)
        regenerate()  # a new id at login: an id planted or seen before is now useless
        session["user_id"] = user
        return {"user": user, "new_session": current_session().new}

    @app.post("/cart/add/<item>")
    def add_to_cart(item: str) -> dict[str, int]:
        cart: Cart = session.setdefault("cart", Cart())
        return {"items": cart.add(item)}  # an in-place change: saved all the same

    @app.get("/devices")
    def devices() -> dict[str, Any]:
        user = session.get("user_id")
        if user is None:
            abort(401)
        interface = app.session_interface
        assert isinstance(interface, DillSessionInterface)
        return {"sessions": len(interface.sessions_of(user))}

    @app.post("/logout-others")
    def logout_others() -> dict[str, int]:
        if session.get("user_id") is None:
            abort(401)
        return {"logged_out": revoke_other_sessions()}

    @app.post("/logout")
    def logout() -> dict[str, bool]:
        destroy()
        return {"logged_out": True}

    return app


app = create_app()

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5001")))
