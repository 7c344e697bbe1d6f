"""Shared, generic fixtures for the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from thaw import config
from thaw.config import Params

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with slow tests first, each module's tests together and in their order. `make test` runs the
    suite with `--dist loadfile` (one pytest-xdist worker per core, each module on one worker, so that its
    module-scoped fixtures are built once); started first, no long end-to-end module starts last while the
    other workers sit idle."""

    def module_of(item: pytest.Item) -> str:
        return item.module.__name__ if item.module else item.nodeid

    heavy = {module_of(item) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: module_of(item) not in heavy)  # stable: the order within each part is kept


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The repository root (where params.yaml, dvc.yaml and conf/ live)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def committed_params() -> Params:
    """The committed params.yaml, typed: tests derive small variants with `dataclasses.replace`, since the
    schema has no defaults (conf/ is their only source)."""
    return config.load(REPO_ROOT / "params.yaml")
