"""Sweeps end to end, in a temporary git + DVC repo with tiny params: Hydra's grid and Optuna search and DVC's
queue, each point a DVC experiment and an MLflow run nested under its sweep; then the real MLflow UI, read
through its REST API and rendered in headless Chromium."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from tiny_project import make_tiny_project, run, stages_run

from thaw import store, tracking

pytestmark = pytest.mark.slow
UPSTREAM = ("ingest", "normalize", "pretrain-base", "extract-frozen", "train-head")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("sweep-project")
    return root, make_tiny_project(root)


def client_for(root: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_uri=store.tracking_uri(root, {}))
    return client, client.get_experiment_by_name("thaw").experiment_id


def children(client: MlflowClient, experiment_id: str, sweep: str) -> tuple[str, list]:
    parent = tracking.find_sweep_parent(client, experiment_id, sweep)
    assert parent, f"no parent run for sweep {sweep}"
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    return parent, runs


@pytest.fixture(scope="module")
def grid_sweep(project) -> str:
    root, env = project
    return run(
        [sys.executable, "-m", "thaw.commands.sweep", "-m", "unfreeze.layers=0,1", "finetune.lr=1e-3,1e-4",
         "sweep.id=grid", "hydra.launcher.n_jobs=2"],
        root, env,
    )  # fmt: skip


def test_hydra_grid_runs_upstream_once_and_every_point_through_dvc(project, grid_sweep):
    root, env = project
    # The warm-up computed the upstream stages once; no point recomputed them.
    assert [s for s in stages_run(grid_sweep) if s in UPSTREAM] == list(UPSTREAM)
    logs = sorted((root / "multirun/grid").glob("*/dvc-exp-run.log"))
    assert len(logs) == 4
    for log in logs:
        text = log.read_text()
        ran = stages_run(text)
        assert not set(ran) & set(UPSTREAM), (log, ran)
        assert "finetune" in ran and "track" in ran
    assert "grid-0" in run(["dvc", "exp", "ls"], root, env)


def test_hydra_grid_points_are_nested_mlflow_runs_with_a_summary(project, grid_sweep):
    root, _ = project
    client, experiment_id = client_for(root)
    parent, points = children(client, experiment_id, "grid")
    grid = {(r.data.params["unfreeze.layers"], r.data.params["finetune.lr"]) for r in points}
    assert grid == {("0", "0.001"), ("0", "0.0001"), ("1", "0.001"), ("1", "0.0001")}
    assert {r.data.tags["thaw.sweep"] for r in points} == {"grid"}
    assert {r.data.tags["thaw.overrides"] for r in points} == {
        f"finetune.lr={lr} unfreeze.layers={layers}" for layers, lr in grid
    }
    assert {r.data.tags["dvc.experiment"] for r in points} == {"grid-0", "grid-1", "grid-2", "grid-3"}
    summary = client.get_run(parent)
    assert summary.info.status == "FINISHED"
    assert "best_val_accuracy" in summary.data.metrics
    assert {a.path for a in client.list_artifacts(parent, "summary")} >= {
        "summary/heatmap.png",
        "summary/leaderboard.md",
    }
    assert "rank" in grid_sweep  # the leaderboard is printed when the sweep ends


def test_the_sweeps_best_model_is_the_registered_champion(project, grid_sweep, monkeypatch):
    import mlflow.pyfunc

    root, _ = project
    client, experiment_id = client_for(root)
    parent = client.get_run(tracking.find_sweep_parent(client, experiment_id, "grid"))
    champion = client.get_model_version_by_alias("thaw", "champion")
    assert champion.run_id == parent.data.tags["thaw.best_run_id"]
    assert champion.tags["thaw.sweep"] == "grid" and champion.tags["git.commit"]
    assert champion.tags["dvc.experiment"].startswith("grid-")
    assert parent.data.tags["thaw.champion"].startswith("models:/thaw@champion")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri(root, {}))
    loaded = mlflow.pyfunc.load_model("models:/thaw@champion")
    assert loaded.predict(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 10)


def test_optuna_search_returns_objectives_to_the_sweeper(project, grid_sweep):
    root, env = project
    run(
        [sys.executable, "-m", "thaw.commands.sweep", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
         "sweep.id=tpe"],
        root, env,
    )  # fmt: skip
    result = yaml.safe_load((root / "multirun/tpe/optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"finetune.lr", "unfreeze.layers"}
    assert 1e-5 <= result["best_params"]["finetune.lr"] <= 1e-3
    client, experiment_id = client_for(root)
    _, points = children(client, experiment_id, "tpe")
    assert len(points) == 2
    assert result["best_value"] == max(r.data.metrics["val_accuracy"] for r in points)


HOLD_LOCK = """
import sys, time
from dvc.repo import Repo
with Repo(".").lock:
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def test_a_point_waits_while_another_dvc_process_holds_the_repo_lock(project, grid_sweep):
    """Parallel points take turns at the repo's lock (DVC's own default gives up after 3 s): a point started
    while another DVC command holds the lock for 6 s still runs and is tracked."""
    root, env = project
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, "6"], cwd=root, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        run(
            [sys.executable, "-m", "thaw.commands.sweep", "-m", "unfreeze.layers=2", "finetune.lr=1e-4",
             "sweep.id=locked", "sweep.warm_up=false"],
            root, env,
        )  # fmt: skip
    finally:
        holder.wait(timeout=60)
    client, experiment_id = client_for(root)
    _, points = children(client, experiment_id, "locked")
    assert [r.data.tags["dvc.experiment"] for r in points] == ["locked-0"]


def test_hydra_sweep_over_seeds_reports_intervals_and_the_near_best(project, grid_sweep):
    """seed as a sweep axis: each (layers, lr) cell pools its seeds into a mean and a 95 % interval, in the
    printed leaderboard and on the parent run, and the cells indistinguishable from the best are named."""
    root, env = project
    out = run(
        [sys.executable, "-m", "thaw.commands.sweep", "-m", "seed=42,9", "unfreeze.layers=0,1", "finetune.lr=3e-4", "sweep.id=seeds",
         "hydra.launcher.n_jobs=2"],
        root, env,
    )  # fmt: skip
    client, experiment_id = client_for(root)
    parent, points = children(client, experiment_id, "seeds")
    assert sorted((r.data.params["seed"], r.data.params["unfreeze.layers"]) for r in points) == [
        ("42", "0"), ("42", "1"), ("9", "0"), ("9", "1")]  # fmt: skip
    lines = [line.split() for line in out.splitlines() if line[:1].isdigit() and " [" in line]
    assert len(lines) == 2 and all(words[4] == "2" for words in lines), out[-2000:]  # two cells, two seeds each
    summary = client.get_run(parent).data
    low, mean, high = (summary.metrics[f"best_cell_val_accuracy_{k}"] for k in ("low", "mean", "high"))
    assert low <= mean <= high and summary.params["best.seeds"] == "2"
    best = f"unfreeze.layers={summary.params['best.unfreeze.layers']}"
    assert summary.tags["thaw.indistinguishable_from_best"].startswith(best)


def test_dvc_queue_sweep_is_tracked_and_summarized(project, grid_sweep, tmp_path):
    root, env = project
    run(["dvc", "exp", "run", "--queue", "-S", "unfreeze.layers=0,1", "-S", "seed=42,9", "-S", "tracking.sweep=queued"],
        root, env)  # fmt: skip
    # `dvc queue start` returns at once, but its detached workers inherit its output: a file here, not a pipe
    # that `run` would read until the last worker exits (one outlived the empty queue by minutes, once).
    with open(tmp_path / "queue-start.log", "w") as out:
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                       check=True, timeout=120)  # fmt: skip
    deadline = time.monotonic() + 600
    while True:
        status = run(["dvc", "queue", "status"], root, env)
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(3)
    assert status.count("Success") == 4, status
    table = run([sys.executable, "-m", "thaw.commands.leaderboard", "--sweep", "queued", "--summarize"], root, env)
    rows = [line.split() for line in table.splitlines() if line[:1].isdigit()]
    assert len(rows) == 2 and all(words[4] == "2" for words in rows), table  # two cells, two seeds each
    client, experiment_id = client_for(root)
    _, points = children(client, experiment_id, "queued")
    assert sorted(r.data.params["unfreeze.layers"] for r in points) == ["0", "0", "1", "1"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (`apt-get install chromium`; .ci/run does)")
def test_mlflow_ui_serves_and_renders_the_sweep_runs(project, grid_sweep, tmp_path):
    root, env = project
    port = free_port()
    server = subprocess.Popen(
        ["mlflow", "ui", "--backend-store-uri", store.tracking_uri(root, {}), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, "mlflow ui exited"
            assert time.monotonic() < deadline, "mlflow ui did not come up in 120 s"
            time.sleep(1)

        client, experiment_id = client_for(root)
        expected = {
            r.info.run_name for r in client.search_runs([experiment_id], filter_string="tags.`thaw.sweep` = 'grid'")
        }
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search",
            data=json.dumps({"experiment_ids": [experiment_id], "max_results": 1000}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            listed = {r["info"]["run_name"] for r in json.load(response)["runs"]}
        assert expected <= listed and len(expected) == 5  # four points and their parent

        chrome = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1400,900", "--virtual-time-budget=20000"]  # fmt: skip

        def rendered(page: str) -> str:
            return subprocess.run([*chrome, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout

        # The experiment opens on its runs table (not MLflow 3's GenAI overview), the sweep one parent row
        # (its points nested, collapsed) ...
        assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
        # MLflow 3.17's UI puts its own workflow switch (GenAI by default) before the tag: `make ui` prints
        # the experiment's link with the switch set to model training.
        page = f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"
        assert "sweep grid" in rendered(page), f"the sweep's parent run is not rendered on {page}"
        # ... and each point's own page renders it with its params and metrics.
        best = client.get_run(tracking.find_sweep_parent(client, experiment_id, "grid")).data.tags["thaw.best_run_id"]
        point_page = rendered(f"{base}/#/experiments/{experiment_id}/runs/{best}")
        info = client.get_run(best).info
        best_name = info.run_name
        assert info.end_time - info.start_time > 1_000  # Duration: when its stages ran, not the logging call
        assert best_name in point_page and "unfreeze.layers" in point_page and "val_accuracy" in point_page
        (used,) = client.get_run(best).inputs.dataset_inputs  # the Dataset column of the (nested) point rows
        assert used.dataset.name == "digits"
        assert "digits" in point_page, "the run page shows no dataset"
        screenshot = tmp_path / "mlflow-ui.png"
        subprocess.run([*chrome, f"--screenshot={screenshot}", page], capture_output=True, timeout=120, check=True)
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
    finally:
        server.terminate()
        server.wait(timeout=30)
