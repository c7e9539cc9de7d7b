"""Section 1: the codec against C ``pickle`` (plain data) and raw ``dill`` (a lambda), and
the envelope's cost with and without encryption."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import dill

from flask_dill_session import serializer
from flask_dill_session.envelope import PERMANENT, Envelope, Opened
from flask_dill_session.loader import Loader

from .harness import Samples, interleave, timed

#: A small plain session, as the counter example keeps it.
PLAIN: dict[str, Any] = {
    "x": 41,
    "started": datetime(2024, 5, 17, 9, 30, 12),
    "user": "alice",
    "cart": ["apple", "pear"],
}

#: A session holding a lambda, which only dill can keep.
WITH_LAMBDA: dict[str, Any] = {"x": 41, "price": lambda item: len(item) * 1.2}


@dataclass
class Item:
    """An application object: C pickle stores it by name; the write-time check loads it."""

    name: str
    quantity: int
    tags: list[str] = field(default_factory=list)


#: A session holding application objects, which the fast path cannot vouch for.
WITH_OBJECTS: dict[str, Any] = {"x": 41, "cart": [Item("pen", 2, ["blue"]), Item("ink", 1)]}

LOADER = Loader()


def ours(data: dict[str, Any]) -> dict[str, Any]:
    """The codec's dumps and loads (what every request that uses the session does)."""
    return LOADER.load(serializer.dumps(data)).data


def ours_writing(data: dict[str, Any], *, check: bool = True) -> dict[str, Any]:
    """A changing request: dumps, the write-time check (a scan, and a trial load of what it
    cannot vouch for), and the next request's load."""
    payload, vouched = serializer.stored(serializer.dumps(data))
    if check and not vouched:
        LOADER.load_strict(payload)
    return LOADER.load(payload).data


#: Envelope payloads: the small plain session as stored, and 10 KiB.
PAYLOADS = {"small": serializer.dumps(PLAIN), "10k": bytes(range(256)) * 40}


def measure(*, rounds: int, batch: int | Mapping[str, int]) -> Samples:
    return interleave(
        {
            "ours plain": timed(lambda: ours(PLAIN)),
            "ours plain writing": timed(lambda: ours_writing(PLAIN)),
            "pickle plain": timed(
                lambda: pickle.loads(pickle.dumps(PLAIN, pickle.HIGHEST_PROTOCOL))
            ),
            "ours lambda": timed(lambda: ours_writing(WITH_LAMBDA)),
            "ours objects": timed(lambda: ours_writing(WITH_OBJECTS)),
            "ours objects unchecked": timed(lambda: ours_writing(WITH_OBJECTS, check=False)),
            "dill lambda": timed(lambda: dill.loads(dill.dumps(WITH_LAMBDA))),
            # what ours does for code: only the globals the code refers to (recurse=True)
            "dill recurse lambda": timed(
                lambda: dill.loads(dill.dumps(WITH_LAMBDA, pickle.HIGHEST_PROTOCOL, recurse=True))
            ),
        },
        rounds=rounds,
        batch=batch,
    )


def measure_envelope(*, rounds: int, batch: int | Mapping[str, int]) -> Samples:
    """``seal`` then ``open`` of each of :data:`PAYLOADS`, signed and encrypted."""

    def round_trip(envelope: Envelope, payload: bytes) -> Callable[[], object]:
        key = "session:0123456789abcdef"

        def run() -> Opened:
            blob = envelope.seal(key, payload, flags=PERMANENT, created=1.7e9, expires=1.8e9)
            return envelope.open(key, blob)

        return run

    cases = {}
    for kind, encrypt in (("signed", False), ("encrypted", True)):
        envelope = Envelope("benchmark-secret", encrypt=encrypt)
        for size, payload in PAYLOADS.items():
            cases[f"{kind} {size}"] = timed(round_trip(envelope, payload))
    return interleave(cases, rounds=rounds, batch=batch)
