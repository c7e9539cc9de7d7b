"""What the signals cost a request: ``python -m benchmarks.signals [--runs N] [--quick]``.

Requests as in the per-request rows (``perrequest``: the interface called directly, 64
sessions in turn, the request context alone subtracted), on one app, interleaved: nobody
listening (each signal is one ``receivers`` check) against a no-op receiver connected to
every signal (the request then sends ``session_saved``). Signals are global, so the
receiver is connected around its own batches only. Apart, ``timeit`` gives the cost of
one check with nobody listening; a changing request makes three (``lock_waited``,
``session_created``, ``session_saved``), a reading one two.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import timeit
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from flask import Flask
from flask.ctx import RequestContext

from flask_dill_session import signals
from flask_dill_session.incidents import send  # how the interface sends a signal
from flask_dill_session.names import fingerprint

from .harness import Case, Samples, interleave
from .perrequest import (
    SESSIONS,
    Work,
    dill_app,
    environ,
    increment,
    nothing,
    read,
    start_session,
)
from .run import machine

SIGNALS = [getattr(signals, name) for name in signals.__all__]


def _cpu(app: Flask, environs: list[dict[str, Any]], work: Work) -> Case:
    """As :func:`~.perrequest.in_context`, timed in this process's CPU time: on a shared
    machine, time spent descheduled is most of the noise, and none of the cost."""
    null = app.session_interface.make_null_session(app)
    count = len(environs)

    def run(n: int) -> float:
        clock = time.process_time
        started = clock()
        for index in range(n):
            ctx = RequestContext(app, environs[index % count].copy(), session=null)
            ctx.push()
            try:
                work(app, app.session_interface, ctx)
            finally:
                ctx.pop()
        return clock() - started

    return run


def _listened(app: Flask, case: Case, received: list[int]) -> Case:
    """*case* with a no-op receiver on every signal of *app*, connected outside the time."""

    def receiver(sender: Flask, **extra: Any) -> None:
        received[0] += 1

    def run(n: int) -> float:
        with ExitStack() as stack:
            for signal in SIGNALS:
                stack.enter_context(signal.connected_to(receiver, sender=app))
            return case(n)

    return run


def measure(directory: Path, *, rounds: int, batch: int) -> tuple[Samples, int]:
    """The interleaved samples, and how many signals the receiver got."""
    app = dill_app(directory)
    environs = [environ(app, "/health", start_session(app)) for _ in range(SESSIONS)]
    received = [0]
    works: dict[str, Work] = {"changing": increment, "reading": read}
    cases: dict[str, Case] = {"context": _cpu(app, environs, nothing)}
    for name, work in works.items():
        cases[f"{name}, nobody listening"] = _cpu(app, environs, work)
        cases[f"{name}, a receiver"] = _listened(app, _cpu(app, environs, work), received)
    return interleave(cases, rounds=rounds, batch=batch), received[0]


def send_cost(number: int = 200_000) -> float:
    """Seconds per signal sent to one no-op receiver, as the interface sends
    ``session_saved`` (the fingerprint computed, the app looked up), best of 5."""
    app = Flask("bench_signals")
    key = "session:" + "x" * 43

    def receiver(sender: Flask, **extra: Any) -> None:
        pass

    def once() -> None:
        send(signals.session_saved, fingerprint=fingerprint(key), written=True, size=100)

    with app.app_context(), signals.session_saved.connected_to(receiver, sender=app):
        return min(timeit.repeat(once, number=number)) / number


def check_cost(number: int = 2_000_000) -> float:
    """Seconds per ``if signal.receivers:`` with nobody listening (best of 5), minus the
    empty loop."""
    assert not signals.session_saved.receivers
    setup = "from flask_dill_session.signals import session_saved"
    checked = min(timeit.repeat("if session_saved.receivers: pass", setup, number=number))
    empty = min(timeit.repeat("pass", setup, number=number))
    return max(0.0, checked - empty) / number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.signals", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="independent runs (default 5)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args(argv)
    rounds, batch = (7, 200) if args.quick else (21, 500)
    us = 1e6
    added: dict[str, list[float]] = {"changing": [], "reading": []}
    with tempfile.TemporaryDirectory(prefix="fds-bench-signals-") as tmp:
        for index in range(args.runs):
            samples, received = measure(Path(tmp) / str(index), rounds=rounds, batch=batch)
            assert received > 0, "the receiver got nothing: the requests sent no signal"
            for name in ("changing", "reading"):
                quiet, heard = f"{name}, nobody listening", f"{name}, a receiver"
                own = samples.overhead(quiet, "context")
                pairs = zip(samples.per_round[heard], samples.per_round[quiet], strict=True)
                extra = [a - b for a, b in pairs]
                added[name].append(statistics.median(extra))
                print(
                    f"run {index + 1}: {name} request {own * us:.1f} µs with nobody listening;"
                    f" a receiver adds {added[name][-1] * us:+.2f} µs (median of {rounds}"
                    f" rounds, which range {min(extra) * us:+.2f} to {max(extra) * us:+.2f})",
                    flush=True,
                )
        for name, values in added.items():
            middle = statistics.median(values)
            print(
                f"{name} request, a receiver adds: median of runs {middle * us:+.2f} µs,"
                f" runs {min(values) * us:+.2f} to {max(values) * us:+.2f} µs"
            )
        print(f"one signal sent to a no-op receiver: {send_cost() * us:.2f} µs")
        print(f"one check with nobody listening: {check_cost() * 1e9:.1f} ns")
        print(f"Machine: {machine(Path(tmp))}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
