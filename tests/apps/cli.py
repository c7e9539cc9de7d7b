"""The command line of the round-trip apps: write a session in one process, check it in
another, through the app and the Flask test client.

    write DIR        store the app's values; print the session cookie
    check DIR SID    print {kind: true/false} as JSON

Warnings of flask_dill_session go to stderr, one line each.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence

from flask import Flask

COOKIE = "session"


def run(create_app: Callable[[str], Flask], argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s %(message)s")
    command, session_dir, *rest = sys.argv[1:] if argv is None else argv
    client = create_app(session_dir).test_client()
    if command == "write":
        response = client.post("/store")
        cookie = client.get_cookie(COOKIE)
        if response.status_code != 200 or cookie is None:
            raise SystemExit(f"store failed: {response.status}\n{response.text}")
        print(cookie.value)
    elif command == "check":
        client.set_cookie(COOKIE, rest[0])
        print(json.dumps(client.get("/check").get_json()))
    else:
        raise SystemExit(f"unknown command {command!r}")
