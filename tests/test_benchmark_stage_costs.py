"""`benchmarks/stage_costs.py --smoke` (each stage's cost in a cold `dvc repro`, start-up and imports apart) runs
on tiny data in CI, so the figures the docs quote from it cannot silently rot."""

from __future__ import annotations

import pytest
from tiny_project import benchmark_smoke

pytestmark = pytest.mark.slow


def test_stage_costs_benchmark_smoke_prints_its_table() -> None:
    benchmark_smoke("stage_costs.py")
