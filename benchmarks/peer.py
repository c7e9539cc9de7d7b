"""Section 7: ours on Redis against Flask-Session's Redis backend on one ``redis-server``,
and ours on a 3-master Redis Cluster, under gunicorn and ``wrk``.

The app is a counter whose session holds an int and a string (what Flask-Session's msgspec
serializer can carry); ours locks each session, Flask-Session does not. Both use the same
redis-py client settings and the same server. Throughput is measured as in section 6 (one
``wrk`` run per server per round, the order rotating). While requests are sent one at a
time, round trips per request are counted as the reads Redis processed
(``total_reads_processed``: a round trip's commands, pipelined or not, arrive in one read),
and ``MONITOR`` counts every command Redis ran, those inside Lua scripts included. Besides
requests per second, each run records the CPU time the app's processes and Redis used per
request: on a machine shared with other work it moves much less than throughput, and on a
saturated machine of its own throughput follows it.

    BENCH_PEER=ours|flask-session BENCH_REDIS_PORT=... [BENCH_REDIS_CLUSTER=1] [BENCH_LOCKING=0]
    gunicorn 'benchmarks.peer:create_app()'
"""

from __future__ import annotations

import os
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from flask import Flask, session
from redis.cluster import RedisCluster

from tests.support import RedisClusterServers, RedisServer

from . import throughput
from .harness import Samples

SECRET = "benchmark-secret"
OURS, THEIRS, OURS_CLUSTER = "ours (redis)", "flask-session (redis)", "ours (cluster)"
OURS_UNLOCKED = "ours (redis, no locking)"
_END = "fds-benchmark-end"  # the ECHO that ends a MONITOR count


def create_app() -> Flask:
    """The counter app with the session ``BENCH_PEER`` names, on the Redis server (or the
    cluster, with ``BENCH_REDIS_CLUSTER=1``) at ``BENCH_REDIS_PORT``."""
    port = int(os.environ["BENCH_REDIS_PORT"])
    options: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 5}
    client: redis.Redis | RedisCluster
    if os.environ.get("BENCH_REDIS_CLUSTER") == "1":
        client = RedisCluster(host="127.0.0.1", port=port, **options)
    else:
        client = redis.Redis(host="127.0.0.1", port=port, **options)
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET, SESSION_REDIS=client)
    peer = os.environ["BENCH_PEER"]
    if peer == "ours":
        from flask_dill_session import Session

        locking = os.environ.get("BENCH_LOCKING", "1") == "1"
        app.config.update(
            SESSION_TYPE="dill", SESSION_DILL_BACKEND="redis", SESSION_DILL_LOCKING=locking
        )
        Session(app)
    elif peer == "flask-session":
        import flask_session

        app.config.update(SESSION_TYPE="redis")
        flask_session.Session(app)
    else:
        raise ValueError(f"BENCH_PEER must be ours or flask-session, got {peer!r}")

    @app.route("/start_counter")
    def start_counter() -> str:
        session["x"] = 0
        session["name"] = "visitor"
        session.permanent = True
        return "counter started"

    @app.route("/count")
    def count() -> str:
        session["x"] += 1
        return f"{session['name']} {session['x']}"

    return app


@dataclass
class Trips:
    """Per request: round trips (reads Redis processed), every command Redis ran, and how
    many of each."""

    sent: float
    ran: float
    commands: dict[str, float]


@contextmanager
def targets(workdir: Path) -> Iterator[list[throughput.Target]]:
    """Ours and Flask-Session under gunicorn (:func:`.throughput.serve`) on one shared
    ``redis-server``, ours on a 3-master cluster (Flask-Session 0.8 takes only a
    ``redis.Redis`` client), and ours without locking, to show what the locks cost."""
    root = Path(__file__).resolve().parent.parent
    base = {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    with ExitStack() as stack:
        server = RedisServer(workdir / "redis")
        stack.callback(server.stop)
        cluster = RedisClusterServers(workdir / "cluster")
        stack.callback(cluster.stop)
        single = {"BENCH_REDIS_PORT": str(server.port)}
        sharded = {"BENCH_REDIS_PORT": str(cluster.nodes[0].port), "BENCH_REDIS_CLUSTER": "1"}
        found = []
        for name, peer, env in (
            (OURS, "ours", single),
            (THEIRS, "flask-session", single),
            (OURS_CLUSTER, "ours", sharded),
            (OURS_UNLOCKED, "ours", {**single, "BENCH_LOCKING": "0"}),
        ):
            logs = workdir / name.replace(" ", "-").strip("()")
            logs.mkdir(parents=True, exist_ok=True)
            app_env = {**base, **env, "BENCH_PEER": peer}
            app_server = throughput.serve(logs, "benchmarks.peer:create_app()", app_env)
            stack.callback(app_server.stop)
            cookies = throughput.start_sessions(app_server.url, throughput.SESSIONS)
            script = throughput.wrk_script(workdir, logs.name, cookies)
            found.append(throughput.Target(name, app_server, script, cookies))
        yield found


def count_trips(target: throughput.Target, ports: list[int], requests: int = 200) -> Trips:
    """Send *requests* ``GET /count`` one at a time while every node at *ports* is
    monitored; the round trips and the commands per request."""
    cookies = target.cookies
    seen: list[Counter[str]] = [Counter() for _ in ports]
    ready = [threading.Event() for _ in ports]

    def watch(index: int, port: int) -> None:
        with redis.Redis(port=port, socket_timeout=60) as client, client.monitor() as monitor:
            ready[index].set()
            for command in monitor.listen():
                words = command["command"].split()
                if words[:2] == ["ECHO", _END]:
                    return
                if words[0].upper() != "INFO":  # the counters' own
                    seen[index][words[0].upper()] += 1

    threads = [threading.Thread(target=watch, args=pair) for pair in enumerate(ports)]
    for thread in threads:
        thread.start()
    for event in ready:
        assert event.wait(30)
    with ExitStack() as stack:
        counters = [stack.enter_context(redis.Redis(port=port)) for port in ports]
        before = _reads(counters)
        for n in range(requests):
            request = urllib.request.Request(target.server.url + "/count")
            request.add_header("Cookie", cookies[n % len(cookies)])
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
        trips = _reads(counters) - before - len(counters)  # less the INFO that reads it
        for counter in counters:
            counter.echo(_END)
    for thread in threads:
        thread.join(60)
    total: Counter[str] = sum(seen, Counter())
    per_request = {name: n / requests for name, n in total.most_common()}
    return Trips(trips / requests, total.total() / requests, per_request)


@dataclass
class Results:
    """Per target, one value per round: requests per second; CPU seconds per request (the
    app's processes and Redis's together). And round trips per request."""

    rates: Samples
    cpu: Samples
    trips: dict[str, Trips]


def measure(workdir: Path, *, rounds: int, seconds: float) -> Results:
    """Requests per second and CPU per request of each target (one value per round), and
    the round trips per request of each."""
    results = Results(Samples(), Samples(), {})
    with targets(workdir) as found:
        ports = {target.name: _ports(target) for target in found}
        for target in found:  # warm up: imports, connections, Lua scripts
            throughput.run_wrk(target, 1)
            results.rates.per_round[target.name] = []
            results.cpu.per_round[target.name] = []
            results.trips[target.name] = count_trips(target, ports[target.name])
        for index in range(rounds):
            order = found[index % len(found) :] + found[: index % len(found)]
            for target in order:
                before = _cpu(target, ports[target.name])
                rate, done = throughput.run_wrk_counted(target, seconds)
                used = _cpu(target, ports[target.name]) - before
                results.rates.per_round[target.name].append(rate)
                results.cpu.per_round[target.name].append(used / done)
    return results


def _cpu(target: throughput.Target, ports: list[int]) -> float:
    """CPU seconds used so far by the target's gunicorn processes (its process group) and
    by the Redis servers at *ports*."""
    used = 0.0
    group = target.server.proc.pid
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == group:  # pgrp; utime and stime follow at 11 and 12
            used += (int(fields[11]) + int(fields[12])) / tick
    for port in ports:
        with redis.Redis(port=port, socket_timeout=5) as client:
            info = client.info("cpu")
        used += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return used


def _reads(counters: list[redis.Redis]) -> int:
    """The reads of client input processed so far by the servers of *counters* (a counter
    connects on its first call, before its ``INFO`` is answered: later calls cost one read
    each)."""
    return sum(int(counter.info("stats")["total_reads_processed"]) for counter in counters)


def _ports(target: throughput.Target) -> list[int]:
    """The Redis ports *target*'s app uses: the server, or every node of the cluster."""
    env = target.server.env
    port = int(env["BENCH_REDIS_PORT"])
    if env.get("BENCH_REDIS_CLUSTER") != "1":
        return [port]
    with RedisCluster(host="127.0.0.1", port=port) as client:
        return sorted(node.port for node in client.get_primaries())
