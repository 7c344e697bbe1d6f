"""`benchmarks/ablation.py --smoke` (the fair ablation: every arm, seeds, label budgets) runs on tiny data in CI,
so the figures the docs quote from it cannot silently rot."""

from __future__ import annotations

import pytest
from tiny_project import benchmark_smoke

pytestmark = pytest.mark.slow


def test_ablation_benchmark_smoke_prints_its_table() -> None:
    benchmark_smoke("ablation.py")
