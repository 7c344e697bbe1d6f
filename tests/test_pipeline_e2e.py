"""End to end: the real pipeline in a temporary git + DVC repo, with tiny params, tracked in a real MLflow store."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from tiny_project import make_tiny_project, run, stages_run

SIX_STAGES = ("ingest", "normalize", "extract-frozen", "train-head", "unfreeze", "finetune")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("project")
    return root, make_tiny_project(root)


@pytest.fixture(scope="module")
def first_repro(workspace: tuple[Path, dict[str, str]]) -> str:
    root, env = workspace
    return run(["dvc", "repro"], root, env)


def test_repro_runs_every_stage_and_writes_every_output(workspace, first_repro):
    root, _ = workspace
    assert set(SIX_STAGES) <= set(stages_run(first_repro))
    for rel in (
        "data/raw/meta.json", "data/normalized/meta.json", "data/features/meta.json",
        "models/base.keras", "models/head.keras", "models/model.keras", "models/unfrozen.keras",
        "models/finetuned.keras", "plots/train_head.csv", "plots/finetune.csv", "plots/confusion.csv",
        "metrics/train_head.json", "metrics/finetune.json", "metrics/unfreeze.json", "reports/layers.csv",
        "reports/trace.md", "reports/curves.png", "reports/confusion.png", "reports/mlflow_run.json",
    ):  # fmt: skip
        assert (root / rel).is_file(), rel
    trace = (root / "reports/trace.md").read_text()
    for stage in SIX_STAGES:
        assert f"(`{stage}`)" in trace
    assert "1000 rows" not in trace and "60 rows x 8 x 8 x 64" in trace
    finetune_epochs = [row.split(",")[0] for row in (root / "plots/finetune.csv").read_text().splitlines()[1:]]
    assert finetune_epochs == ["3"]  # continues train-head's two epochs


def test_mlflow_run_holds_params_curves_tags_and_artifacts(workspace, first_repro):
    from mlflow.tracking import MlflowClient

    root, _ = workspace
    record = json.loads((root / "reports/mlflow_run.json").read_text())
    assert record["tracking_uri"] == f"sqlite:///{root.resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert run.data.params["finetune.lr"] == str(params["finetune"]["lr"])
    assert run.data.params["unfreeze.layers"] == "2"
    assert run.data.tags["thaw.input.data"] == "none"  # the embedded default reads no external file
    assert run.data.params["data.rows"] == "60"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert steps == [1, 2, 3]
    phases = [m.value for m in client.get_metric_history(run.info.run_id, "phase")]
    assert phases == [0.0, 0.0, 1.0]
    for key in ("test_accuracy", "head_test_accuracy", "trainable_params"):
        assert key in run.data.metrics
    assert any(tag.startswith("dvc.lock.train-head:") for tag in run.data.tags)
    assert run.data.tags["git.commit"]
    assert run.info.end_time - run.info.start_time > 1_000  # the stages' span, not the logging call's
    assert {"stage_seconds.train-head", "stage_seconds.finetune"} <= set(run.data.metrics)
    (used,) = run.inputs.dataset_inputs
    assert (used.dataset.name, json.loads(used.dataset.profile)["num_rows"]) == ("digits", 60)
    listed = {a.path for folder in ("model", "report") for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"model/finetuned.keras", "report/trace.md", "report/curves.png", "report/confusion.png"} <= listed
    experiment = client.get_experiment(record["experiment_id"])
    assert experiment.name == "thaw"
    assert experiment.artifact_location.startswith((root / "mlartifacts").resolve().as_uri())


def test_the_runs_mlflow_model_predicts_the_stages_classes(workspace, first_repro, monkeypatch):
    import mlflow.pyfunc
    import numpy as np

    from thaw import shards

    root, _ = workspace
    record = json.loads((root / "reports/mlflow_run.json").read_text())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", record["tracking_uri"])
    loaded = mlflow.pyfunc.load_model(record["model_uri"])
    raw = shards.open_dataset(root / "data/raw")
    test = np.flatnonzero(raw.split == 2)
    predicted = loaded.predict(raw.array[test]).idxmax(axis="columns").tolist()  # uint8 in, as a user has them
    with open(root / "plots/confusion.csv", encoding="utf-8") as fh:
        stage = [row["predicted"] for row in csv.DictReader(fh)]
    assert predicted == stage


def test_second_repro_does_nothing(workspace, first_repro):
    root, env = workspace
    output = run(["dvc", "repro"], root, env)
    assert stages_run(output) == []
    assert "up to date" in output.lower()


def changed_stages(root: Path, env: dict[str, str]) -> set[str]:
    """The stages `dvc status` says would rerun."""
    status = json.loads(run(["dvc", "status", "--json"], root, env) or "{}")
    return {name.split(":")[-1] for name in status}


def test_an_edit_to_the_sweep_code_reruns_no_stage_and_one_to_training_code_does(workspace, first_repro):
    """Upgrading the code around the stages (the sweep, the commands, the store probe) keeps the whole cached
    pipeline valid; an edit to code a stage runs invalidates exactly the stages that run it."""
    root, env = workspace
    around = ["thaw/commands/sweep.py", "thaw/sweeps/runs.py", "thaw/store.py", "thaw/commands/machine.py"]
    originals = {rel: (root / rel).read_text() for rel in [*around, "thaw/transfer.py"]}
    try:
        for rel in around[:2] + around[3:]:  # store.py is track's (where its run goes): checked below
            (root / rel).write_text(originals[rel] + "\n# an upgrade that computes nothing new\n")
        assert changed_stages(root, env) == set()
        (root / "thaw/store.py").write_text(originals["thaw/store.py"] + "\n# a change to the store\n")
        assert changed_stages(root, env) == {"track"}
        (root / "thaw/store.py").write_text(originals["thaw/store.py"])  # one change at a time
        (root / "thaw/transfer.py").write_text(originals["thaw/transfer.py"] + "\n# a change to training\n")
        assert changed_stages(root, env) == {"pretrain-base", "train-head", "finetune"}
    finally:
        for rel, text in originals.items():
            (root / rel).write_text(text)
    assert changed_stages(root, env) == set()


def test_dvc_plots_are_exactly_the_intended_ones_with_their_axes(workspace, first_repro):
    """`dvc plots show`: the learning curves over the epoch axis, the confusion matrix, the report's PNGs,
    and nothing drawn with a default template over the row index."""
    root, env = workspace
    shown = subprocess.run(["dvc", "plots", "show", "--json"], cwd=root, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    plots = json.loads(shown.stdout)["data"]
    assert set(plots) == {"learning curves (accuracy)", "learning curves (loss)", "test confusion matrix",
                          "reports/curves.png", "reports/confusion.png"}  # fmt: skip
    for name, metric in (("learning curves (accuracy)", "accuracy"), ("learning curves (loss)", "loss")):
        (plot,) = plots[name]
        spec = plot["content"]
        assert spec["encoding"]["x"]["field"] == "epoch"
        assert spec["layer"][0]["encoding"]["y"]["title"] == metric
        drawn = {row["filename::field"] for row in spec["data"]["values"]}
        assert drawn == {f"{f}.csv::{m}" for f in ("train_head", "finetune") for m in (metric, f"val_{metric}")}
    (confusion,) = plots["test confusion matrix"]
    encoding = confusion["content"]["spec"]["encoding"]  # faceted by revision: the encoding is the inner spec's
    assert (encoding["x"]["field"], encoding["y"]["field"]) == ("actual", "predicted")
    assert all(p["type"] == "image" for name in ("reports/curves.png", "reports/confusion.png") for p in plots[name])


def test_exp_run_with_hydra_override_reruns_only_unfreeze_and_after(workspace, first_repro):
    root, env = workspace
    output = run(["dvc", "exp", "run", "-S", "unfreeze.layers=1"], root, env)
    ran = [s for s in stages_run(output) if s in SIX_STAGES]
    assert ran == ["unfreeze", "finetune"], output[-3000:]
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["unfreeze"]["layers"] == 1
    assert params["data"]["rows"] == 60  # composed from conf/, not reset to the defaults

    from mlflow.tracking import MlflowClient

    record = json.loads((root / "reports/mlflow_run.json").read_text())
    run_ = MlflowClient(tracking_uri=record["tracking_uri"]).get_run(record["run_id"])
    assert run_.data.params["unfreeze.layers"] == "1"
    assert run_.data.tags.get("dvc.experiment")


def test_finetune_lr_change_reruns_only_finetune(workspace, first_repro):
    root, env = workspace
    params_file = root / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["finetune"]["lr"] = 0.0005
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    output = run(["dvc", "repro"], root, env)
    assert [s for s in stages_run(output) if s in SIX_STAGES] == ["finetune"]
    assert {"report", "track"} <= set(stages_run(output))

    from mlflow.tracking import MlflowClient

    record = json.loads((root / "reports/mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    runs = client.search_runs([record["experiment_id"]])
    assert len(runs) == 3  # baseline, the exp run, and this variant
    assert client.get_run(record["run_id"]).data.params["finetune.lr"] == "0.0005"
    assert "test_accuracy" in run(["dvc", "metrics", "show"], root, env)
