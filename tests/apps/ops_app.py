"""An app with logins and the user index, for the operations tests.

Config from the environment: ``FDS_SESSION_DIR`` (filesystem store), ``FDS_REDIS_PORT``
(the Redis backend on that local port) or ``FDS_CLUSTER_PORT`` (on the Redis Cluster with a
node on that local port). ``flask --app tests.apps.ops_app dill-session ...``
runs the command line against it. ``/hold`` uses the session, says so by creating
``<FDS_FLAG_DIR>/holding``, then waits for ``<FDS_FLAG_DIR>/release`` before changing it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from flask import Flask, session

from flask_dill_session import Session, current_session, destroy, regenerate, revoke_other_sessions


class Cart:
    def __init__(self, items: list[str]) -> None:
        self.items = items


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="ops-secret",
        SESSION_TYPE="dill",
        SESSION_DILL_USER_KEY="user_id",
        SESSION_DILL_LOCK_TIMEOUT=30,
    )
    if "FDS_REDIS_PORT" in os.environ:
        import redis

        app.config.update(
            SESSION_DILL_BACKEND="redis",
            SESSION_REDIS=redis.Redis(port=int(os.environ["FDS_REDIS_PORT"]), socket_timeout=10),
        )
    elif "FDS_CLUSTER_PORT" in os.environ:
        from redis.cluster import RedisCluster

        port = int(os.environ["FDS_CLUSTER_PORT"])
        cluster = RedisCluster(host="127.0.0.1", port=port, socket_timeout=10)
        app.config.update(SESSION_DILL_BACKEND="redis", SESSION_REDIS=cluster)
    else:
        app.config["SESSION_FILE_DIR"] = os.environ["FDS_SESSION_DIR"]
    Session(app)

    @app.post("/login/<user>")
    def login(user: str) -> dict[str, Any]:
        regenerate()
        session["user_id"] = user
        session["cart"] = Cart(["apple"])
        return {"sid": current_session().sid}

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        return {"user": session.get("user_id"), "held": session.get("held", False)}

    @app.post("/logout-others")
    def logout_others() -> dict[str, int]:
        return {"revoked": revoke_other_sessions()}

    @app.post("/logout")
    def logout() -> str:
        destroy()
        return "bye"

    @app.get("/hold")
    def hold() -> str:
        session.get("user_id")  # loaded: this request holds the session's lock
        signal_and_wait("holding")
        session["held"] = True
        return "held"

    @app.post("/visit")
    def visit() -> str:
        session["cart"] = Cart(["pear"])
        return "ok"

    @app.post("/slow-login/<user>")
    def slow_login(user: str) -> dict[str, Any]:
        session.get("cart")  # loaded: this request holds the session's lock
        signal_and_wait("login-holding")
        regenerate()
        session["user_id"] = user
        return {"sid": current_session().sid}

    @app.get("/peek")
    def peek() -> dict[str, Any]:
        (Path(os.environ["FDS_FLAG_DIR"]) / "arrived").touch()  # before using the session
        cart = session.get("cart")
        return {"user": session.get("user_id"), "cart": None if cart is None else cart.items}

    return app


def signal_and_wait(name: str) -> None:
    """Create the flag *name*, then wait (30 s at most) for the flag ``release``."""
    flags = Path(os.environ["FDS_FLAG_DIR"])
    (flags / name).touch()
    deadline = time.monotonic() + 30
    while not (flags / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
