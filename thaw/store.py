"""Where MLflow runs go, and whether that store can be written, without importing MLflow: `MLFLOW_TRACKING_URI`
when set (a tracking server), else the embedded SQLite store `mlflow.db` at the project root. The root comes
from DVC_ROOT, which DVC points at the main workspace even for queued experiments in temporary copies, so
every run lands in the same store. An entry point (a stage's `main`, a `thaw` command) reads the environment
once into a `Store` (`Store.from_environ`) and passes it on; nothing below it reads the environment. `track`
checks the store here before it logs, and `thaw sweep` before its warm-up trains anything.
"""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from thaw.errors import ConfigError


def project_root(environ: Mapping[str, str]) -> Path:
    """The main workspace: DVC_ROOT when DVC runs the stage, else the current directory."""
    return Path(environ.get("DVC_ROOT") or ".").resolve()


def tracking_uri(root: Path, environ: Mapping[str, str]) -> str:
    """MLFLOW_TRACKING_URI, or the SQLite store at `root`, anchored by an absolute path."""
    return environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root.resolve() / 'mlflow.db'}"


def artifact_root(root: Path, environ: Mapping[str, str]) -> Path | None:
    """Where a new experiment in the embedded store keeps its artifacts: `mlartifacts/` at the project root,
    so the artifacts of DVC's temporary experiment workspaces outlive them. None with a tracking server (it
    chooses)."""
    return None if environ.get("MLFLOW_TRACKING_URI") else root / "mlartifacts"


@dataclass(frozen=True)
class Store:
    """The tracking store of this process, and the login it is reached with."""

    root: Path  # the main workspace
    uri: str
    artifact_root: Path | None = None  # where a new experiment in the embedded store keeps its artifacts
    username: str | None = None  # MLFLOW_TRACKING_USERNAME / _PASSWORD: MLflow's client reads them too
    password: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ, root: Path | None = None) -> Store:
        """The store the environment names (`root`: the project folder, else DVC_ROOT or the current one)."""
        root = (root or project_root(environ)).resolve()
        return cls(root, tracking_uri(root, environ), artifact_root(root, environ),
                   environ.get("MLFLOW_TRACKING_USERNAME"), environ.get("MLFLOW_TRACKING_PASSWORD"))  # fmt: skip

    def __repr__(self) -> str:  # never a password in a log or a traceback
        return f"Store(uri={redact(self.uri)!r}, user={self.username!r})"


def redact(uri: str) -> str:
    """`uri` without a password written into it (http://user:secret@host -> http://user:***@host), for logs
    and records."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_store(store: Store, experiment: str | None = None, timeout: float = 5.0) -> None:
    """Fail fast when the tracking store cannot be reached, refuses the credentials, or refuses this user the
    experiment (`track` before it logs, `thaw sweep` before its warm-up).

    A server is asked for its /health page, then (with the store's login, as MLflow's client sends it) who the
    user is and the experiment: plain HTTP, no MLflow import. A SQLite store needs a writable folder. MLflow's
    own client retries transient HTTP errors once logging starts.
    """
    uri = store.uri
    if uri.startswith(("http://", "https://")):
        shown = redact(uri)
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
                if response.status != 200:
                    raise OSError(f"HTTP {response.status}")
        except (urllib.error.URLError, OSError) as exc:
            reason = str(getattr(exc, "reason", exc))
            raise ConfigError(
                f"MLFLOW_TRACKING_URI={shown} is unreachable ({reason}): start the server, fix the URI, "
                "or unset it to track into mlflow.db at the project root"
            ) from None
        check_credentials(uri, timeout, experiment, store.username, store.password)
        return
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise ConfigError(f"tracking store {uri}: folder {folder} is missing or not writable")


def check_credentials(uri: str, timeout: float, experiment: str | None, user: str | None, password: str | None) -> None:
    """A server with MLflow's basic-auth app answers 401 to a wrong or missing login and 403 to a user without
    permission; a server without it has no user endpoint (404), which is fine."""
    headers = {}
    if user:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    base = uri.rstrip("/")
    probes = [f"{base}/api/2.0/mlflow/users/current"]
    if experiment:
        probes.append(f"{base}/api/2.0/mlflow/experiments/get-by-name?" + urllib.parse.urlencode(
            {"experiment_name": experiment}))  # fmt: skip
    for url in probes:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code == 401 and user:
                raise ConfigError(
                    f"the tracking server {redact(uri)} refused these credentials (HTTP 401 for user {user!r}): "
                    "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
                ) from None
            if exc.code == 401:
                raise ConfigError(
                    f"the tracking server {redact(uri)} requires a login (HTTP 401): set MLFLOW_TRACKING_USERNAME "
                    "and MLFLOW_TRACKING_PASSWORD in the environment (never in params or conf/)"
                ) from None
            if exc.code == 403:
                raise ConfigError(
                    f"the tracking server {redact(uri)} refused user {user!r} the experiment {experiment!r} "
                    "(HTTP 403): ask its admin for EDIT permission on it, or set tracking.experiment"
                ) from None
            if exc.code != 404:
                raise ConfigError(f"the tracking server {redact(uri)} answered HTTP {exc.code} to {url}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ConfigError(f"MLFLOW_TRACKING_URI={redact(uri)} is unreachable ({exc})") from None
