"""Every script in benchmarks/ has a smoke test of its own (tests/test_benchmark_<name>.py)."""

from __future__ import annotations

from tiny_project import REPO


def test_every_benchmark_has_a_smoke_test() -> None:
    scripts = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py"))
    tested = sorted(p.stem.removeprefix("test_benchmark_") for p in (REPO / "tests").glob("test_benchmark_*.py"))
    assert scripts == [s for s in tested if s != "scripts"]
