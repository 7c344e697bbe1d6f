"""thaw.intervals: t-intervals over seeds, Wilson intervals for one seed, and overlap with the best."""

from __future__ import annotations

import pytest

from thaw.intervals import Interval, accuracy_interval, indistinguishable, t_interval, wilson_interval


def test_t_interval_of_five_seeds() -> None:
    interval = t_interval([0.90, 0.92, 0.94, 0.96, 0.98])
    assert interval.mean == pytest.approx(0.94)
    # sd = 0.0316, t(0.975, 4) = 2.776: half-width 0.0393
    assert interval.high - interval.mean == pytest.approx(0.03926, abs=1e-4)
    assert interval.mean - interval.low == pytest.approx(interval.high - interval.mean)
    with pytest.raises(ValueError, match="two or more values"):
        t_interval([0.9])


def test_wilson_interval_of_one_accuracy() -> None:
    interval = wilson_interval(0.94, 200)  # 188 of 200 test rows
    assert (interval.low, interval.high) == pytest.approx((0.8981, 0.9653), abs=1e-4)
    assert interval.mean == 0.94
    perfect = wilson_interval(1.0, 20)
    assert perfect.high == 1.0 and perfect.low == pytest.approx(0.8389, abs=1e-4)  # never a zero-width claim
    with pytest.raises(ValueError):
        wilson_interval(0.5, 0)


def test_accuracy_interval_uses_seeds_then_rows() -> None:
    assert accuracy_interval([0.9, 0.95], rows=200) == t_interval([0.9, 0.95])
    assert accuracy_interval([0.9], rows=200) == wilson_interval(0.9, 200)
    assert accuracy_interval([0.9], rows=None) is None
    assert accuracy_interval([], rows=200) is None


def test_overlap_marks_indistinguishable_cells() -> None:
    best = Interval(0.95, 0.93, 0.97)
    assert indistinguishable(best, Interval(0.92, 0.90, 0.94))
    assert not indistinguishable(best, Interval(0.85, 0.80, 0.90))
    assert not indistinguishable(best, None) and not indistinguishable(None, best)
    assert str(best) == "0.950 [0.930, 0.970]"
