"""Shared, generic fixtures for the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The repository root (where params.yaml, dvc.yaml and conf/ live)."""
    return REPO_ROOT
