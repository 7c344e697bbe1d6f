"""`benchmarks/large_data.py --smoke` (per stage rows/s, wall time and peak memory as the rows grow) runs on tiny
data in CI, so the figures the docs quote from it cannot silently rot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tiny_project import benchmark_smoke

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from large_data import growth


@pytest.mark.slow
def test_large_data_benchmark_smoke_prints_its_table() -> None:
    benchmark_smoke("large_data.py")


def run(rows: int, seconds: float) -> dict:
    return {"rows": rows, "costs": {"stage": (seconds, 100.0)}}


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([run(1000, 10), run(2000, 15), run(20000, 105)], "1.00"),  # uneven steps, 5 ms a row throughout
        ([run(2000, 10), run(11000, 55), run(20000, 100)], "1.00"),  # even steps
        ([run(1000, 10), run(2000, 15), run(20000, 195)], "2.00"),  # a row costs twice as much later on
        ([run(1000, 40.0), run(2000, 40.5), run(20000, 41.0)], "flat"),  # a fixed cost, not per row
        ([run(1000, 10), run(20000, 105)], "-"),  # two runs cannot tell a fixed cost from a per-row one
    ],
)
def test_growth_compares_what_a_row_cost_in_each_step(results: list[dict], expected: str) -> None:
    assert growth(results, "stage") == expected
