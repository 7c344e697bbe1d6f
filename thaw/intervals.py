"""Uncertainty for comparing runs: 95 % intervals per sweep cell, and which cells are indistinguishable from
the best. Pure functions over plain numbers (no MLflow, no TensorFlow).

A cell is one (unfreeze.layers, finetune.lr) point of a sweep. Over several seeds its interval is the
t-interval of the seeds' mean; for a single seed it is the Wilson score interval of one accuracy measured
on `n` rows (binomial). Cells are ranked by validation accuracy, never by test accuracy, and a cell whose
validation interval overlaps the best cell's is marked as indistinguishable from it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def t_interval(values: Sequence[float]) -> Interval:
    """The mean of `values` (two or more seeds) and its 95 % t-interval."""
    from scipy import stats

    if len(values) < 2:
        raise ValueError(f"a t-interval needs two or more values, got {len(values)}")
    mean = statistics.fmean(values)
    half = float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half)


def wilson_interval(accuracy: float, rows: int) -> Interval:
    """The 95 % Wilson score interval of an accuracy measured on `rows` rows."""
    if rows < 1:
        raise ValueError(f"an accuracy needs at least one row, got {rows}")
    centre = (accuracy + Z95**2 / (2 * rows)) / (1 + Z95**2 / rows)
    half = Z95 / (1 + Z95**2 / rows) * math.sqrt(accuracy * (1 - accuracy) / rows + Z95**2 / (4 * rows**2))
    return Interval(accuracy, max(0.0, centre - half), min(1.0, centre + half))


def accuracy_interval(values: Sequence[float], rows: int | None) -> Interval | None:
    """Over seeds when there are several, else binomial on `rows`; None when neither can be had."""
    if len(values) >= 2:
        return t_interval(values)
    if len(values) == 1 and rows:
        return wilson_interval(values[0], rows)
    return None


def indistinguishable(best: Interval | None, other: Interval | None) -> bool:
    """Whether `other` cannot be told apart from `best` (their 95 % intervals overlap)."""
    return best is not None and other is not None and best.overlaps(other)
