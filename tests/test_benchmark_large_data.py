"""`benchmarks/large_data.py --smoke` (per stage rows/s, wall time and peak memory as the rows grow) runs on tiny
data in CI, so the figures the docs quote from it cannot silently rot."""

from __future__ import annotations

import pytest
from tiny_project import benchmark_smoke

pytestmark = pytest.mark.slow


def test_large_data_benchmark_smoke_prints_its_table() -> None:
    benchmark_smoke("large_data.py")
