"""Run the benchmarks and print one table of ratios: ``python -m benchmarks.run [--quick]``.

Every ratio is ours divided by the reference, measured in one interleaved run (A B A B
..., the order rotating) as the median of per-round ratios; per-request numbers are the
session's own cost (the request context alone is measured alongside and subtracted).

A full run (every section, not ``--quick``) also writes its figures to
``benchmarks/results.json`` (``--results`` names another file, and makes any run write
one). ``--plot`` runs nothing: it draws the charts of the recorded figures into
``docs/_static/`` (it needs matplotlib, in the ``docs`` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tests.support import redis_cli_binary

from . import codec, harness, peer, perrequest, scale, throughput

SECTIONS = ("codec", "requests", "untouched", "login", "scale", "throughput", "peer")
HERE = Path(__file__).resolve().parent
#: The recorded figures of the last full run, beside RESULTS.md.
RESULTS = HERE / "results.json"
#: Where ``--plot`` puts the charts: the docs' static files.
PLOTS = HERE.parent / "docs" / "_static"
#: Version of the layout of the results file.
RESULTS_FORMAT = 1


@dataclass
class Row:
    """One line of the table, and its figures for the results file.

    *measure* names what was measured, the same in every run (rows comparing ours with
    two peers share it); *values* holds the figures by contestant, in *unit* (``"us"``
    per operation, ``"s"`` in all, or ``"req/s"``).
    """

    number: str
    what: str
    ours: str
    reference: str
    ratio: float | None
    goal: str = ""
    met: bool | None = None
    measure: str = ""
    unit: str = ""
    values: dict[str, float] = field(default_factory=dict)

    def cells(self) -> list[str]:
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}x"
        met = {True: "yes", False: "**no**", None: ""}[self.met]
        return [self.number, self.what, self.ours, self.reference, ratio, self.goal, met]


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"


def _micro(**seconds: float) -> dict[str, float]:
    """Seconds per operation as microseconds, rounded as the table shows them."""
    return {name: round(value * 1e6, 1) for name, value in seconds.items()}


def _at_most(ratio: float, goal: float) -> tuple[str, bool | None]:
    return f"≤ {goal:g}x", None if math.isnan(ratio) else ratio <= goal


def _at_least(ratio: float, goal: float) -> tuple[str, bool | None]:
    return f"≥ {goal:g}x", None if math.isnan(ratio) else ratio >= goal


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_codec(quick: bool) -> list[Row]:
    log("1. codec")
    rounds = 5 if quick else 21
    batch = {"ours plain": 5000, "ours plain writing": 5000, "pickle plain": 5000}
    batch |= {"ours objects": 2000, "ours objects unchecked": 2000}
    batch |= {name: 200 for name in ("ours lambda", "dill lambda", "dill recurse lambda")}
    samples = codec.measure(rounds=rounds, batch=batch)
    plain = samples.ratio("ours plain", "pickle plain")
    writing = samples.ratio("ours plain writing", "pickle plain")
    lam = samples.ratio("ours lambda", "dill lambda")
    recurse = samples.ratio("ours lambda", "dill recurse lambda")
    checked = samples.ratio("ours objects", "ours objects unchecked")
    sealed = codec.measure_envelope(rounds=rounds, batch=2000)
    encrypted = sealed.ratio("encrypted small", "signed small")
    small = len(codec.PAYLOADS["small"])
    median = samples.median
    return [
        Row(
            "1",
            "codec: dumps+loads of a small plain session",
            _us(median("ours plain")),
            "C pickle " + _us(median("pickle plain")),
            plain,
            *_at_most(plain, 1.3),
            measure="codec.plain",
            unit="us",
            values=_micro(ours=median("ours plain"), pickle=median("pickle plain")),
        ),
        Row(
            "1",
            "codec: the same with the write-time check (the scan that vouches for it)",
            _us(median("ours plain writing")),
            "C pickle " + _us(median("pickle plain")),
            writing,
            measure="codec.plain_checked",
            unit="us",
            values=_micro(ours=median("ours plain writing"), pickle=median("pickle plain")),
        ),
        Row(
            "1",
            "codec: dumps+check+loads of a session holding a lambda",
            _us(median("ours lambda")),
            "raw dill, its defaults " + _us(median("dill lambda")),
            lam,
            measure="codec.lambda",
            unit="us",
            values=_micro(ours=median("ours lambda"), dill=median("dill lambda")),
        ),
        Row(
            "1",
            "codec: the same, vs dill with the settings ours uses for code (recurse=True)",
            _us(median("ours lambda")),
            "raw dill, recurse=True " + _us(median("dill recurse lambda")),
            recurse,
            measure="codec.lambda_recurse",
            unit="us",
            values=_micro(ours=median("ours lambda"), dill=median("dill recurse lambda")),
        ),
        Row(
            "1",
            "codec: a session holding app objects (dataclasses), with the write-time trial"
            " load that refuses what would not load back",
            _us(median("ours objects")),
            "without the trial load " + _us(median("ours objects unchecked")),
            checked,
            measure="codec.objects",
            unit="us",
            values=_micro(ours=median("ours objects"), unchecked=median("ours objects unchecked")),
        ),
        Row(
            "1",
            f"envelope: seal+open encrypted (AES-256-GCM) vs signed (HMAC-SHA256), of the"
            f" small session ({small} bytes); then of 10 KiB",
            f"{_us(sealed.median('encrypted small'))}; {_us(sealed.median('encrypted 10k'))}",
            f"signed {_us(sealed.median('signed small'))}; {_us(sealed.median('signed 10k'))}",
            encrypted,
            measure="codec.envelope",
            unit="us",
            values={name: round(sealed.median(name) * 1e6, 1) for name in sealed.per_round},
        ),
    ]


def run_requests(apps: perrequest.Apps, quick: bool) -> list[Row]:
    rows = []
    rounds, batch = (5, 192) if quick else (21, 448)
    many = f"{perrequest.SESSIONS} sessions in turn"
    for number, measure, label, work, sessions in (
        (
            "2",
            "requests.changing",
            f"request that changes the session (counter += 1), {many}",
            perrequest.increment,
            0,
        ),
        (
            "3",
            "requests.reading",
            f"read-only request (session read, not changed), {many}",
            perrequest.read,
            0,
        ),
        (
            "2",
            "requests.one_session",
            "request that changes the session, one session back to back",
            perrequest.increment,
            1,
        ),
    ):
        log(f"{number}. {label}")
        samples = perrequest.measure_requests(
            apps, work, rounds=rounds, batch=batch, sessions=sessions or perrequest.SESSIONS
        )
        cost = samples.overhead("ours", "ours context")
        ours = _us(cost)
        goals = sessions != 1  # the goals are for many sessions
        peers: list[tuple[str, str, float | None]] = [
            ("cachelib", "Flask-Session + cachelib FileSystemCache", 0.25 if goals else None),
            ("cookie", "Flask cookie session", 1.0 if goals and number == "2" else None),
        ]
        for other, title, goal in peers:
            ratio = samples.ratio(
                "ours", other, top_minus="ours context", bottom_minus=f"{other} context"
            )
            theirs = samples.overhead(other, f"{other} context")
            reference = f"{title} {_us(theirs)}"
            row = Row(
                number,
                f"{label}; ours on the filesystem",
                ours,
                reference,
                ratio,
                measure=measure,
                unit="us",
                values=_micro(ours=cost, **{other: theirs}),
            )
            if goal is not None:
                row.goal, row.met = _at_most(ratio, goal)
            rows.append(row)
    return rows


def run_untouched(apps: perrequest.Apps, quick: bool) -> list[Row]:
    log("4. request that never touches the session")
    calls = perrequest.store_calls_untouched(apps)
    rounds, batch = (5, 500) if quick else (21, 1000)
    samples = perrequest.measure_untouched(apps, rounds=rounds, batch=batch)
    ratio = samples.ratio("ours", "bare")
    return [
        Row(
            "4",
            "request that never touches the session (whole request, with a session cookie): "
            f"store operations {calls}, overhead {_us(samples.overhead('ours', 'bare'))}",
            _us(samples.median("ours")),
            "bare app " + _us(samples.median("bare")),
            ratio,
            "0 store I/O",
            calls == 0,
            measure="untouched",
            unit="us",
            values=_micro(ours=samples.median("ours"), bare=samples.median("bare")),
        )
    ]


def run_login(workdir: Path, quick: bool) -> list[Row]:
    log("7. Flask-Login app: logged-in request that changes nothing")
    apps = perrequest.make_login_apps(workdir)
    calls = perrequest.store_calls_login(apps)
    ops = ", ".join(f"{name} {count}" for name, count in sorted(calls.items()))
    rounds, batch = (5, 192) if quick else (21, 448)
    samples = perrequest.measure_login(apps, rounds=rounds, batch=batch)
    cost = samples.overhead("ours", "memory")
    ours = _us(cost)
    label = (
        f"Flask-Login app, logged-in `GET /me` that changes nothing, {perrequest.SESSIONS}"
        f" users in turn (whole request minus the same app on a dict session: "
        f"{_us(samples.median('memory'))}); ours on the filesystem, its store operations"
        f" in 100 requests: {ops}"
    )
    rows = []
    for other, title in (
        ("cachelib", "Flask-Session + cachelib FileSystemCache"),
        ("cookie", "Flask cookie session"),
    ):
        ratio = samples.ratio("ours", other, top_minus="memory", bottom_minus="memory")
        theirs = samples.overhead(other, "memory")
        reference = f"{title} {_us(theirs)}"
        values = _micro(ours=cost, **{other: theirs})
        rows.append(
            Row("7", label, ours, reference, ratio, measure="login", unit="us", values=values)
        )
    rows[0].goal, rows[0].met = "0 writes", calls["write"] == 0
    return rows


def run_scale(workdir: Path, quick: bool, million: bool) -> list[Row]:
    sizes = {"1k": 1_000, "10k": 10_000} if quick else {"1k": 1_000, "100k": 100_000}
    if million and not quick:
        sizes["1M"] = 1_000_000
    stores = {}
    for name, count in sizes.items():
        stores[name] = workdir / f"scale-{name}"
        seconds = scale.populate(stores[name], count)
        log(f"5. filled a store with {count} expired sessions in {seconds:.1f} s")
    rounds, batch = (5, 256) if quick else (15, 512)
    samples = scale.measure_requests(stores, rounds=rounds, batch=batch)
    rows = []
    small, *larger = sizes
    for name in larger:
        ratio = samples.ratio(
            name, small, top_minus=f"{name} context", bottom_minus=f"{small} context"
        )
        cost = samples.overhead(name, f"{name} context")
        base = samples.overhead(small, f"{small} context")
        row = Row(
            "5",
            f"request that changes the session, {name} stored sessions vs {small}",
            _us(cost),
            f"{small}: {_us(base)}",
            ratio,
            measure="scale.changing",
            unit="us",
            values=_micro(**{small: base, name: cost}),
        )
        if name == "1M":
            row.goal, row.met = _at_most(ratio, 1.2)
        rows.append(row)
    biggest = list(sizes)[-1]
    log(f"5. flask dill-session cleanup of {biggest} expired sessions")
    result = scale.cleanup(stores[biggest])
    for directory in stores.values():
        shutil.rmtree(directory)
    log(f"5. find -delete of {biggest} files, for reference")
    reference = scale.delete_reference(workdir / "scale-reference", sizes[biggest])
    shutil.rmtree(workdir / "scale-reference")
    rows.append(
        Row(
            "5",
            f"`flask dill-session cleanup` of {biggest} expired sessions ({result.remaining} live"
            f" left): {result.reported}; peak RSS {result.peak_rss / 2**20:.0f} MiB, the same"
            f" process idle {result.idle_rss / 2**20:.0f} MiB",
            f"{result.seconds:.1f} s",
            f"`find -delete` of as many files {reference:.1f} s",
            result.seconds / reference,
            "flat memory",
            result.peak_rss - result.idle_rss < 16 * 2**20,
            measure="scale.cleanup",
            unit="s",
            values={"ours": round(result.seconds, 2), "find -delete": round(reference, 2)},
        )
    )
    return rows


def run_throughput(workdir: Path, quick: bool) -> list[Row]:
    if throughput.wrk_binary() is None:
        log("6. skipped: wrk is not installed (apt-get install wrk)")
        return [Row("6", "throughput: skipped, wrk is not installed", "", "", None)]
    with_redis = throughput.redis_available()
    log(f"6. throughput under gunicorn{' (and Redis)' if with_redis else ''}")
    rounds, seconds = (2, 2.0) if quick else (15, 2.0)
    samples = throughput.measure(
        workdir / "throughput", rounds=rounds, seconds=seconds, with_redis=with_redis
    )
    rows = []
    for name in [name for name in samples.per_round if name != "cookie"]:
        ratio = samples.ratio(name, "cookie")
        row = Row(
            "6",
            f"throughput of the counter app, gunicorn 2 workers, wrk on loopback: {name}",
            f"{samples.median(name):.0f} req/s",
            f"cookie session {samples.median('cookie'):.0f} req/s",
            ratio,
            measure="throughput",
            unit="req/s",
            values={name: round(samples.median(name)), "cookie": round(samples.median("cookie"))},
        )
        if name == "ours (filesystem)":
            row.goal, row.met = _at_least(ratio, 0.85)
        rows.append(row)
    return rows


def _spread(samples: harness.Samples, top: str, bottom: str) -> str:
    """The range of the per-round ratios *top* / *bottom*."""
    ratios = [a / b for a, b in zip(samples.per_round[top], samples.per_round[bottom], strict=True)]
    return f"per round {min(ratios):.2f}x-{max(ratios):.2f}x"


def run_peer(workdir: Path, quick: bool) -> list[Row]:
    if None in (throughput.wrk_binary(), redis_cli_binary()) or not throughput.redis_available():
        log("7. skipped: needs wrk, redis-server and redis-cli")
        return [
            Row("7", "Redis against Flask-Session: skipped, wrk or Redis missing", "", "", None)
        ]
    rounds, seconds = (2, 2.0) if quick else (15, 2.0)
    log("7. counter app on Redis: ours (locking) and Flask-Session; ours on a cluster")
    results = peer.measure(workdir / "peer", rounds=rounds, seconds=seconds)
    rates, cpu, trips = results.rates, results.cpu, results.trips
    app = "a counter app (an int and a str in the session), gunicorn 2 workers, wrk on loopback"
    theirs = f"Flask-Session {version('flask-session')}"
    rows = []
    for name, what in (
        (peer.OURS, "ours with locking vs Flask-Session without, on one redis-server"),
        (peer.OURS_CLUSTER, f"ours on a 3-master Redis Cluster vs {theirs} on one server"),
        (peer.OURS_UNLOCKED, "ours without locking (as Flask-Session) vs Flask-Session"),
    ):
        ratio = rates.ratio(name, peer.THEIRS)
        rows.append(
            Row(
                "7",
                f"throughput of {app}: {what}; {_spread(rates, name, peer.THEIRS)}",
                f"{rates.median(name):.0f} req/s",
                f"{theirs} {rates.median(peer.THEIRS):.0f} req/s",
                ratio,
                *(_at_least(ratio, 1.0) if name == peer.OURS else ("", None)),
            )
        )
        efficiency = cpu.ratio(peer.THEIRS, name)
        rows.append(
            Row(
                "7",
                f"the same runs, CPU per request (app processes and Redis), as a throughput"
                f" ratio (theirs / ours); {_spread(cpu, peer.THEIRS, name)}",
                f"{cpu.median(name) * 1e6:.0f} µs",
                f"{theirs} {cpu.median(peer.THEIRS) * 1e6:.0f} µs",
                efficiency,
            )
        )
    for name in (peer.OURS, peer.OURS_CLUSTER, peer.OURS_UNLOCKED):
        mine, others = trips[name], trips[peer.THEIRS]
        rows.append(
            Row(
                "7",
                f"Redis round trips per request, {name}; and commands Redis ran per request"
                f" (in Lua scripts too): ours {_commands(mine)}; theirs {_commands(others)}",
                f"{mine.sent:.2f} ({mine.ran:.1f} commands)",
                f"{theirs} {others.sent:.2f} ({others.ran:.1f} commands)",
                None,
            )
        )
    return rows


def _commands(trips: peer.Trips) -> str:
    return ", ".join(f"{name} {n:.1f}" for name, n in trips.commands.items() if n >= 0.05)


def machine(workdir: Path) -> str:
    memory = ""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.0f} GiB"
    filesystem, longest = "unknown", -1
    with open("/proc/mounts") as mounts:  # the mount that holds workdir: the longest prefix
        for line in mounts:
            _, point, kind, *_ = line.split()
            inside = os.path.commonpath([str(workdir.resolve()), point]) == point
            if inside and len(point) > longest:
                filesystem, longest = kind, len(point)
    packages = ", ".join(
        f"{name} {version(name)}" for name in ("flask", "flask-session", "cachelib", "dill")
    )
    return (
        f"{os.cpu_count()} cores, {memory} memory, {filesystem} filesystem,"
        f" Python {platform.python_version()} ({platform.system()} {platform.release()});"
        f" {packages}"
    )


def table(rows: list[Row]) -> str:
    header = ["#", "measurement", "ours", "reference", "ratio", "goal", "met"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def record(
    rows: list[Row], path: Path, *, command: str, machine: str, seconds: float, quick: bool
) -> None:
    """Write the figures of *rows* to *path* as JSON, for ``--plot`` and other readers."""
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "command": command,
        "quick": quick,
        "machine": machine,
        "seconds": round(seconds),
        "rows": [asdict(row) for row in rows],
    }
    text = json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    path.write_text(text, encoding="utf-8")


def _recorded(row: Row) -> Row:
    """*row* with its ratio as recorded: four decimals, ``None`` if it was not measurable."""
    if row.ratio is not None:
        row.ratio = round(row.ratio, 4) if math.isfinite(row.ratio) else None
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller stores")
    parser.add_argument(
        "--no-million", action="store_true", help="skip the 1M-session store (about 4 GiB, minutes)"
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}"
    )
    parser.add_argument("--tmpdir", help="where to put the stores (default: the temp dir)")
    parser.add_argument(
        "--results",
        type=Path,
        help=f"the figures as JSON: written by a run (by default {RESULTS.name} beside this"
        " file, by full runs only), read by --plot",
    )
    parser.add_argument(
        "--plot",
        action="store_true",
        help="run nothing: draw the charts of the recorded figures (needs matplotlib)",
    )
    parser.add_argument(
        "--plot-dir", type=Path, default=PLOTS, help="where --plot writes its PNG files"
    )
    args = parser.parse_args(argv)
    if args.plot:
        try:
            from . import plot  # matplotlib is needed here only
        except ModuleNotFoundError as exc:
            parser.error(
                f"--plot needs {(exc.name or 'matplotlib').split('.')[0]}: pip install -e '.[docs]'"
            )
        for path in plot.draw(args.results or RESULTS, args.plot_dir):
            print(path)
        return 0
    sections = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {sorted(unknown)}")
    full = not args.quick and set(sections) == set(SECTIONS)
    results = args.results or (RESULTS if full else None)

    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fds-bench-", dir=args.tmpdir) as tmp:
        workdir = Path(tmp)
        apps = perrequest.make_apps(workdir)
        steps: dict[str, Callable[[], list[Row]]] = {
            "codec": lambda: run_codec(args.quick),
            "requests": lambda: run_requests(apps, args.quick),
            "untouched": lambda: run_untouched(apps, args.quick),
            "login": lambda: run_login(workdir, args.quick),
            "scale": lambda: run_scale(workdir, args.quick, not args.no_million),
            "throughput": lambda: run_throughput(workdir, args.quick),
            "peer": lambda: run_peer(workdir, args.quick),
        }
        for name in SECTIONS:
            if name in sections:
                rows += steps[name]()
        description = machine(workdir)
    seconds = time.perf_counter() - started
    print(table(rows))
    print()
    print(f"Machine: {description}.")
    print(f"Took {seconds:.0f} s ({'quick' if args.quick else 'full'} run).")
    if results is not None:
        command = " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])])
        rows = [_recorded(row) for row in rows]
        record(
            rows, results, command=command, machine=description, seconds=seconds, quick=args.quick
        )
        log(f"figures written to {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
