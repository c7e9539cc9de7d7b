"""A counter app on the filesystem backend, for the concurrency tests.

Configuration comes from ``FLASK_*`` environment variables (for example
``FLASK_SECRET_KEY``, ``FLASK_SESSION_FILE_DIR``, ``FLASK_SESSION_DILL_LOCKING=false``),
then from the *config* given to :func:`create_app`. Routes:

- ``/start``: a new counter at 0;
- ``/incr``: add one, answer ``"<value> <pid>"``;
- ``/read``: the value, read only;
- ``/sleep?seconds=S``: add one, then hold the session (and its lock) for *S* seconds;
- ``/boom``: read the session, then raise;
- ``/health``: never touches the session.

Run as a program, it holds one session's lock in a process of its own until killed::

    FLASK_SECRET_KEY=... FLASK_SESSION_FILE_DIR=... python -m tests.apps.counter_app hold SID
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Flask, request, session

from flask_dill_session import Session

COOKIE = "session"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SESSION_TYPE"] = "dill"
    app.config.from_prefixed_env()
    app.config.update(config or {})
    Session(app)

    @app.route("/start")
    def start() -> str:
        session["n"] = 0
        return "0"

    @app.route("/incr")
    def incr() -> str:
        session["n"] = session.get("n", 0) + 1
        return f"{session['n']} {os.getpid()}"

    @app.route("/read")
    def read() -> str:
        return str(session.get("n"))

    @app.route("/sleep")
    def sleep() -> str:
        session["n"] = session.get("n", 0) + 1
        time.sleep(float(request.args.get("seconds", "1")))
        return str(session["n"])

    @app.route("/boom")
    def boom() -> str:
        raise RuntimeError(f"boom at n={session.get('n')}")

    @app.route("/health")
    def health() -> str:
        return "ok"

    @app.route("/pid")
    def pid() -> str:
        return str(os.getpid())  # which process serves this URL; never touches the session

    return app


def hold(sid: str) -> None:
    """Open the session *sid* through the app and hold it (and its lock) for an hour."""
    client = create_app().test_client()
    client.set_cookie(COOKIE, sid)
    client.get("/sleep?seconds=3600")


def main(argv: Sequence[str] | None = None) -> None:
    command, *rest = sys.argv[1:] if argv is None else argv
    if command != "hold" or len(rest) != 1:
        raise SystemExit("usage: python -m tests.apps.counter_app hold SID")
    hold(rest[0])


if __name__ == "__main__":
    main()
