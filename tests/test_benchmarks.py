"""Every benchmark script runs end to end in its smoke mode (tiny data, seconds to a minute or two), so a
benchmark whose figures the docs quote cannot silently rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tiny_project import REPO, project_env

pytestmark = pytest.mark.slow

SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py"))


def test_every_benchmark_is_listed_here() -> None:
    assert SCRIPTS == ["ablation.py", "large_data.py", "noop_repro.py", "stage_costs.py", "sweep.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_smoke_mode_runs_and_prints_its_table(script: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--smoke"], cwd=REPO,
                          env=project_env(), capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert len(table) >= 3, proc.stdout  # a header, its rule, at least one row of figures
    assert all(line.count("|") == table[0].count("|") for line in table), proc.stdout
