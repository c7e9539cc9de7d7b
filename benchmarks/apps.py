"""The counter app served by gunicorn in the throughput benchmark.

``BENCH_SESSION`` picks the session: ``dill`` (ours on the filesystem store in
``BENCH_SESSION_DIR``), ``redis`` (ours on the redis-server at ``BENCH_REDIS_PORT``) or
``cookie`` (Flask's built-in signed cookie). The views are the counter example's.
"""

from __future__ import annotations

import os
from datetime import datetime

from flask import Flask, session

from flask_dill_session import Session


def create_app() -> Flask:
    kind = os.environ.get("BENCH_SESSION", "dill")
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "benchmark-secret"
    if kind == "dill":
        app.config.update(SESSION_TYPE="dill", SESSION_FILE_DIR=os.environ["BENCH_SESSION_DIR"])
        Session(app)
    elif kind == "redis":
        import redis

        client = redis.Redis(
            host="127.0.0.1",
            port=int(os.environ["BENCH_REDIS_PORT"]),
            socket_timeout=5,
            socket_connect_timeout=5,
        )
        app.config.update(SESSION_TYPE="dill", SESSION_DILL_BACKEND="redis", SESSION_REDIS=client)
        Session(app)
    elif kind != "cookie":
        raise ValueError(f"BENCH_SESSION must be dill, redis or cookie, got {kind!r}")

    @app.route("/start_counter")
    def start_counter() -> str:
        session["x"] = 0
        session["started"] = datetime.now()
        session.permanent = True  # the cookie session too: a cookie with an expiry
        return "counter started"

    @app.route("/count")
    def count() -> str:
        session["x"] += 1
        return f"{session['x']}-{datetime.now()}"

    return app
