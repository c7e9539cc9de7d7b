"""The session signals exported as Prometheus metrics, served on ``/metrics``.

Run:  pip install -e . prometheus_client && python examples/metrics.py
      (serves http://127.0.0.1:5000: open /count, /login/alice, /logout, then /metrics)

Every ``FLASK_*`` environment variable overrides the config of the same name, e.g.
``FLASK_SESSION_FILE_DIR=/some/dir``; without ``FLASK_SECRET_KEY`` a random secret is made
at start, so sessions do not outlive the process. ``PORT`` chooses the port.

Metrics, one counter per signal and a histogram of lock waits (label values are created
at 0, so every series exists from the start):

- ``flask_dill_session_sessions_created_total``
- ``flask_dill_session_sessions_saved_total{written="true"|"false"}``
- ``flask_dill_session_sessions_destroyed_total{reason="destroy"|"emptied"}``
- ``flask_dill_session_sessions_regenerated_total``
- ``flask_dill_session_sessions_quarantined_total{copy="false"|"true"}``
- ``flask_dill_session_lock_wait_seconds`` (histogram)
- ``flask_dill_session_lock_timeouts_total``
- ``flask_dill_session_store_unavailable_total{saving="false"|"true"}``

Each process counts its own requests: under gunicorn with several workers, use
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) to add them up.
"""

from __future__ import annotations

import os
import secrets
from typing import Any, cast

from flask import Flask, Response, session
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from flask_dill_session import DillSession, DillSessionInterface, Session, signals

PREFIX = "flask_dill_session_"
#: Seconds; a wait is for another request of the same session to end.
LOCK_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def export_metrics(app: Flask, registry: CollectorRegistry) -> None:
    """Count *app*'s session signals in *registry*."""

    def counter(name: str, doc: str, labels: dict[str, tuple[str, ...]] | None = None) -> Counter:
        metric = Counter(PREFIX + name, doc, list(labels or ()), registry=registry)
        for label, values in (labels or {}).items():
            for value in values:
                metric.labels(**{label: value})  # the series exists at 0
        return metric

    created = counter("sessions_created", "Sessions stored for the first time.")
    saved = counter(
        "sessions_saved",
        "Used sessions kept at the end of a request (written, or only refreshed).",
        {"written": ("true", "false")},
    )
    destroyed = counter(
        "sessions_destroyed",
        "Stored sessions deleted by destroy() or because the view emptied them.",
        {"reason": ("destroy", "emptied")},
    )
    regenerated = counter("sessions_regenerated", "Sessions given a new id by regenerate().")
    quarantined = counter(
        "sessions_quarantined",
        "Blobs put in quarantine: unusable sessions moved, or copies kept when keys dropped.",
        {"copy": ("false", "true")},
    )
    lock_waits = Histogram(
        PREFIX + "lock_wait_seconds",
        "Seconds requests waited for their session's lock while another request held it.",
        buckets=LOCK_WAIT_BUCKETS,
        registry=registry,
    )
    lock_timeouts = counter("lock_timeouts", "Requests that gave up waiting for the lock (503).")
    unavailable = counter(
        "store_unavailable",
        "Store failures met by requests (mostly answered 503).",
        {"saving": ("false", "true")},
    )

    # One receiver per signal, for this app only. Held strongly (weak=False): blinker keeps
    # weak references by default, and these functions would be gone when this one returns.
    def on_created(sender: Flask, **extra: Any) -> None:
        created.inc()

    def on_saved(sender: Flask, *, written: bool, **extra: Any) -> None:
        saved.labels(written=_flag(written)).inc()

    def on_destroyed(sender: Flask, *, reason: str, **extra: Any) -> None:
        destroyed.labels(reason=reason).inc()

    def on_regenerated(sender: Flask, **extra: Any) -> None:
        regenerated.inc()

    def on_quarantined(sender: Flask, *, copy: bool, **extra: Any) -> None:
        quarantined.labels(copy=_flag(copy)).inc()

    def on_lock_waited(sender: Flask, *, wait: float, **extra: Any) -> None:
        lock_waits.observe(wait)

    def on_lock_timeout(sender: Flask, **extra: Any) -> None:
        lock_timeouts.inc()

    def on_store_unavailable(sender: Flask, *, saving: bool, **extra: Any) -> None:
        unavailable.labels(saving=_flag(saving)).inc()

    signals.session_created.connect(on_created, app, weak=False)
    signals.session_saved.connect(on_saved, app, weak=False)
    signals.session_destroyed.connect(on_destroyed, app, weak=False)
    signals.session_regenerated.connect(on_regenerated, app, weak=False)
    signals.session_quarantined.connect(on_quarantined, app, weak=False)
    signals.lock_waited.connect(on_lock_waited, app, weak=False)
    signals.lock_timeout.connect(on_lock_timeout, app, weak=False)
    signals.store_unavailable.connect(on_store_unavailable, app, weak=False)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SESSION_TYPE"] = "dill"
    app.config.from_prefixed_env()
    app.config["SECRET_KEY"] = app.config.get("SECRET_KEY") or secrets.token_hex(32)
    Session(app)
    interface = app.session_interface
    assert isinstance(interface, DillSessionInterface)
    registry = CollectorRegistry()
    export_metrics(app, registry)

    def current() -> DillSession:
        return cast(DillSession, session)  # flask.session stands for our DillSession

    @app.get("/count")
    def count() -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    @app.get("/whoami")
    def whoami() -> str:
        return str(session.get("user", "nobody"))

    @app.get("/login/<name>")
    def login(name: str) -> str:
        interface.regenerate(current())  # a new id at login
        session["user"] = name
        return f"hello {name}"

    @app.get("/logout")
    def logout() -> str:
        interface.destroy(current())
        return "bye"

    @app.get("/health")
    def health() -> str:
        return "ok"  # never touches the session: no signal

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return app


app = create_app()

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
