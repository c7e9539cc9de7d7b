"""The metrics example: every signal counted, in process; and through real HTTP, a server
process whose ``/metrics`` counts exactly the requests made to it."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from blinker import Signal
from prometheus_client.parser import text_string_to_metric_families

from flask_dill_session import LockTimeoutError, StoreUnavailableError, signals
from flask_dill_session.stores.filesystem import FileSystemStore

from .support import EXAMPLES, Client, example_env, serve_example

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
PREFIX = "flask_dill_session_"
#: The lock wait histogram's bucket bounds, as exposed.
BOUNDS = [*map(str, (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)), "+Inf"]
ALL = signals.ALL


def samples(text: str) -> Samples:
    """Our samples in a ``/metrics`` text: (name, labels) -> value; without the
    ``*_created`` timestamps prometheus_client adds to counters and histograms (no sample
    of ours ends so: ``sessions_created`` is ``sessions_created_total``)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(PREFIX) and not sample.name.endswith("_created"):
                found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


#: Every series the example exposes, each from the start: name -> its label sets.
SERIES: dict[str, list[tuple[tuple[str, str], ...]]] = {
    "sessions_created_total": [()],
    "sessions_saved_total": [(("written", "true"),), (("written", "false"),)],
    "sessions_destroyed_total": [(("reason", "destroy"),), (("reason", "emptied"),)],
    "sessions_regenerated_total": [()],
    "sessions_quarantined_total": [(("copy", "false"),), (("copy", "true"),)],
    "lock_timeouts_total": [()],
    "store_unavailable_total": [(("saving", "false"),), (("saving", "true"),)],
    "lock_wait_seconds_bucket": [(("le", bound),) for bound in BOUNDS],
    "lock_wait_seconds_count": [()],
    "lock_wait_seconds_sum": [()],
}


def expected(**changes: float) -> Samples:
    """Every series at 0, but for *changes*: by name, or by name and its one label as
    ``name__label__value``."""
    values = {(PREFIX + name, labels): 0.0 for name, series in SERIES.items() for labels in series}
    for key, value in changes.items():
        name, *pair = key.split("__")
        values[PREFIX + name, ((pair[0], pair[1]),) if pair else ()] = value
    return values


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch, session_dir: Path) -> Iterator[ModuleType]:
    """``examples/metrics.py`` imported with its config in ``FLASK_*`` variables; the
    receivers it connects are disconnected afterwards (signals are global, and other tests
    count on nobody listening)."""
    for name, value in example_env(session_dir).items():
        if name.startswith("FLASK_"):
            monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("metrics_example", EXAMPLES / "metrics.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    before = {signal: set(signal.receivers) for signal in ALL}
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        for signal in ALL:
            for key in set(signal.receivers) - before[signal]:
                signal.disconnect(signal.receivers[key])  # held strongly: the function
    assert all(not signal.receivers for signal in ALL)


def test_every_signal_is_counted(example: ModuleType) -> None:
    app = example.create_app()
    other = example.create_app()
    error = StoreUnavailableError("store unavailable: disk full", cause="disk full")
    sends: list[tuple[Signal, dict[str, Any]]] = [
        (signals.session_created, {"fingerprint": "f"}),
        (signals.session_saved, {"fingerprint": "f", "written": True, "size": 90}),
        (signals.session_saved, {"fingerprint": "f", "written": False, "size": None}),
        (signals.session_destroyed, {"fingerprint": "f", "reason": "emptied"}),
        (signals.session_regenerated, {"fingerprint": "g", "old_fingerprint": "f"}),
        (signals.session_quarantined, {"fingerprint": "f", "reason": "bad", "copy": True}),
        (signals.lock_waited, {"fingerprint": "f", "wait": 0.02}),
        (signals.lock_timeout, {"fingerprint": "f", "error": LockTimeoutError("busy")}),
        (signals.store_unavailable, {"fingerprint": None, "error": error, "saving": True}),
    ]
    for signal, arguments in sends:
        signal.send(app, **arguments)
    assert samples(app.test_client().get("/metrics").text) == expected(
        sessions_created_total=1,
        sessions_saved_total__written__true=1,
        sessions_saved_total__written__false=1,
        sessions_destroyed_total__reason__emptied=1,
        sessions_regenerated_total=1,
        sessions_quarantined_total__copy__true=1,
        lock_timeouts_total=1,
        store_unavailable_total__saving__true=1,
        **{f"lock_wait_seconds_bucket__le__{bound}": 1 for bound in BOUNDS[3:]},  # 0.025 up
        lock_wait_seconds_count=1,
        lock_wait_seconds_sum=0.02,
    )
    # Another app's metrics saw none of it.
    assert samples(other.test_client().get("/metrics").text) == expected()


@pytest.mark.slow
def test_the_example_counts_real_requests_over_http(tmp_path: Path, session_dir: Path) -> None:
    server = serve_example(tmp_path, example_env(session_dir), "metrics.py")
    try:
        alice, bob, carol = Client(server.url), Client(server.url), Client(server.url)
        assert [alice.get("/count")[1] for _ in range(2)] == ["1", "2"]
        assert alice.get("/whoami")[1] == "nobody"  # read only: refreshed, not written
        assert alice.get("/login/alice")[1] == "hello alice"  # a new id, no new session
        assert alice.get("/whoami")[1] == "alice"
        assert alice.get("/logout")[1] == "bye"
        assert bob.get("/count")[1] == "1"
        sid = bob.cookie()
        assert sid is not None
        path = Path(FileSystemStore(str(session_dir)).path("session:" + sid))
        path.write_bytes(b"not a session")  # damaged: quarantined at its next use
        assert bob.get("/count")[1] == "1"  # a fresh session
        assert bob.cookie() != sid
        status, body, _ = carol.get("/health")
        assert (status, body) == (200, "ok")
        status, text, headers = carol.get("/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=")
    finally:
        server.stop()
    assert samples(text) == expected(
        sessions_created_total=3,  # alice's first, bob's, bob's after the quarantine
        sessions_saved_total__written__true=5,  # 2 counts, login, bob's 2 counts
        sessions_saved_total__written__false=2,  # alice's two whoami
        sessions_destroyed_total__reason__destroy=1,
        sessions_regenerated_total=1,
        sessions_quarantined_total__copy__false=1,
    )
