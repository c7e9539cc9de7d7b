from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from flask_dill_session import Session

from .support import MountError, RedisServer, Tmpfs, redis_binary

AppFactory = Callable[..., Flask]


def pytest_configure(config: pytest.Config) -> None:
    """Warnings are errors in the subprocesses the tests start (servers, scripts) too, as
    ``filterwarnings = error`` makes them in this one; an explicit PYTHONWARNINGS wins."""
    os.environ.setdefault("PYTHONWARNINGS", "error")


@pytest.fixture
def session_dir(tmp_path: Path) -> Path:
    return tmp_path / "sessions"


@pytest.fixture
def make_app(session_dir: Path) -> AppFactory:
    """Build a Flask app with dill sessions on a private filesystem store."""

    def make(**config: Any) -> Flask:
        app = Flask(__name__)
        app.config.update(
            TESTING=True,
            SECRET_KEY="test-secret",
            SESSION_TYPE="dill",
            SESSION_FILE_DIR=str(session_dir),
        )
        app.config.update(config)
        Session(app)
        return app

    return make


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for this test run; required when FDS_REQUIRE_REDIS=1."""
    if redis_binary() is None:
        if os.environ.get("FDS_REQUIRE_REDIS") == "1":
            pytest.fail("FDS_REQUIRE_REDIS=1 but redis-server is not installed")
        pytest.skip("redis-server is not installed (set FDS_REQUIRE_REDIS=1 to fail instead)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the shared test server, on an emptied database."""
    result = redis.Redis(port=redis_server.port, socket_timeout=5, socket_connect_timeout=5)
    result.flushdb()
    yield result
    result.close()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    """A 64 KiB tmpfs of this test alone; unmounting it also checks no file was left open."""
    try:
        mount = Tmpfs(tmp_path / "mnt")
    except MountError as exc:
        if os.environ.get("FDS_REQUIRE_MOUNT") == "1":
            pytest.fail(f"FDS_REQUIRE_MOUNT=1 but a tmpfs cannot be mounted: {exc}")
        pytest.skip(f"a tmpfs cannot be mounted here ({exc}); FDS_REQUIRE_MOUNT=1 fails instead")
    yield mount
    mount.unmount()
