"""`benchmarks/sweep.py --smoke` (one sweep four ways: the floor, a dvc exp loop, an in-process Hydra multirun,
thaw sweep) runs on tiny data in CI, so the figures the docs quote from it cannot silently rot."""

from __future__ import annotations

import pytest
from tiny_project import benchmark_smoke

pytestmark = pytest.mark.slow


def test_sweep_benchmark_smoke_prints_its_table() -> None:
    benchmark_smoke("sweep.py")
