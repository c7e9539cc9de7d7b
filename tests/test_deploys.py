"""Deploys that change classes: one process (version 1) writes, another (version 2) reads.

Never a 500, the login key always survives, exactly one warning per dropped key, and the
original blob is kept in quarantine whenever a key is dropped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .support import ROOT, run_deploy_app

V1 = """
from dataclasses import dataclass

class Cart:
    def __init__(self, items):
        self.items = list(items)

    def count(self):
        return len(self.items)

@dataclass
class Line:
    sku: str
"""

LINE = """
@dataclass
class Line:
    sku: str
"""

CART = """
class Cart:
    def __init__(self, items):
        self.items = list(items)

    def count(self):
        return len(self.items)
"""

RENAMED = "from dataclasses import dataclass\n" + CART.replace("Cart", "Basket") + LINE
REMOVED = "from dataclasses import dataclass\n" + LINE
FIELD_WITH_DEFAULT = (
    "from dataclasses import dataclass, field\n"
    + CART
    + LINE
    + "    tags: list = field(default_factory=list)\n"
)
FIELD_WITHOUT_DEFAULT = "from dataclasses import dataclass\n" + CART + LINE + "    qty: int\n"
FIELD_RENAMED = "from dataclasses import dataclass\n" + CART + LINE.replace("sku", "code")


def deploy(tmp_path: Path, v2: str, v1_env: dict[str, str] | None = None, **v2_env: str) -> Any:
    """Log in under version 1, read under version 2 twice; the reads' answers and logs."""
    store = str(tmp_path / "sessions")
    sid, warnings = run_deploy_app(tmp_path, V1, "login", store, **(v1_env or {}))
    assert warnings == []
    first, warnings = run_deploy_app(tmp_path, v2, "show", store, sid, **v2_env)
    second, again = run_deploy_app(tmp_path, v2, "show", store, sid, **v2_env)
    shown = json.loads(first)
    assert shown["status"] == 200
    assert json.loads(second) == shown, "the second request sees what the first saw"
    assert again == [], "the session was saved without the dropped keys: no more warnings"
    assert shown["body"]["user_id"] == 42, "the login survives"
    quarantined = list((tmp_path / "sessions" / "quarantine").glob("*"))
    return shown["body"], warnings, quarantined


def _dropped(warnings: list[str], key: str) -> list[str]:
    return [line for line in warnings if f"key {key!r} dropped" in line]


def test_a_renamed_class_drops_only_its_key(tmp_path: Path) -> None:
    body, warnings, quarantined = deploy(tmp_path, RENAMED)
    assert body["cart"] is None and body["line"] == {"sku": "p-1"}
    assert len(warnings) == 1 and len(_dropped(warnings, "cart")) == 1
    assert "shop.Cart" in warnings[0] and "no longer defines Cart" in warnings[0]
    assert len(quarantined) == 1


def test_a_rename_listed_in_session_dill_renames_keeps_the_object(tmp_path: Path) -> None:
    body, warnings, quarantined = deploy(
        tmp_path, RENAMED, FDS_RENAMES=json.dumps({"shop.Cart": "shop.Basket"})
    )
    assert body["cart"] == ["Basket", ["apple"], 1]
    assert warnings == [] and quarantined == []


def test_a_removed_class_drops_only_its_key(tmp_path: Path) -> None:
    body, warnings, quarantined = deploy(tmp_path, REMOVED)
    assert body["cart"] is None and body["line"] == {"sku": "p-1"}
    assert len(_dropped(warnings, "cart")) == 1 and len(warnings) == 1
    assert len(quarantined) == 1


def test_a_dataclass_field_added_with_a_default_gets_it(tmp_path: Path) -> None:
    body, warnings, quarantined = deploy(tmp_path, FIELD_WITH_DEFAULT)
    assert body["line"] == {"sku": "p-1", "tags": []}
    assert body["cart"] == ["Cart", ["apple"], 1]
    assert warnings == [] and quarantined == []


@pytest.mark.parametrize(
    "v2", [FIELD_WITHOUT_DEFAULT, FIELD_RENAMED], ids=["no-default", "renamed"]
)
def test_a_dataclass_that_no_longer_fits_drops_its_key(tmp_path: Path, v2: str) -> None:
    body, warnings, quarantined = deploy(tmp_path, v2)
    assert body["line"] is None and body["cart"] == ["Cart", ["apple"], 1]
    assert len(_dropped(warnings, "line")) == 1 and len(warnings) == 1
    assert len(quarantined) == 1


def test_a_new_version_without_a_migrator_keeps_only_plain_data(tmp_path: Path) -> None:
    body, warnings, quarantined = deploy(tmp_path, V1, {"FDS_VERSION": "1"}, FDS_VERSION="2")
    assert body == {"user_id": 42, "cart": None, "line": None}
    assert len(_dropped(warnings, "cart")) == 1 and len(_dropped(warnings, "line")) == 1
    assert len(warnings) == 2 and "version '1'" in warnings[0]
    assert len(quarantined) == 1


def test_a_new_version_with_a_migrator_is_migrated_once(tmp_path: Path) -> None:
    body, warnings, quarantined = deploy(
        tmp_path, V1, {"FDS_VERSION": "1"}, FDS_VERSION="2", FDS_MIGRATE="1"
    )
    assert body["cart"] == ["Cart", ["apple", "migrated from 1"], 2]
    assert body["line"] == {"sku": "p-1"}
    assert warnings == [] and quarantined == []


def test_a_failing_migrator_keeps_plain_data_and_says_why(tmp_path: Path) -> None:
    body, warnings, quarantined = deploy(
        tmp_path, V1, {"FDS_VERSION": "1"}, FDS_VERSION="2", FDS_MIGRATE="fail"
    )
    assert body == {"user_id": 42, "cart": None, "line": None}  # not half migrated
    assert len(warnings) == 3 and "LookupError" in warnings[0]
    assert len(_dropped(warnings, "cart")) == 1 and len(_dropped(warnings, "line")) == 1
    assert len(quarantined) == 1


def test_the_same_version_is_not_migrated(tmp_path: Path) -> None:
    body, warnings, _ = deploy(tmp_path, V1, {"FDS_VERSION": "1"}, FDS_VERSION="1", FDS_MIGRATE="1")
    assert body["cart"] == ["Cart", ["apple"], 1]
    assert warnings == []


# -- refused at write time: what would not load back, what is bound to this process ------


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("hash_cycle", "session['hash_cycle']"),
        ("kwonly_error", "session['kwonly_error']: RefusedError"),
        ("upload", "session['upload']: FileStorage"),
    ],
)
def test_a_value_that_would_not_load_back_is_refused_and_the_session_kept(
    tmp_path: Path, kind: str, message: str
) -> None:
    store = str(tmp_path / "sessions")
    sid, _ = run_deploy_app(tmp_path, V1, "login", store)
    before = {path: path.read_bytes() for path in Path(store).rglob("*") if path.is_file()}
    out, _ = run_deploy_app(tmp_path, V1, "store", store, kind, sid)
    refused = json.loads(out)
    assert refused["status"] == 500
    assert message in refused["body"]["error"]
    after = {path: path.read_bytes() for path in Path(store).rglob("*") if path.is_file()}
    assert after == before  # nothing written
    shown, warnings = run_deploy_app(tmp_path, V1, "show", store, sid)
    assert json.loads(shown)["body"]["user_id"] == 42 and warnings == []


# -- the app's own module, run as a script or imported --------------------------------------

_MAIN_RUNS = {
    "script": [sys.executable, "-m", "tests.apps.main_app"],
    "imported": [sys.executable, "-c", "from tests.apps.main_app import main; main()"],
}


@pytest.mark.parametrize("reader", sorted(_MAIN_RUNS))
@pytest.mark.parametrize("writer", sorted(_MAIN_RUNS))
def test_objects_load_as_the_running_apps_own_classes(
    tmp_path: Path, writer: str, reader: str
) -> None:
    def run(argv: list[str]) -> str:
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "flask_dill_session" not in result.stderr, result.stderr
        return result.stdout.strip()

    store = str(tmp_path / "sessions")
    sid = run([*_MAIN_RUNS[writer], "write", store])
    checked = json.loads(run([*_MAIN_RUNS[reader], "check", store, sid]))
    assert checked == dict.fromkeys(checked, True) and len(checked) == 6
