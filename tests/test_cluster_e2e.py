"""Sweeps across machines: Hydra's Ray launcher on a real local Ray cluster of two nodes, each standing for a
machine with its own clone of the project (THAW_REPO in the node's environment), all sharing a git remote, a
DVC remote and an MLflow tracking server. Every point runs through DVC on one of the nodes, is recorded in the
server under the sweep's parent run, and pushes its experiment; the upstream stages train once, in the warm-up.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from servers import mlflow_server
from tiny_project import make_tiny_project, run, stages_run

pytestmark = pytest.mark.slow
GIT = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]


def exp_refs(repo: Path) -> set[str]:
    """The DVC experiments a clone holds (refs/exps/...), by name."""
    out = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=repo,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return {line.rsplit("/", 1)[-1] for line in out.split()}


def test_a_ray_cluster_runs_the_points_of_one_sweep_in_two_clones(tmp_path: Path):
    from ray.cluster_utils import Cluster

    seed, origin, dvc_remote = tmp_path / "seed", tmp_path / "origin.git", tmp_path / "dvc-remote"
    seed.mkdir()
    env = make_tiny_project(seed)
    run(["dvc", "remote", "add", "--default", "shared", str(dvc_remote)], seed, env)
    run([*GIT, "commit", "-qam", "shared DVC remote"], seed, env)
    run(["git", "clone", "-q", "--bare", str(seed), str(origin)], tmp_path, env)
    clones = {name: tmp_path / name for name in ("submitter", "node-a", "node-b")}
    for clone in clones.values():
        run(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env)

    store = f"sqlite:///{tmp_path / 'server.db'}"
    with mlflow_server(store, tmp_path / "artifacts", tmp_path / "mlflow.log", env) as url:
        env = {**env, "MLFLOW_TRACKING_URI": url}
        node_env = {key: env[key] for key in ("PATH", "MLFLOW_TRACKING_URI", "TF_CPP_MIN_LOG_LEVEL")}
        cluster = Cluster(
            initialize_head=True,
            connect=False,
            head_node_args={"num_cpus": 1, "include_dashboard": False,
                            "env_vars": {**node_env, "THAW_REPO": str(clones["node-a"])}},
        )  # fmt: skip
        try:
            cluster.add_node(num_cpus=1, env_vars={**node_env, "THAW_REPO": str(clones["node-b"])})
            cluster.wait_for_nodes()
            # two points, one CPU each: Ray places one on each node
            cmd = [sys.executable, "-m", "thaw.commands.sweep", "-m", "hydra/launcher=cluster",
                   f"hydra.launcher.ray.init.address={cluster.address}", "sweep.share=true", "sweep.id=ray",
                   "unfreeze.layers=1,2", "finetune.lr=0.001"]  # fmt: skip
            started = time.monotonic()
            proc = subprocess.run(cmd, cwd=clones["submitter"], env=env, capture_output=True, text=True,
                                  timeout=900)  # fmt: skip
        finally:
            cluster.shutdown()
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-5000:]
        print(f"sweep on the cluster: {time.monotonic() - started:.0f} s")

        client = MlflowClient(tracking_uri=url)
        (experiment,) = client.search_experiments(filter_string="name = 'thaw'")
        runs = client.search_runs([experiment.experiment_id], filter_string="tags.`thaw.sweep` = 'ray'")
        points = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert sorted(r.data.tags["dvc.experiment"] for r in points) == ["ray-0", "ray-1"]
        assert {r.data.tags["mlflow.parentRunId"] for r in points} == {parent.info.run_id}
        assert all(r.info.status == "FINISHED" and "val_accuracy" in r.data.metrics for r in points)
        points_params = {(r.data.params["unfreeze.layers"], r.data.params["finetune.lr"]) for r in points}
        assert points_params == {("1", "0.001"), ("2", "0.001")}
        assert "best_val_accuracy" in parent.data.metrics

    # Both "machines" ran points, in their own clones; every experiment reached the shared git remote.
    ran_on = {name: exp_refs(clones[name]) for name in ("node-a", "node-b")}
    assert ran_on["node-a"] and ran_on["node-b"], ran_on
    assert ran_on["node-a"] | ran_on["node-b"] == {"ray-0", "ray-1"}
    assert exp_refs(origin) == {"ray-0", "ray-1"}
    assert not exp_refs(clones["submitter"])
    run(["dvc", "exp", "pull", "origin"], clones["submitter"], env)  # what a teammate does to see them
    assert exp_refs(clones["submitter"]) == {"ray-0", "ray-1"}

    # Upstream stages trained once (the submitter's warm-up); the points restored them from the run-cache
    # that the warm-up pushed to the DVC remote.
    assert stages_run(output).count("pretrain-base") == 1, output[-3000:]
    logs = [p.read_text() for p in clones["node-a"].parent.rglob("dvc-exp-run.log")]
    assert len(logs) == 2, [str(p) for p in tmp_path.rglob("dvc-exp-run.log")]
    for log in logs:
        assert not re.search(r"Running stage '(pretrain-base|extract-frozen|train-head)'", log), log[-2000:]
        assert "Running stage 'finetune'" in log
    assert os.listdir(dvc_remote)
