from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from redis.cluster import RedisCluster

from flask_dill_session import Session

from .support import (
    MountError,
    RedisClusterServers,
    RedisSentinelServers,
    RedisServer,
    Tmpfs,
    assert_no_ids,
    redis_binary,
    redis_cli_binary,
)

AppFactory = Callable[..., Flask]


#: The subprocesses' warning filters: errors, but for the third-party warnings that
#: setup.cfg's ``filterwarnings`` ignores, and says why (later filters take precedence).
SUBPROCESS_WARNINGS = ",".join(
    [
        "error",
        "ignore:datetime.datetime.utcnow() is deprecated:DeprecationWarning:"
        "flask_login.login_manager",
    ]
)


def pytest_configure(config: pytest.Config) -> None:
    """Warnings are errors in the subprocesses the tests start (servers, scripts) too, as
    ``filterwarnings = error`` makes them in this one; an explicit PYTHONWARNINGS wins."""
    os.environ.setdefault("PYTHONWARNINGS", SUBPROCESS_WARNINGS)


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


def require_redis(*binaries: tuple[str, str | None]) -> None:
    """Skip unless every (name, path) is installed; fail instead when FDS_REQUIRE_REDIS=1."""
    missing = [name for name, path in binaries if path is None]
    if not missing:
        return
    if os.environ.get("FDS_REQUIRE_REDIS") == "1":
        pytest.fail(f"FDS_REQUIRE_REDIS=1 but {', '.join(missing)} is not installed")
    pytest.skip(f"{', '.join(missing)} is not installed (FDS_REQUIRE_REDIS=1 fails instead)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for this test run; required when FDS_REQUIRE_REDIS=1."""
    require_redis(("redis-server", redis_binary()))
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the shared test server, on an emptied database; no key may hold a
    session id when the test ends."""
    result = redis.Redis(port=redis_server.port, socket_timeout=5, socket_connect_timeout=5)
    result.flushdb()
    yield result
    assert_no_ids(result)
    result.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A real 3-master Redis Cluster for this test run; required when FDS_REQUIRE_REDIS=1."""
    require_redis(("redis-server", redis_binary()), ("redis-cli", redis_cli_binary()))
    cluster = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterServers) -> Iterator[RedisCluster]:
    """A cluster client of the shared test cluster, every master emptied; no key may hold a
    session id when the test ends."""
    result = redis_cluster.client()
    result.flushdb()
    yield result
    assert_no_ids(result)
    result.close()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelServers]:
    """A master, a replica and a sentinel for this test run; required when
    FDS_REQUIRE_REDIS=1."""
    require_redis(("redis-server", redis_binary()))
    servers = RedisSentinelServers(tmp_path_factory.mktemp("sentinel"))
    yield servers
    servers.stop()


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


@pytest.fixture
def deployed_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A module with a ``Cart`` class, importable from a temporary directory."""
    name = f"shop_{uuid.uuid4().hex}"
    code = tmp_path / "code"
    code.mkdir()
    source = code / f"{name}.py"
    source.write_text("class Cart:\n    def __init__(self, items):\n        self.items = items\n")
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    yield name, source
    sys.modules.pop(name, None)
