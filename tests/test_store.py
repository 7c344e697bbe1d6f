"""thaw.store: where runs go (a tracking server, or the SQLite store at the project root, even from DVC's
temporary workspaces), where new experiments keep their artifacts, and the check that fails a training stage
in seconds when the store cannot be reached or written."""

from __future__ import annotations

from pathlib import Path

import pytest

from thaw import store
from thaw.errors import ConfigError

# tracking_uri / project_root ------------------------------------------------------------------------------------


def test_tracking_uri_env_var_wins(tmp_path: Path):
    env = {"MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}
    assert store.tracking_uri(tmp_path, env) == "http://mlflow.example:5000"


def test_tracking_uri_defaults_to_an_absolute_sqlite_path_under_the_root(tmp_path: Path):
    uri = store.tracking_uri(tmp_path, {})
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert uri.startswith("sqlite:////")  # three slashes of the scheme + the absolute path's own
    assert store.tracking_uri(tmp_path, {"MLFLOW_TRACKING_URI": ""}) == uri  # an empty variable is unset


def test_tracking_uri_anchors_a_relative_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "ws").mkdir()
    monkeypatch.chdir(tmp_path)
    assert store.tracking_uri(Path("ws"), {}) == f"sqlite:///{(tmp_path / 'ws').resolve()}/mlflow.db"


def test_project_root_honours_dvc_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    workspace = tmp_path / "main"
    workspace.mkdir()
    elsewhere = tmp_path / "queued-copy"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert store.project_root({"DVC_ROOT": str(workspace)}) == workspace.resolve()
    assert store.project_root({"DVC_ROOT": "../main"}) == workspace.resolve()
    assert store.project_root({}) == elsewhere.resolve()
    assert store.project_root({"DVC_ROOT": ""}) == elsewhere.resolve()
    monkeypatch.setenv("DVC_ROOT", str(workspace))
    assert store.Store.from_environ().root == workspace.resolve()  # the process environment by default


# the store check --------------------------------------------------------------------------------------------


def test_an_unreachable_tracking_server_fails_with_the_fix():
    with pytest.raises(ConfigError, match=r"MLFLOW_TRACKING_URI=http://127\.0\.0\.1:9 is unreachable.*unset it"):
        store.check_store(store.Store(Path("."), "http://127.0.0.1:9"), timeout=2)


def test_a_sqlite_store_needs_a_writable_folder(tmp_path: Path):
    store.check_store(store.Store.from_environ({}, root=tmp_path))
    with pytest.raises(ConfigError, match="missing or not writable"):
        store.check_store(store.Store.from_environ({}, root=tmp_path / "nowhere"))


def test_the_artifact_root_is_mlartifacts_only_for_the_embedded_store(tmp_path: Path):
    assert store.artifact_root(tmp_path, {}) == tmp_path / "mlartifacts"
    assert store.artifact_root(tmp_path, {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}) is None


def test_a_password_in_the_uri_is_masked_wherever_it_is_shown():
    assert store.redact("http://pipeline:s3cret@mlflow.internal:5000") == "http://pipeline:***@mlflow.internal:5000"
    assert store.redact("http://mlflow.internal:5000") == "http://mlflow.internal:5000"
    assert store.redact("sqlite:////work/mlflow.db") == "sqlite:////work/mlflow.db"
    with pytest.raises(ConfigError) as info:
        store.check_store(store.Store(Path("."), "http://pipeline:s3cret@127.0.0.1:9"), timeout=2)
    assert "s3cret" not in str(info.value) and "pipeline:***@127.0.0.1:9" in str(info.value)


def test_the_environment_is_read_once_into_a_store_that_never_shows_its_password(tmp_path: Path):
    environ = {"DVC_ROOT": str(tmp_path), "MLFLOW_TRACKING_URI": "http://u:pw@mlflow:5000",
               "MLFLOW_TRACKING_USERNAME": "pipeline", "MLFLOW_TRACKING_PASSWORD": "s3cret"}  # fmt: skip
    found = store.Store.from_environ(environ)
    assert (found.root, found.uri, found.artifact_root) == (tmp_path.resolve(), "http://u:pw@mlflow:5000", None)
    assert (found.username, found.password) == ("pipeline", "s3cret")
    assert "s3cret" not in repr(found) and "pw@" not in repr(found)
    embedded = store.Store.from_environ({}, root=tmp_path)
    assert embedded.uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert embedded.artifact_root == tmp_path.resolve() / "mlartifacts"
