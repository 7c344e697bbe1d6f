"""`benchmarks/quality_guard.py --smoke` (broken pipelines against the quality guard) runs on tiny data in CI, so
the table docs/reproducibility.md quotes from it cannot silently rot (on tiny data the guard's bounds, made for the default, refuse every variant: the smoke checks that
the mutants still apply to the code and run)."""

from __future__ import annotations

import pytest
from tiny_project import benchmark_smoke

pytestmark = pytest.mark.slow


def test_quality_guard_benchmark_smoke_prints_its_table() -> None:
    out = benchmark_smoke("quality_guard.py")
    assert "| intact |" in out and "| head trained on misaligned labels |" in out
