"""`benchmarks/noop_repro.py --smoke` (what a `dvc repro` with nothing to do costs) runs on tiny data in CI, so the
figures the docs quote from it cannot silently rot."""

from __future__ import annotations

import pytest
from tiny_project import benchmark_smoke

pytestmark = pytest.mark.slow


def test_noop_repro_benchmark_smoke_prints_its_table() -> None:
    benchmark_smoke("noop_repro.py")
