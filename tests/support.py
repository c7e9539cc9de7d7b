"""Real processes for the tests: HTTP servers, private redis-servers (alone, as a cluster, under
a sentinel), and small tmpfs mounts."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import redis
from flask import Flask, session
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

from flask_dill_session import DillSessionInterface
from flask_dill_session.config import Settings
from flask_dill_session.stores.base import Entry, Store
from flask_dill_session.stores.filesystem import FileSystemStore
from flask_dill_session.stores.redis import RedisStore

from .apps.counter_app import create_app as create_counter_app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def interface(app: Flask) -> DillSessionInterface:
    """The app's dill session interface."""
    result = app.session_interface
    assert isinstance(result, DillSessionInterface)
    return result


def filesystem_store(app: Flask) -> FileSystemStore:
    """The app's filesystem store."""
    result = interface(app).store
    assert isinstance(result, FileSystemStore)
    return result


def fixed_ids(app: Flask) -> None:
    """Make the app issue the ids ``000...0``, ``000...1``, ...: with a fixed secret, where
    each session lands in a cluster is then known in advance, not left to chance."""
    length = len(interface(app).generate_sid())
    ids = (f"{n:0{length}d}" for n in itertools.count())
    interface(app).generate_sid = ids.__next__  # type: ignore[method-assign]


def redis_store_of(app: Flask) -> RedisStore:
    """The app's Redis store."""
    result = interface(app).store
    assert isinstance(result, RedisStore)
    return result


class CountingEntry(Entry):
    """Passes every call on to the real entry and counts it in *ops*."""

    def __init__(self, inner: Entry, ops: Counter[str]) -> None:
        self.inner = inner
        self.ops = ops
        self.key = inner.key
        self.blob = inner.blob

    def write(self, blob: bytes, ttl: float) -> bool:
        self.ops["write"] += 1
        return self.inner.write(blob, ttl)

    def touch(self, ttl: float) -> None:
        self.ops["touch"] += 1
        self.inner.touch(ttl)

    def delete(self) -> None:
        self.ops["delete"] += 1
        self.inner.delete()

    def quarantine(self, ttl: float) -> None:
        self.ops["quarantine"] += 1
        self.inner.quarantine(ttl)

    def copy_to_quarantine(self, ttl: float) -> None:
        self.ops["copy_to_quarantine"] += 1
        self.inner.copy_to_quarantine(ttl)

    def release(self) -> None:
        self.ops["release"] += 1
        self.inner.release()


class CountingStore(Store):
    """Wraps a store: counts every operation on it and on its entries in ``calls``."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.supports_locking = inner.supports_locking
        self.calls: Counter[str] = Counter()

    @classmethod
    def from_config(cls, settings: Settings, config: Mapping[str, Any]) -> Store:
        raise NotImplementedError("made around a store, not from a config")

    def ops(self) -> Counter[str]:
        """The calls that reach the store (lock releases and ``locked`` left out)."""
        return self.calls - Counter(release=self.calls["release"], locked=self.calls["locked"])

    def open(self, key: str, *, lock: bool) -> Entry:
        self.calls["open"] += 1
        self.calls["locked"] += lock  # how many of the opens took the lock
        return CountingEntry(self.inner.open(key, lock=lock), self.calls)

    def new(self, key: str) -> Entry:
        return CountingEntry(self.inner.new(key), self.calls)


def count_store_calls(app: Flask) -> CountingStore:
    """Put a :class:`CountingStore` around the app's store; return it."""
    counting = CountingStore(interface(app).store)
    interface(app).store = counting
    return counting


def free_port(*, bus: bool = False) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now; with *bus*, port + 10000
    (a Redis Cluster node's bus) is free too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if not bus:
                return port
            if port + 10000 < 65536:
                with socket.socket() as other:
                    try:
                        other.bind(("127.0.0.1", port + 10000))
                    except OSError:
                        continue
                    return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on port {port} within {timeout} s")


class Server:
    """A process serving HTTP on 127.0.0.1:*port*, stopped by :meth:`stop`."""

    def __init__(self, argv: Sequence[str], port: int, env: Mapping[str, str], cwd: Path) -> None:
        self.port = port
        self.env = dict(env)
        self.url = f"http://127.0.0.1:{port}"
        self.log = cwd / f"server-{port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_port(port, self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"server did not start:\n{self.log.read_text()}") from None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def example_env(session_dir: Path, secret: str = "test-secret", **extra: str) -> dict[str, str]:
    """Environment for the counter example: config through ``FLASK_*`` variables."""
    return {
        "FLASK_SECRET_KEY": secret,
        "FLASK_SESSION_FILE_DIR": str(session_dir),
        "PYTHONPATH": os.pathsep.join([str(EXAMPLES), str(ROOT)]),
        **extra,
    }


def serve_example(tmp_path: Path, env: Mapping[str, str], script: str = "counter.py") -> Server:
    """``python examples/<script>`` on a free port (Werkzeug's threaded server)."""
    port = free_port()
    argv = [sys.executable, str(EXAMPLES / script)]
    return Server(argv, port, {**env, "PORT": str(port)}, tmp_path)


def gunicorn(
    tmp_path: Path, app: str, env: Mapping[str, str], workers: int = 2, threads: int | None = 4
) -> Server:
    """``gunicorn`` with *workers* processes of *threads* threads serving *app* (gthread);
    ``threads=None``: gunicorn's default sync workers, one request at a time each."""
    port = free_port()
    threaded = [] if threads is None else ["--threads", str(threads), "--worker-class", "gthread"]
    argv = [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers), *threaded, "--timeout", "60", "--graceful-timeout", "5", app,
    ]  # fmt: skip
    return Server(argv, port, env, tmp_path)


class Client:
    """A tiny HTTP client that keeps one cookie jar (like one browser) and sends *headers*
    (a ``User-Agent``, say) with every request."""

    def __init__(self, base_url: str, headers: Mapping[str, str] | None = None) -> None:
        import http.cookiejar

        self.base_url = base_url
        self.headers = dict(headers or {})
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str, timeout: float = 30.0) -> tuple[int, str, dict[str, str]]:
        return self._send(urllib.request.Request(self.base_url + path), timeout)

    def post(
        self, path: str, data: Mapping[str, str] | None = None, timeout: float = 30.0
    ) -> tuple[int, str, dict[str, str]]:
        """POST *data* as a form (an empty body without it)."""
        body = urllib.parse.urlencode(data or {}).encode()
        return self._send(urllib.request.Request(self.base_url + path, data=body), timeout)

    def _send(
        self, request: urllib.request.Request, timeout: float
    ) -> tuple[int, str, dict[str, str]]:
        for name, value in self.headers.items():
            request.add_header(name, value)
        try:
            with self.opener.open(request, timeout=timeout) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(), dict(error.headers)

    def cookie(self, name: str = "session") -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    def clone(self) -> Client:
        """Another client with a copy of this one's cookies (another tab, frozen in time)."""
        other = Client(self.base_url, self.headers)
        for cookie in self.jar:
            other.jar.set_cookie(cookie)
        return other

    def forget(self, name: str) -> None:
        """Drop the cookie *name*, as a browser does with a session cookie when it closes."""
        for cookie in [c for c in self.jar if c.name == name]:
            self.jar.clear(cookie.domain, cookie.path, cookie.name)


@contextlib.contextmanager
def serve_in_thread(app: Flask) -> Iterator[str]:
    """Serve *app* over HTTP from this process (Werkzeug's threaded server, a thread per
    connection) for the block; yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def run_deploy_app(tmp_path: Path, shop: str, *args: str, **env: str) -> tuple[str, list[str]]:
    """Run ``tests.apps.deploy_app`` with *shop* as its ``shop.py``: its output, and the
    lines it logged on the ``flask_dill_session`` logger."""
    shop_dir = tmp_path / f"shop-{hashlib.sha256(shop.encode()).hexdigest()[:12]}"
    shop_dir.mkdir(exist_ok=True)
    (shop_dir / "shop.py").write_text(textwrap.dedent(shop))
    result = subprocess.run(
        [sys.executable, "-m", "tests.apps.deploy_app", *args],
        cwd=ROOT,
        env={**os.environ, "SHOP_DIR": str(shop_dir), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    return result.stdout.strip(), [line for line in lines if line.startswith("flask_dill_session")]


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def redis_cli_binary() -> str | None:
    return shutil.which("redis-cli")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll *condition* until it holds; raise :class:`TimeoutError` naming *what* if it
    never does. A condition that raises counts as not holding yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (OSError, redis.RedisError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.02)


_ID_LIKE = re.compile(r"[A-Za-z0-9_-]{22,}")  # 16 random bytes or more, URL-safe base64


def assert_no_ids(client: redis.Redis | RedisCluster) -> None:
    """No key holds what could be a session id: outside the hash tag, no run of 22 or more
    characters of the id alphabet (``SCAN`` of every primary)."""
    for raw in client.scan_iter(count=1000):
        name = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        untagged = re.sub(r"\{[^}]*\}", "{}", name, count=1)
        assert not _ID_LIKE.search(untagged), f"a Redis key holds a session id: {name}"


class RedisServer:
    """A private ``redis-server`` on a free loopback port, no persistence; *args* are more
    command-line options (a config file first, if any)."""

    def __init__(self, workdir: Path, port: int | None = None, args: Sequence[str] = ()) -> None:
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.port = port or free_port()
        self.workdir = workdir
        self.args = list(args)
        workdir.mkdir(parents=True, exist_ok=True)
        config = self.args[:1] if self.args and not self.args[0].startswith("-") else []
        self.log = workdir / f"redis-{self.port}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, *config, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(workdir), *self.args[len(config) :]],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_for_port(self.port, self.proc)

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client of this server alone (also of a cluster node: no redirections)."""
        return redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=5, **kwargs)

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            return dict(client.info(section))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.thaw()  # a stopped process handles SIGTERM only once continued
            self.proc.terminate()
            self.proc.wait(10)

    def freeze(self) -> None:
        """Stop the server (SIGSTOP): connections stay open, nothing is answered."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server run again (SIGCONT); nothing if it has exited."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.__init__(self.workdir, self.port, self.args)  # type: ignore[misc]


class RedisClusterServers:
    """A Redis Cluster of *masters* ``redis-server --cluster-enabled yes`` on free loopback
    ports (no replicas), joined by ``redis-cli --cluster create``; :meth:`stop` ends it."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        cli = redis_cli_binary()
        if cli is None:
            raise RuntimeError("redis-cli is not installed")
        self.nodes: list[RedisServer] = []
        try:
            for index in range(masters):
                args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "2000"]  # fmt: skip
                port = free_port(bus=True)  # the cluster bus listens on port + 10000
                self.nodes.append(RedisServer(workdir / f"node-{index}", port, args))
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run(
                [cli, "--cluster", "create", *addresses,
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def wait_ok(self) -> None:
        """Until every node sees every node, every slot covered, and the cluster state ok."""

        def ok(node: RedisServer) -> bool:
            with node.client() as client:
                info = client.cluster("info")
            return (
                info.get("cluster_state") == "ok"
                and int(info.get("cluster_slots_ok", 0)) == 16384
                and int(info.get("cluster_known_nodes", 0)) == len(self.nodes)
            )

        for node in self.nodes:
            wait_for(partial(ok, node), f"cluster node {node.port} seeing the cluster ok")

    def client(self, **kwargs: Any) -> RedisCluster:
        return RedisCluster(
            host="127.0.0.1", port=self.nodes[0].port, socket_timeout=5,
            socket_connect_timeout=5, **kwargs,
        )  # fmt: skip

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


SERVICE = "fds"  # the Sentinel service name of the tests
_FAST_SYNC = ["--repl-diskless-sync-delay", "0"]  # a full sync starts at once


class RedisSentinelServers:
    """One master, one replica and one ``redis-server --sentinel`` watching them as service
    :data:`SERVICE`, on free loopback ports; :meth:`stop` ends them."""

    def __init__(self, workdir: Path) -> None:
        self.servers: list[RedisServer] = []
        self.sentinel: RedisServer | None = None
        try:
            master = RedisServer(workdir / "a", args=_FAST_SYNC)
            self.servers.append(master)
            replicaof = ["--replicaof", "127.0.0.1", str(master.port)]
            self.servers.append(RedisServer(workdir / "b", args=[*replicaof, *_FAST_SYNC]))
            self.wait_synced(self.servers[1], master)
            port = free_port()
            config = workdir / "sentinel.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 1\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
            )
            self.sentinel = RedisServer(workdir / "sentinel", port, [str(config), "--sentinel"])
            wait_for(self._replica_known, "the sentinel discovering the replica")
        except BaseException:
            self.stop()
            raise

    @property
    def sentinel_port(self) -> int:
        assert self.sentinel is not None
        return self.sentinel.port

    def sentinel_client(self) -> redis.Redis:
        assert self.sentinel is not None
        return self.sentinel.client(decode_responses=True)

    def sentinels(self, **kwargs: Any) -> Sentinel:
        """A ``redis.sentinel.Sentinel`` of the sentinel, for ``master_for``."""
        assert self.sentinel is not None
        sentinels = [("127.0.0.1", self.sentinel.port)]
        return Sentinel(sentinels, socket_timeout=5, **kwargs)  # type: ignore[no-untyped-call]

    def _replica_known(self) -> bool:
        with self.sentinel_client() as client:
            replicas = client.sentinel_slaves(SERVICE)
        return any(
            "s_down" not in each["flags"] and each.get("master-link-status") == "ok"
            for each in replicas
        )

    def master(self) -> RedisServer:
        """The server the sentinel names master now, as clients ask (``SENTINEL MASTERS``;
        ``get-master-addr-by-name`` names the promoted replica a little sooner)."""
        with self.sentinel_client() as client:
            port = client.sentinel_master(SERVICE)["port"]
        return next(server for server in self.servers if server.port == int(port))

    def replica(self) -> RedisServer:
        master = self.master()
        return next(server for server in self.servers if server is not master)

    @staticmethod
    def wait_synced(replica: RedisServer, master: RedisServer, timeout: float = 60.0) -> None:
        """Until *replica* replicates *master* with its link up."""

        def synced() -> bool:
            info = replica.info("replication")
            return (
                info.get("role") == "slave"
                and int(info.get("master_port", 0)) == master.port
                and info.get("master_link_status") == "up"
            )

        wait_for(synced, f"{replica.port} replicating {master.port}", timeout)

    def start_failover(self) -> tuple[RedisServer, RedisServer]:
        """``SENTINEL FAILOVER``, once the sentinel knows the replica is fit: returns (old
        master, the replica it promotes)."""
        wait_for(self._replica_known, "the sentinel knowing the replica")
        old, new = self.master(), self.replica()
        with self.sentinel_client() as client:
            client.sentinel_failover(SERVICE)
        return old, new

    def wait_failover(self, old: RedisServer, new: RedisServer, timeout: float = 90.0) -> None:
        """Until the sentinel names *new* master, it says so itself, and *old* replicates it."""
        wait_for(lambda: self.master() is new, "the sentinel naming the new master", timeout)
        wait_for(lambda: new.info("replication").get("role") == "master", "the promotion", timeout)
        self.wait_synced(old, new, timeout)
        wait_for(self._replica_known, "the sentinel seeing the old master as replica", timeout)

    def stop(self) -> None:
        for server in [*self.servers, *([self.sentinel] if self.sentinel else [])]:
            server.stop()


class MountError(RuntimeError):
    """Mounting is not permitted here (not root, or no such capability in a container)."""


class Tmpfs:
    """A tmpfs of *size* mounted on *directory* (which is created), for disk-full and
    read-only tests. Needs root; raises :class:`MountError` when mounting is refused."""

    def __init__(self, directory: Path, size: str = "64k") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        options = f"size={size},mode=0700"
        self._mount("-t", "tmpfs", "-o", options, "tmpfs", str(directory))
        self.mounted = True

    def read_only(self) -> None:
        """Remount read-only: every write fails with EROFS, reads go on."""
        self._mount("-o", "remount,ro", str(self.directory))

    def read_write(self) -> None:
        self._mount("-o", "remount,rw", str(self.directory))

    def fill(self) -> Path:
        """Fill the file system with one file until a write fails with ENOSPC; return it."""
        filler = self.directory / "filler"
        chunk = b"\0" * 4096
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    return filler
        finally:
            os.close(fd)

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.directory)], check=True)
            self.mounted = False

    @staticmethod
    def _mount(*argv: str) -> None:
        result = subprocess.run(["mount", *argv], capture_output=True, text=True)
        if result.returncode != 0:
            raise MountError(f"mount {' '.join(argv)}: {result.stderr.strip()}")


# -- the counter app (tests.apps.counter_app) through the test client -----------------


def start(app: Flask) -> str:
    """Start a counter at 0 and return its session id."""
    client = app.test_client()
    assert client.get("/start").status_code == 200
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def client_for(app: Flask, sid: str) -> Any:
    client = app.test_client()
    client.set_cookie("session", sid)
    return client


def slow_incr_app(config: Mapping[str, Any]) -> tuple[Flask, threading.Event, threading.Event]:
    """The counter app with ``/slow-incr``: read, add one, set *loaded*, then wait for
    *finish* before the response is saved."""
    app = create_counter_app(config)
    loaded, finish = threading.Event(), threading.Event()

    @app.route("/slow-incr")
    def slow_incr() -> str:
        session["n"] += 1
        loaded.set()
        assert finish.wait(20)
        return str(session["n"])

    return app, loaded, finish
