"""Charts of the recorded benchmark figures: ``python -m benchmarks.run --plot``.

Reads the results file a full run writes (``benchmarks/results.json``) and draws three
PNG files for the docs; it runs no benchmark. Needs matplotlib (the ``docs`` extra),
imported here only.

- ``per-request.png``: the session's cost per request, ours against Flask-Session with
  cachelib's ``FileSystemCache`` and Flask's cookie session (rows 2, 3 and 7);
- ``scale.png``: the cost of a request that changes the session against the number of
  sessions in the store (row 5);
- ``throughput.png``: requests per second of the counter app under gunicorn (row 6).
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure  # no pyplot: no global state, no display

#: The contestants of the per-request chart: key in the results, label, colour.
PEERS = (
    ("ours", "flask_dill_session (filesystem)", "#2c6e9b"),
    ("cachelib", "Flask-Session + cachelib FileSystemCache", "#c8702a"),
    ("cookie", "Flask cookie session", "#7f7f7f"),
)
#: The per-request measures, in the order drawn, with their labels.
REQUESTS = (
    ("requests.changing", "changes the session\n(64 sessions in turn)"),
    ("requests.reading", "reads the session\n(64 sessions in turn)"),
    ("requests.one_session", "changes the session\n(one session back to back)"),
    ("login", "Flask-Login, logged in,\nchanges nothing"),
)
_COUNT = re.compile(r"(\d+(?:\.\d+)?)([kM]?)")
_SCALE = {"": 1, "k": 1_000, "M": 1_000_000}
_PNG = {"Software": None}  # no version string in the files: the same figures, the same bytes


class ResultsError(ValueError):
    """The results file is missing something a chart needs."""


@dataclass(frozen=True)
class Results:
    """The figures of one recorded run, by measure (rows of one measure merged)."""

    machine: str
    command: str
    measures: dict[str, dict[str, float]]
    units: dict[str, str]

    def values(self, measure: str, unit: str) -> dict[str, float]:
        """The figures of *measure*, checked to be in *unit*; empty if not measured."""
        found = self.measures.get(measure, {})
        if found and self.units.get(measure) != unit:
            raise ResultsError(f"{measure}: expected {unit}, found {self.units.get(measure)}")
        return found


def load(path: Path) -> Results:
    """Read the results file at *path*."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != 1:
        raise ResultsError(f"{path}: unknown format {data.get('format')!r}")
    measures: dict[str, dict[str, float]] = {}
    units: dict[str, str] = {}
    for row in data["rows"]:
        measure = row.get("measure")
        if not measure:
            continue
        values = measures.setdefault(measure, {})
        for name, value in row["values"].items():
            values[name] = float(value)
        units[measure] = row["unit"]
    return Results(data["machine"], data["command"], measures, units)


def count(label: str) -> int:
    """The number of sessions a store-size label names: ``"100k"`` is 100000."""
    match = _COUNT.fullmatch(label)
    if match is None:
        raise ResultsError(f"not a number of sessions: {label!r}")
    return round(float(match.group(1)) * _SCALE[match.group(2)])


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots()
    axes.spines[["top", "right"]].set_visible(False)
    axes.set_axisbelow(True)
    return figure, axes


def _footnote(figure: Figure, results: Results) -> None:
    """The machine the figures were measured on, under the chart."""
    text = textwrap.fill(results.machine, 130)
    figure.supxlabel(text, fontsize=6.5, color="#555555", x=0.01, ha="left")


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=150, metadata=_PNG)
    return path


def per_request(results: Results, path: Path) -> Path:
    """Grouped bars: µs of session work per request, ours and each peer."""
    groups = [(label, results.values(measure, "us")) for measure, label in REQUESTS]
    groups = [(label, values) for label, values in groups if values]
    if not groups:
        raise ResultsError("no per-request figures (rows 2, 3 or 7)")
    figure, axes = _figure(8.0, 4.2)
    width = 0.8 / len(PEERS)
    for index, (key, label, colour) in enumerate(PEERS):
        xs = [group + (index - 1) * width for group, (_, values) in enumerate(groups)]
        heights = [values.get(key, 0.0) for _, values in groups]
        bars = axes.bar(xs, heights, width, label=label, color=colour)
        axes.bar_label(bars, labels=[f"{h:.0f}" if h else "" for h in heights], fontsize=7)
    axes.set_xticks(range(len(groups)), [label for label, _ in groups], fontsize=8)
    axes.set_ylim(0, max(max(values.values()) for _, values in groups) * 1.3)
    axes.set_ylabel("session work per request (µs, lower is better)")
    axes.set_title("Cost per request against the peers", fontsize=10)
    axes.grid(axis="y", color="#dddddd")
    axes.legend(fontsize=8, frameon=False, loc="upper right")
    _footnote(figure, results)
    return _save(figure, path)


def scale(results: Results, path: Path) -> Path:
    """Points on a log axis: µs per changing request against stored sessions."""
    values = results.values("scale.changing", "us")
    if not values:
        raise ResultsError("no scale figures (row 5)")
    points = sorted((count(label), label, cost) for label, cost in values.items())
    figure, axes = _figure(6.0, 3.6)
    xs = [stored for stored, _, _ in points]
    ys = [cost for _, _, cost in points]
    axes.plot(xs, ys, marker="o", color=PEERS[0][2])
    for stored, _, cost in points:
        axes.annotate(
            f"{cost:.0f} µs", (stored, cost), textcoords="offset points", xytext=(0, 8), fontsize=8
        )
    axes.set_xscale("log")
    axes.set_xticks(xs, [label for _, label, _ in points])
    axes.minorticks_off()
    axes.set_xlim(min(xs) / 3, max(xs) * 3)
    axes.set_ylim(0, max(ys) * 1.4)
    axes.set_xlabel("sessions in the store (filesystem)")
    axes.set_ylabel("session work per request (µs)")
    axes.set_title("Cost of a request that changes the session, by store size", fontsize=10)
    axes.grid(axis="y", color="#dddddd")
    _footnote(figure, results)
    return _save(figure, path)


def throughput(results: Results, path: Path) -> Path:
    """Horizontal bars: requests per second of the counter app."""
    values = results.values("throughput", "req/s")
    if not values:
        raise ResultsError("no throughput figures (row 6)")
    names = [name for name in values if name != "cookie"]
    if "cookie" in values:
        names.insert(0, "cookie")
    labels = {name: name.replace("ours", "flask_dill_session") for name in names}
    labels["cookie"] = "Flask cookie session"
    colours = [PEERS[2][2] if name == "cookie" else PEERS[0][2] for name in names]
    figure, axes = _figure(6.5, 0.9 + 0.55 * len(names))
    rates = [values[name] for name in names]
    bars = axes.barh(range(len(names)), rates, color=colours)
    axes.bar_label(bars, labels=[f"{rate:.0f}" for rate in rates], fontsize=8, padding=3)
    axes.set_yticks(range(len(names)), [labels[name] for name in names], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, max(rates) * 1.15)
    axes.set_xlabel("requests per second (higher is better)")
    axes.set_title("Counter app, gunicorn 2 workers, wrk on loopback", fontsize=10)
    axes.grid(axis="x", color="#dddddd")
    _footnote(figure, results)
    return _save(figure, path)


CHARTS = {"per-request.png": per_request, "scale.png": scale, "throughput.png": throughput}


def draw(source: Path, directory: Path, names: Iterable[str] = CHARTS) -> list[Path]:
    """Draw the charts *names* (all by default) of the results file *source* into
    *directory*; the paths written."""
    results = load(source)
    directory.mkdir(parents=True, exist_ok=True)
    return [CHARTS[name](results, directory / name) for name in names]
