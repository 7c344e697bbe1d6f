"""Team tracking: a real PostgreSQL on loopback as the backend store of a real `mlflow server` with a shared
artifact root; the pipeline runs against the server (MLFLOW_TRACKING_URI) and its run is read back, from the
server and from PostgreSQL itself. Skips, saying why, where PostgreSQL is not installed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from servers import mlflow_server, postgres
from tiny_project import make_tiny_project, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def team_server(tmp_path_factory: pytest.TempPathFactory):
    """PostgreSQL + MLflow server, shared by this module's tests; yields (server URL, artifact root, db URL)."""
    folder = tmp_path_factory.mktemp("team")
    artifacts = folder / "artifacts"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with postgres() as db, mlflow_server(db, artifacts, folder / "mlflow.log", env) as url:
        yield url, artifacts, db


def test_the_pipeline_tracks_into_a_postgres_backed_server(team_server, tmp_path: Path):
    import psycopg
    from mlflow.tracking import MlflowClient

    url, artifact_root, db = team_server
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    env = make_tiny_project(first)
    env["MLFLOW_TRACKING_URI"] = url
    run(["dvc", "repro"], first, env)

    pointer = json.loads((first / "reports/mlflow_run.json").read_text())
    assert pointer["tracking_uri"] == url
    assert not (first / "mlflow.db").exists()  # nothing fell back to the embedded store

    client = MlflowClient(tracking_uri=url)
    tracked = client.get_run(pointer["run_id"])
    assert tracked.info.status == "FINISHED"
    finetune = json.loads((first / "metrics/finetune.json").read_text())
    assert tracked.data.metrics["test_accuracy"] == pytest.approx(finetune["test_accuracy"])
    assert tracked.data.params["unfreeze.layers"] == "2"
    assert len(client.get_metric_history(tracked.info.run_id, "val_accuracy")) == 3  # 2 head + 1 finetune epochs

    # Artifacts went through the server into the shared root, and come back byte for byte.
    trace = Path(client.download_artifacts(tracked.info.run_id, "report/trace.md", str(tmp_path / "back")))
    assert trace.read_bytes() == (first / "reports/trace.md").read_bytes()
    assert list(artifact_root.rglob("trace.md")), "the shared artifact root holds no trace.md"

    # The run lives in PostgreSQL (not in a file store that the server might have fallen back to).
    with psycopg.connect(db) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT status FROM runs WHERE run_uuid = %s", (tracked.info.run_id,))
        assert cursor.fetchone() == ("FINISHED",)
        cursor.execute("SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = 'test_accuracy'",
                       (tracked.info.run_id,))  # fmt: skip
        assert cursor.fetchone()[0] == pytest.approx(finetune["test_accuracy"])

    # A teammate's clone (sharing the DVC cache, as a remote would) reproducing the same variant finds the run
    # instead of adding one.
    run(["git", "clone", "-q", str(first), str(second)], tmp_path, env)
    run(["dvc", "cache", "dir", "--local", str(first / ".dvc/cache")], second, env)
    run(["dvc", "repro"], second, env)
    again = json.loads((second / "reports/mlflow_run.json").read_text())
    assert again["run_id"] == pointer["run_id"]
