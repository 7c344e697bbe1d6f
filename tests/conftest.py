"""Shared, generic fixtures for the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from thaw import config
from thaw.config import Params

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The repository root (where params.yaml, dvc.yaml and conf/ live)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def committed_params() -> Params:
    """The committed params.yaml, typed: tests derive small variants with `dataclasses.replace`, since the
    schema has no defaults (conf/ is their only source)."""
    return config.load(REPO_ROOT / "params.yaml")
