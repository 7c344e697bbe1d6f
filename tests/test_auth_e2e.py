"""End to end: the documented team setup with authentication. A real `mlflow server` with MLflow's basic-auth
app on loopback (SQLite stores, no default access, an admin password from the environment), two users with
least privilege: `pipeline` may EDIT the `thaw` experiment and registered model, `reader` may only READ
them. Anonymous requests are refused; the pipeline user's `dvc repro` logs its run and a sweep summary
registers the champion; a wrong password stops the first training stage before it trains; the reader can
search runs and load the champion but not write; and no credential reaches any record of the run."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from servers import mlflow_server
from tiny_project import make_tiny_project, run

pytestmark = pytest.mark.slow

AUTH_INI = """[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///{db}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


def status(url: str, user: str | None = None, password: str | None = None) -> int:
    headers = {}
    if user:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def as_user(env: dict[str, str], url: str, user: str, password: str) -> dict[str, str]:
    return {**env, "MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("flask_wtf", reason="needs mlflow[auth] (the `team` extra)")
    from mlflow.server import get_app_client
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("auth")
    project = root / "project"
    project.mkdir()
    env = make_tiny_project(project)
    passwords = {name: secrets.token_urlsafe(16) for name in ("admin", "pipeline", "reader")}
    (root / "auth.ini").write_text(AUTH_INI.format(db=root / "auth.db"))
    server_env = {**env, "MLFLOW_AUTH_CONFIG_PATH": str(root / "auth.ini"),
                  "MLFLOW_AUTH_ADMIN_PASSWORD": passwords["admin"],
                  "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32)}  # fmt: skip
    with mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", root / "server.log", server_env,
                       ("--app-name", "basic-auth", "--allowed-hosts", "127.0.0.1:{port},localhost:{port}")) as url:  # fmt: skip
        admin_env = as_user({}, url, "admin", passwords["admin"])
        with pytest.MonkeyPatch.context() as mp:
            for key, value in admin_env.items():
                mp.setenv(key, value)
            auth = get_app_client("basic-auth", tracking_uri=url)
            for name in ("pipeline", "reader"):
                auth.create_user(name, passwords[name])
            admin = MlflowClient(tracking_uri=url)
            experiment_id = admin.create_experiment("thaw")
            admin.create_registered_model("thaw")
            for name, permission in (("pipeline", "EDIT"), ("reader", "READ")):
                auth.grant_user_permission(name, "experiment", experiment_id, permission)
                auth.grant_user_permission(name, "registered_model", "thaw", permission)
        yield {"url": url, "project": project, "env": env, "passwords": passwords, "admin_env": admin_env,
               "experiment_id": experiment_id}  # fmt: skip


@pytest.fixture(scope="module")
def pipeline_run(team):
    """The pipeline user's `dvc repro`, then a one-point sweep summarized (and its champion registered)."""
    env = as_user(team["env"], team["url"], "pipeline", team["passwords"]["pipeline"])
    project = team["project"]
    logs = run(["dvc", "repro"], project, env)
    logs += run(["dvc", "exp", "run", "-S", "tracking.sweep=auth"], project, env)
    logs += run([sys.executable, "-m", "thaw", "leaderboard", "--sweep", "auth", "--summarize"], project, env)
    return logs


def test_anonymous_requests_are_refused(team):
    assert status(f"{team['url']}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    assert status(f"{team['url']}/api/2.0/mlflow/experiments/search?max_results=1", "reader", "wrong") == 401
    assert status(f"{team['url']}/health") == 200  # for load balancers: says nothing about the data


def test_the_pipeline_user_tracks_its_run_and_the_sweeps_champion(team, pipeline_run):
    from mlflow.tracking import MlflowClient

    with pytest.MonkeyPatch.context() as mp:
        for key, value in team["admin_env"].items():
            mp.setenv(key, value)
        client = MlflowClient(tracking_uri=team["url"])
        runs = client.search_runs([team["experiment_id"]])
        assert any(r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics for r in runs)
        champion = client.get_model_version_by_alias("thaw", "champion")
        assert champion.tags["thaw.sweep"] == "auth"


def test_wrong_credentials_stop_track_in_one_line_and_keep_the_trained_outputs(team, pipeline_run):
    """The store probe is `track`'s (and `thaw sweep`'s, before its warm-up), not the training stages': with a
    wrong password the run is refused by name, and `dvc status` then shows that only `track` is left to run."""
    env = as_user(team["env"], team["url"], "pipeline", "not-the-password")
    project = team["project"]
    proc = subprocess.run(["dvc", "repro", "--force", "--single-item", "track"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    assert "refused these credentials (HTTP 401 for user 'pipeline')" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "not-the-password" not in proc.stdout + proc.stderr
    status = subprocess.run(["dvc", "status", "--json"], cwd=project, env=env, capture_output=True, text=True)
    assert set(json.loads(status.stdout or "{}")) <= {"track"}, status.stdout


def test_the_reader_reads_and_loads_the_champion_but_cannot_write(team, pipeline_run, monkeypatch):
    import mlflow.pyfunc
    import numpy as np
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    for key, value in as_user({}, team["url"], "reader", team["passwords"]["reader"]).items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(tracking_uri=team["url"])
    runs = client.search_runs([team["experiment_id"]])
    assert runs
    model = mlflow.pyfunc.load_model("models:/thaw@champion")
    assert model.predict(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 10)
    with pytest.raises(MlflowException, match=r"PERMISSION_DENIED|403"):
        client.log_metric(runs[0].info.run_id, "tampered", 1.0)
    with pytest.raises(MlflowException, match=r"PERMISSION_DENIED|403"):
        client.create_run(team["experiment_id"])


def test_no_credential_reaches_params_tags_reports_the_lock_or_the_logs(team, pipeline_run):
    from mlflow.tracking import MlflowClient

    secrets_used = list(team["passwords"].values())
    project: Path = team["project"]
    texts = [pipeline_run, (project / "params.yaml").read_text(), (project / "dvc.lock").read_text()]
    texts += [p.read_text(errors="replace") for p in (project / "reports").rglob("*") if p.is_file()
              and p.suffix in (".json", ".md", ".csv")]  # fmt: skip
    texts += [p.read_text(errors="replace") for p in (project / "metrics").glob("*.json")]
    with pytest.MonkeyPatch.context() as mp:
        for key, value in team["admin_env"].items():
            mp.setenv(key, value)
        for r in MlflowClient(tracking_uri=team["url"]).search_runs([team["experiment_id"]]):
            texts.append(json.dumps({"params": r.data.params, "tags": r.data.tags}))
    for text in texts:
        for secret in secrets_used:
            assert secret not in text
