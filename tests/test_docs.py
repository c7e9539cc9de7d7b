"""The docs cannot drift from the code: every config key with its default, every
Flask-Session key, every public name, and the charts' figures."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
from flask_session.defaults import Defaults

import flask_dill_session
from flask_dill_session.config import DEFAULTS, KEYS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results.json"
#: Keys whose default is computed or absent: the page says so in words.
UNWRITTEN_DEFAULTS = {"SECRET_KEY", "SESSION_FILE_DIR"}
_ENTRY = re.compile(r"^\.\. py:data:: (\w+)\n(.*?)(?=^\.\. |^\S|\Z)", re.M | re.S)
_DEFAULT = re.compile(r"^\s+Default: (.*)$", re.M)


def entries(page: str) -> dict[str, str]:
    """``.. py:data::`` name -> the text of its entry, on a page of the docs."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return {match.group(1): match.group(2) for match in _ENTRY.finditer(text)}


def written_default(entry: str) -> str:
    """The entry's ``Default:`` line, without the label."""
    match = _DEFAULT.search(entry)
    assert match is not None, entry
    return match.group(1)


def literal(text: str) -> Any:
    """The Python literal at the start of a ``Default:`` line: ````10`` (seconds)``."""
    match = re.match(r"``(.+?)``", text)
    assert match is not None, text
    value = ast.literal_eval(match.group(1))
    return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize("key", sorted(KEYS))
def test_configuration_page_documents_every_key_with_its_default(key: str) -> None:
    documented = entries("configuration.rst")
    assert key in documented, f"docs/configuration.rst has no '.. py:data:: {key}'"
    default = written_default(documented[key])
    if key in UNWRITTEN_DEFAULTS:
        return
    field = KEYS[key][0]
    actual = getattr(DEFAULTS, field)
    assert literal(default) == (dict(actual) if isinstance(actual, dict) else actual), (
        f"{key}: the docs say {default}, flask_dill_session.config.DEFAULTS.{field} is {actual!r}"
    )


def test_configuration_page_documents_the_keys_read_outside_the_table() -> None:
    documented = entries("configuration.rst")
    for key in ("SESSION_TYPE", "SESSION_REDIS", "SESSION_CACHELIB", "PERMANENT_SESSION_LIFETIME"):
        assert key in documented, key


def test_migration_page_has_every_flask_session_key() -> None:
    text = (DOCS / "flask-session.rst").read_text(encoding="utf-8")
    keys = [name for name in vars(Defaults) if name.startswith("SESSION_")]
    assert keys
    missing = [key for key in keys if f"``{key}``" not in text]
    assert not missing, f"docs/flask-session.rst does not cover {missing}"


def test_api_page_names_every_public_name() -> None:
    text = (DOCS / "api.rst").read_text(encoding="utf-8")
    missing = [name for name in flask_dill_session.__all__ if not re.search(rf"\b{name}\b", text)]
    assert not missing, f"docs/api.rst does not document {missing}"


def test_recorded_results_hold_what_the_charts_draw() -> None:
    results = json.loads(RESULTS.read_text(encoding="utf-8"))
    measures = {row["measure"]: row for row in results["rows"]}
    for measure in ("requests.changing", "requests.reading", "scale.changing", "throughput"):
        assert measure in measures, measure
        assert measures[measure]["values"], measure
    assert results["machine"]


def test_plot_draws_the_recorded_results(tmp_path: Path) -> None:
    from benchmarks import plot

    written = plot.draw(RESULTS, tmp_path)
    assert [path.name for path in written] == list(plot.CHARTS)
    for path in written:
        assert path.read_bytes().startswith(b"\x89PNG"), path
        assert (DOCS / "_static" / path.name).is_file(), f"docs/_static/{path.name} is missing"
