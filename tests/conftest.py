"""Shared, generic fixtures for the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from thaw import config
from thaw.config import Params

REPO_ROOT = Path(__file__).resolve().parents[1]


# Modules whose tests share no fixture: pytest-xdist may spread their tests over its workers.
INDEPENDENT_TESTS = {"test_benchmarks"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup` (`make test`), keep each module's tests on one worker: its module-scoped
    fixtures (a tiny project's first `dvc repro`, a sweep, a server) are then built once, not once per worker.
    The benchmark smokes share nothing and are the longest tests, so they are spread over the workers.

    Modules with slow tests go first (each module's tests stay together and in order), so that no long
    end-to-end module starts last while the other workers sit idle."""

    def module_of(item: pytest.Item) -> str:
        return item.module.__name__ if item.module else item.nodeid

    heavy = {module_of(item) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: module_of(item) not in heavy)  # stable: the order within each part is kept
    for item in items:
        if module_of(item) not in INDEPENDENT_TESTS:
            item.add_marker(pytest.mark.xdist_group(module_of(item)))


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The repository root (where params.yaml, dvc.yaml and conf/ live)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def committed_params() -> Params:
    """The committed params.yaml, typed: tests derive small variants with `dataclasses.replace`, since the
    schema has no defaults (conf/ is their only source)."""
    return config.load(REPO_ROOT / "params.yaml")
