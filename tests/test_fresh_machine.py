"""A newcomer's first minutes, for real: clone the repository, run the README's first
command, use the counter over HTTP in any order, stop it. Every step and its time are
printed (``pytest -s`` shows them) and checked."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .support import ROOT, Client, free_port, wait_for_port

FIRST_COMMAND = re.compile(r"```sh\n(python3 -m venv .venv && [^\n]*examples/counter\.py)\n```")


class Steps:
    """Runs named steps, printing each with the time it took."""

    def __init__(self) -> None:
        self.done: list[tuple[str, float]] = []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        took = time.monotonic() - started
        self.done.append((name, took))
        print(f"step: {name}: {took:.1f} s", flush=True)


@pytest.mark.slow
def test_a_fresh_clone_serves_the_counter_with_the_readme_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an unpacked sdist): there is nothing to clone")
    steps = Steps()
    clone = tmp_path / "clone"
    with steps.step("clone the repository"):
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    match = FIRST_COMMAND.search((clone / "README.md").read_text())
    assert match is not None, "the README's first command"
    port = free_port()
    # A newcomer's shell: not the test run's warnings-as-errors for the processes it starts.
    env = {name: value for name, value in os.environ.items() if name != "PYTHONWARNINGS"}
    log = tmp_path / "first-command.log"
    with steps.step("run the README's first command until it serves"), open(log, "wb") as out:
        server = subprocess.Popen(
            ["bash", "-c", match.group(1)],
            cwd=clone,
            env={**env, "PORT": str(port), "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_port(port, server, timeout=600)
        except Exception:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)
            raise AssertionError(log.read_text()) from None
    try:
        browser = Client(f"http://127.0.0.1:{port}")
        with steps.step("count before starting the counter"):
            answers = [browser.get("/count") for _ in range(2)]
            assert [(status, body.split("-")[0]) for status, body, _ in answers] == [
                (200, "1"),
                (200, "2"),
            ]
        with steps.step("start the counter, then count"):
            assert browser.get("/start_counter")[:2] == (200, "counter started")
            assert browser.get("/count")[1].split("-")[0] == "1"
        with steps.step("keep an object and a closure"):
            assert browser.get("/cart/add/apple")[:2] == (200, "1 items")
            assert browser.get("/cart")[:2] == (200, "apple = 6.00")
    finally:
        with steps.step("stop it"):
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
    assert (clone / "instance" / "secret_key").is_file(), "its secret, made once"
    assert any((clone / "instance" / "flask_dill_session").rglob("*")), "its sessions"

    printed = capsys.readouterr().out
    names = [name for name, _ in steps.done]
    assert names == [
        "clone the repository",
        "run the README's first command until it serves",
        "count before starting the counter",
        "start the counter, then count",
        "keep an object and a closure",
        "stop it",
    ]
    for name, took in steps.done:
        assert f"step: {name}: {took:.1f} s" in printed
    print(printed, end="")  # shown again with -s, now that it was checked
