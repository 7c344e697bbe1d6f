"""`benchmarks/kernels.py --smoke` (the default run under oneDNN's kernel switches: which change the trained bits,
and at what cost) runs on tiny data in CI, so the table docs/reproducibility.md quotes from it cannot silently
rot."""

from __future__ import annotations

import pytest
from tiny_project import benchmark_smoke

pytestmark = pytest.mark.slow


def test_kernels_benchmark_smoke_prints_its_table() -> None:
    out = benchmark_smoke("kernels.py")
    assert "| default |" in out and "| TF_ENABLE_ONEDNN_OPTS=0 |" in out
