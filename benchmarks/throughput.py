"""Section 6: requests per second of the counter app under gunicorn, driven by ``wrk``.

Every server runs ``benchmarks.apps:create_app()`` under gunicorn (:func:`serve`) on
127.0.0.1; ``wrk`` (one thread, a few connections, loopback only, a fixed duration) sends
``GET /count`` with the cookies of sessions started beforehand, a different session on
each request in turn, so that the locks of one session are rarely contended. Servers are
driven one at a time, in rotating order, several rounds; the ratio is taken per round.
"""

from __future__ import annotations

import http.cookies
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import RedisServer, Server, gunicorn, redis_binary

from .harness import Samples

SESSIONS = 64
CONNECTIONS = 8  # wrk's
WORKERS = 2  # gunicorn's


@dataclass
class Target:
    name: str
    server: Server
    script: Path
    cookies: list[str] = field(default_factory=list)


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def redis_available() -> bool:
    import flask_dill_session.stores as stores

    has_store = (Path(stores.__file__).parent / "redis.py").exists()
    return has_store and redis_binary() is not None


def start_sessions(url: str, count: int) -> list[str]:
    """Start *count* counters over HTTP; return the ``Cookie`` header of each."""
    cookies = []
    for _ in range(count):
        with urllib.request.urlopen(url + "/start_counter", timeout=30) as response:
            assert response.status == 200
            jar = http.cookies.SimpleCookie(response.headers["Set-Cookie"])
        cookies.append("; ".join(f"{name}={morsel.value}" for name, morsel in jar.items()))
    return cookies


def wrk_script(directory: Path, name: str, cookies: list[str]) -> Path:
    """A wrk script sending ``GET /count`` with each cookie in turn."""
    quoted = ",\n".join(f"  [[{cookie}]]" for cookie in cookies)
    path = directory / f"{name}.lua"
    path.write_text(
        f"local cookies = {{\n{quoted}\n}}\n"
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        "  return wrk.format('GET', '/count', {Cookie = cookies[(n % #cookies) + 1]})\n"
        "end\n"
    )
    return path


def serve(logs: Path, app: str, env: dict[str, str]) -> Server:
    """gunicorn serving *app* with :data:`WORKERS` of its default (sync) workers: each
    serves one request at a time and closes the connection after it, so wrk's next request
    goes to whichever worker is free. (Threaded workers keep connections alive, and wrk
    opens its connections at once: one worker could take all of them while the other
    idled through the run, halving that run's rate at random.)"""
    return gunicorn(logs, app, env, workers=WORKERS, threads=None)


def run_wrk(target: Target, seconds: float) -> float:
    """Requests per second of one wrk run; every response must be a 2xx."""
    return run_wrk_counted(target, seconds)[0]


def run_wrk_counted(target: Target, seconds: float) -> tuple[float, int]:
    """Requests per second of one wrk run, and how many requests it completed; every
    response must be a 2xx."""
    output = subprocess.run(
        [
            "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
            "-s", str(target.script), target.server.url,
        ],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    if "Non-2xx" in output or "Socket errors" in output:
        raise RuntimeError(f"{target.name}: wrk saw failed requests:\n{output}")
    rate = re.search(r"Requests/sec:\s*([\d.]+)", output)
    done = re.search(r"(\d+) requests in", output)
    if rate is None or done is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    return float(rate.group(1)), int(done.group(1))


@contextmanager
def targets(workdir: Path, *, with_redis: bool) -> Iterator[list[Target]]:
    """The servers: ours on the filesystem, the cookie session, ours on Redis."""
    root = Path(__file__).resolve().parent.parent
    base = {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    with ExitStack() as stack:
        envs = {
            "ours (filesystem)": {
                "BENCH_SESSION": "dill",
                "BENCH_SESSION_DIR": str(workdir / "sessions"),
            },
            "cookie": {"BENCH_SESSION": "cookie"},
        }
        if with_redis:
            redis_server = RedisServer(workdir / "redis")
            stack.callback(redis_server.stop)
            envs["ours (redis)"] = {
                "BENCH_SESSION": "redis",
                "BENCH_REDIS_PORT": str(redis_server.port),
            }
        found = []
        for name, env in envs.items():
            logs = workdir / env["BENCH_SESSION"]
            logs.mkdir(parents=True, exist_ok=True)
            server = serve(logs, "benchmarks.apps:create_app()", {**base, **env})
            stack.callback(server.stop)
            cookies = start_sessions(server.url, SESSIONS)
            script = wrk_script(workdir, env["BENCH_SESSION"], cookies)
            found.append(Target(name, server, script, cookies))
        yield found


def measure(workdir: Path, *, rounds: int, seconds: float, with_redis: bool) -> Samples:
    """Requests per second of each server, one value per round (higher is better)."""
    samples = Samples()
    with targets(workdir, with_redis=with_redis) as found:
        for target in found:  # warm up: imports, first connections, Lua scripts in Redis
            run_wrk(target, 1)
            samples.per_round[target.name] = []
        for index in range(rounds):
            order = found[index % len(found) :] + found[: index % len(found)]
            for target in order:
                samples.per_round[target.name].append(run_wrk(target, seconds))
    return samples
