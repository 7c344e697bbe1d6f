"""Where MLflow runs go, and whether that store can be written, without importing MLflow: `MLFLOW_TRACKING_URI`
when set (a tracking server), else the embedded SQLite store `mlflow.db` at the project root. The root comes
from DVC_ROOT, which DVC points at the main workspace even for queued experiments in temporary copies, so
every run lands in the same store. The training stages check the store here before they train.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from thaw.errors import ConfigError


def project_root(environ: Mapping[str, str] = os.environ) -> Path:
    """The main workspace: DVC_ROOT when DVC runs the stage, else the current directory."""
    return Path(environ.get("DVC_ROOT") or ".").resolve()


def tracking_uri(root: Path, environ: Mapping[str, str] = os.environ) -> str:
    """MLFLOW_TRACKING_URI, or the SQLite store at `root`, anchored by an absolute path."""
    return environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root.resolve() / 'mlflow.db'}"


def artifact_root(root: Path, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where a new experiment in the embedded store keeps its artifacts: `mlartifacts/` at the project root,
    so the artifacts of DVC's temporary experiment workspaces outlive them. None with a tracking server (it
    chooses)."""
    return None if environ.get("MLFLOW_TRACKING_URI") else root / "mlartifacts"


def check_store(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when the tracking store cannot be reached or written.

    A server is asked for its /health page (plain HTTP, no MLflow import); a SQLite store needs a writable
    folder. MLflow's own client retries transient HTTP errors once logging starts.
    """
    import urllib.error
    import urllib.request

    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
                if response.status == 200:
                    return
                reason = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            reason = str(getattr(exc, "reason", exc))
        raise ConfigError(
            f"MLFLOW_TRACKING_URI={uri} is unreachable ({reason}): start the server, fix the URI, "
            "or unset it to track into mlflow.db at the project root"
        )
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise ConfigError(f"tracking store {uri}: folder {folder} is missing or not writable")
