"""Section 1: the codec against C ``pickle`` (plain data) and raw ``dill`` (a lambda), and
the envelope's cost with and without encryption."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import dill

from flask_dill_session import serializer
from flask_dill_session.envelope import PERMANENT, Envelope, Opened

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

#: Envelope payloads: the small plain session as stored, and 10 KiB.
PAYLOADS = {"small": serializer.dumps(PLAIN), "10k": bytes(range(256)) * 40}


def measure(*, rounds: int, batch: int | Mapping[str, int]) -> Samples:
    return interleave(
        {
            "ours plain": timed(lambda: serializer.loads(serializer.dumps(PLAIN))),
            "pickle plain": timed(
                lambda: pickle.loads(pickle.dumps(PLAIN, pickle.HIGHEST_PROTOCOL))
            ),
            "ours lambda": timed(lambda: serializer.loads(serializer.dumps(WITH_LAMBDA))),
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
