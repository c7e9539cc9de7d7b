"""Interleaved measurement: rounds of A B C ..., medians of per-round ratios.

On a shared, noisy machine an absolute time means little, but two things measured a few
milliseconds apart see the same noise. So every case runs one batch per round, the order
rotates from round to round, and each ratio is taken within a round before the median is
taken over the rounds.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

#: A case: run the measured operation *n* times, return the seconds it took in total
#: (a case may leave its own setup out of the time it returns).
Case = Callable[[int], float]


@dataclass
class Samples:
    """Seconds per operation of each case, one value per round."""

    per_round: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.per_round[name])

    def ratio(
        self,
        top: str,
        bottom: str,
        *,
        top_minus: str | None = None,
        bottom_minus: str | None = None,
    ) -> float:
        """Median over rounds of ``(top - top_minus) / (bottom - bottom_minus)``."""
        ratios = []
        for index, value in enumerate(self.per_round[top]):
            numerator = value - (self.per_round[top_minus][index] if top_minus else 0.0)
            denominator = self.per_round[bottom][index] - (
                self.per_round[bottom_minus][index] if bottom_minus else 0.0
            )
            if denominator > 0:
                ratios.append(numerator / denominator)
        return statistics.median(ratios) if ratios else float("nan")

    def overhead(self, name: str, minus: str) -> float:
        """Median over rounds of ``name - minus`` (seconds per operation)."""
        pairs = zip(self.per_round[name], self.per_round[minus], strict=True)
        return statistics.median(a - b for a, b in pairs)


def interleave(
    cases: Mapping[str, Case], *, rounds: int, batch: int | Mapping[str, int], warmup: int = 1
) -> Samples:
    """Run every case *batch* times per round (or ``batch[name]`` times), the order rotating;
    the warm-up rounds are dropped."""
    names: Sequence[str] = list(cases)
    sizes = {name: batch if isinstance(batch, int) else batch[name] for name in names}
    samples = Samples({name: [] for name in names})
    for index in range(warmup + rounds):
        shift = index % len(names)
        order = [*names[shift:], *names[:shift]]
        if index % 2:
            order.reverse()
        for name in order:
            gc.collect()
            seconds = cases[name](sizes[name])
            if index >= warmup:
                samples.per_round[name].append(seconds / sizes[name])
    return samples


def timed(operation: Callable[[], object]) -> Case:
    """A case that times *operation* alone, *n* times in a row."""

    def run(n: int) -> float:
        clock = time.perf_counter
        started = clock()
        for _ in range(n):
            operation()
        return clock() - started

    return run
