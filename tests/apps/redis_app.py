"""A counter app on the Redis backend, for tests that run it in processes of their own.

Configuration comes from the environment: ``FDS_REDIS_URL`` (required) names the Redis
server (a node of a Redis Cluster with ``FDS_REDIS_CLUSTER=1``), and every ``FLASK_*``
variable overrides the config key of the same name (for example ``FLASK_SECRET_KEY``,
``FLASK_SESSION_FILE_DIR``, ``FLASK_SESSION_DILL_LOCK_LEASE``).
The client has short socket timeouts and a single retry, so an unreachable Redis turns
into a quick 503 rather than a hanging request.

    FDS_REDIS_URL=redis://127.0.0.1:6380/0 PORT=8000 python -m tests.apps.redis_app
    FDS_REDIS_URL=... gunicorn 'tests.apps.redis_app:create_app()'
"""

from __future__ import annotations

import os
import time

import redis
from flask import Flask, session
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from flask_dill_session import Session


def redis_client(url: str, timeout: float = 1.0) -> redis.Redis:
    """A client that gives up after *timeout* seconds instead of hanging."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
    )


def cluster_client(url: str, timeout: float = 1.0) -> RedisCluster:
    """A cluster client that gives up after *timeout* seconds instead of hanging."""
    return RedisCluster.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(SESSION_TYPE="dill", SESSION_DILL_BACKEND="redis")
    app.config.from_prefixed_env()
    url = os.environ["FDS_REDIS_URL"]
    cluster = os.environ.get("FDS_REDIS_CLUSTER") == "1"
    app.config["SESSION_REDIS"] = cluster_client(url) if cluster else redis_client(url)
    Session(app)

    @app.route("/start")
    def start() -> str:
        session["x"] = 0
        session["pid"] = os.getpid()
        return "started"

    @app.route("/count")
    def count() -> str:
        session["x"] = session.get("x", 0) + 1
        return str(session["x"])

    @app.route("/get")
    def get() -> str:
        return str(session.get("x"))

    @app.route("/hold")
    def hold() -> str:
        session["x"] = session.get("x", 0) + 1000  # never saved: this request never ends
        time.sleep(3600)
        return "done"

    @app.route("/pid")
    def pid() -> str:
        return str(os.getpid())  # never touches the session

    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=int(os.environ["PORT"]), threaded=True)
