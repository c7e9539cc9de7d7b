"""Section 5: the per-request cost as the store grows, and cleaning up a million sessions.

Stores of different sizes are filled fast, by writing framed records (the store's own
:func:`~flask_dill_session.stores.filesystem.frame`) straight into the sharded layout, all
of them expired long ago. Each store also holds a few live sessions, started through the
app, which the measured requests use in turn. The requests of all sizes are interleaved.
Then ``flask dill-session cleanup`` runs in a child process on the largest store: its
time, and its peak memory (the child's maximum resident set size, from ``wait4``, minus
that of the same child doing nothing).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from flask_dill_session.stores.filesystem import frame

from . import perrequest
from .harness import Samples, interleave

LIVE = 64  # live sessions per store, used in turn by the measured requests
_DAY = 86400.0


def _fill(args: tuple[str, int, bytes]) -> int:
    """Write *count* expired session files below *directory* (one worker's share)."""
    directory, count, record = args
    deadline = time.time() - 2 * _DAY
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    made = 0
    for _ in range(count):
        name = os.urandom(20).hex()  # 40 hex digits, like the store's hashed names
        fd = os.open(os.path.join(directory, name[:2], name), flags, 0o600)
        try:
            os.write(fd, record)
            os.utime(fd, (deadline, deadline))
        finally:
            os.close(fd)
        made += 1
    return made


def populate(directory: Path, count: int, *, blob_size: int = 200, workers: int = 2) -> float:
    """Fill *directory* with *count* expired sessions; return the seconds it took."""
    started = time.perf_counter()
    for shard in range(256):
        (directory / f"{shard:02x}").mkdir(mode=0o700, parents=True, exist_ok=True)
    record = frame(os.urandom(blob_size), time.time() - 2 * _DAY)
    shares = [count // workers + (1 if index < count % workers else 0) for index in range(workers)]
    jobs = [(str(directory), share, record) for share in shares]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        made = sum(pool.map(_fill, jobs))
    assert made == count
    return time.perf_counter() - started


@dataclass
class Cleanup:
    seconds: float  # wall time of the whole child process
    reported: str  # what the command printed
    peak_rss: int  # bytes
    idle_rss: int  # bytes: the same child, doing nothing
    remaining: int


_CLEANUP = """
import sys
from flask import Flask
from flask_dill_session import Session
from flask_dill_session.cli import cli
app = Flask("bench_cleanup")
app.config.update(SECRET_KEY="x", SESSION_TYPE="dill", SESSION_FILE_DIR=sys.argv[1])
Session(app)
if sys.argv[2] == "run":
    result = app.test_cli_runner().invoke(cli, ["cleanup"])
    assert result.exit_code == 0, result.output
    print(result.output.strip())
"""


def _child(directory: Path, mode: str) -> tuple[float, str, int]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLEANUP, str(directory), mode], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"cleanup failed ({proc.returncode}): {output}")
    return time.perf_counter() - started, output.strip(), usage.ru_maxrss * 1024


def cleanup(directory: Path) -> Cleanup:
    """Run ``flask dill-session cleanup`` on *directory* in a child process."""
    _, _, idle = _child(directory, "idle")
    seconds, output, peak = _child(directory, "run")
    remaining = sum(len(os.listdir(shard)) for shard in directory.iterdir() if shard.is_dir())
    summary = output.splitlines()[0] if output else ""  # not the report by kind and place
    return Cleanup(seconds, summary, peak, idle, remaining)


def delete_reference(directory: Path, count: int) -> float:
    """Seconds ``find -type f -delete`` takes over a store of *count* expired sessions: what
    deleting that many files costs on this disk, without reading or locking any."""
    populate(directory, count)
    started = time.perf_counter()
    subprocess.run(["find", str(directory), "-type", "f", "-delete"], check=True)
    return time.perf_counter() - started


def measure_requests(stores: dict[str, Path], *, rounds: int, batch: int) -> Samples:
    """The counter increment on each store (LIVE sessions in turn), interleaved."""
    cases = {}
    for name, directory in stores.items():
        app = perrequest.dill_app(directory)
        environs = [
            perrequest.environ(app, "/health", perrequest.start_session(app)) for _ in range(LIVE)
        ]
        cases[name] = perrequest.in_context(app, environs, perrequest.increment)
        cases[f"{name} context"] = perrequest.in_context(app, environs, perrequest.nothing)
    return interleave(cases, rounds=rounds, batch=batch)
