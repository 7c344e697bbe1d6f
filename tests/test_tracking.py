"""MLflow tracking: where runs go, the lineage read from dvc.lock, the variant key, and log_run against a real
SQLite-backed MLflow store."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from thaw import artifacts, tracking
from thaw.tracking import PHASE_CODES, VARIANT_TAG, RunRecord

# lock_hashes ----------------------------------------------------------------------------------------------------

LOCK = {
    "schema": "2.0",
    "stages": {
        "ingest": {
            "cmd": "python -m stages.ingest --out data/raw/dataset.npz",
            "deps": [
                {"path": "stages/ingest.py", "hash": "md5", "md5": "aaa111", "size": 10},
                {"path": "stages/datasources.py", "hash": "md5", "md5": "bbb222", "size": 20},
            ],
            "params": {"params.yaml": {"seed": 42}},
            "outs": [{"path": "data/raw/dataset.npz", "hash": "md5", "md5": "ccc333", "size": 30}],
        },
        "extract-frozen": {
            "cmd": "python -m stages.extract_frozen",
            "deps": [{"path": "data/raw", "hash": "md5", "md5": "ddd444.dir", "size": 40, "nfiles": 2}],
            "outs": [{"path": "data/features/features.npz", "hash": "md5", "md5": "eee555"}],
        },
        "report": {"cmd": "python -m stages.report", "outs": [{"path": "reports/trace.md"}]},
        "track": {
            "cmd": "python -m stages.track",
            "deps": [{"path": "stages/track.py", "hash": "md5", "md5": "fff666"}],
            "outs": [{"path": "reports/mlflow_run.json", "hash": "md5", "md5": "ggg777"}],
        },
    },
}


def test_lock_hashes_reads_deps_and_outs_and_skips_track(tmp_path: Path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump(LOCK), encoding="utf-8")
    assert tracking.lock_hashes(lock) == {
        "ingest:stages/ingest.py": "aaa111",
        "ingest:stages/datasources.py": "bbb222",
        "ingest:data/raw/dataset.npz": "ccc333",
        "extract-frozen:data/raw": "ddd444.dir",
        "extract-frozen:data/features/features.npz": "eee555",
    }
    with_track = tracking.lock_hashes(str(lock), skip_stages=())
    assert with_track["track:stages/track.py"] == "fff666"
    assert with_track["track:reports/mlflow_run.json"] == "ggg777"
    assert "ingest:stages/ingest.py" not in tracking.lock_hashes(lock, skip_stages=("ingest", "track"))


def test_lock_hashes_missing_or_empty_lock(tmp_path: Path):
    assert tracking.lock_hashes(tmp_path / "dvc.lock") == {}
    empty = tmp_path / "empty.lock"
    empty.write_text("", encoding="utf-8")
    assert tracking.lock_hashes(empty) == {}
    no_stages = tmp_path / "schema-only.lock"
    no_stages.write_text("schema: '2.0'\n", encoding="utf-8")
    assert tracking.lock_hashes(no_stages) == {}


# variant_key ----------------------------------------------------------------------------------------------------


def test_variant_key_is_stable_and_sensitive_to_params_and_code():
    params = {"seed": 42, "finetune.lr": 0.0001, "unfreeze.layers": 2, "data.path": None}
    code = {"finetune:stages/finetune.py": "abc", "unfreeze:stages/unfreeze.py": "def"}
    key = tracking.variant_key(params, code)
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    # Order does not matter, content does.
    assert tracking.variant_key(dict(reversed(params.items())), dict(reversed(code.items()))) == key
    assert tracking.variant_key({**params, "unfreeze.layers": 3}, code) != key
    assert tracking.variant_key({**params, "finetune.lr": 0.001}, code) != key
    assert tracking.variant_key(params, {**code, "unfreeze:stages/unfreeze.py": "changed"}) != key
    assert tracking.variant_key(params, {}) != key
    # Values JSON cannot encode are stringified, not an error.
    assert tracking.variant_key({"path": Path("x/y")}, {}) == tracking.variant_key({"path": "x/y"}, {})


# epoch_metrics --------------------------------------------------------------------------------------------------


def _row(epoch: int, phase: str, base: float) -> dict[str, str]:
    """A history row as read back from the CSV: every value a string."""
    return {
        "epoch": str(epoch),
        "phase": phase,
        "loss": str(base),
        "accuracy": str(1 - base / 2),
        "val_loss": str(base + 0.1),
        "val_accuracy": str(0.9 - base / 2),
    }


HISTORY = [_row(1, "head", 1.0), _row(2, "head", 0.8), _row(3, "finetune", 0.5)]


def test_epoch_metrics_one_axis_with_a_phase_marker():
    points = tracking.epoch_metrics(HISTORY)
    assert len(points) == 3 * 5
    assert all(isinstance(value, float) and isinstance(step, int) for _, value, step in points)
    by_key: dict[str, list[tuple[int, float]]] = {}
    for key, value, step in points:
        by_key.setdefault(key, []).append((step, value))
    assert set(by_key) == {"loss", "accuracy", "val_loss", "val_accuracy", "phase"}
    assert by_key["loss"] == [(1, 1.0), (2, 0.8), (3, 0.5)]
    assert by_key["val_loss"] == [(1, 1.1), (2, 0.9), (3, 0.6)]
    assert by_key["phase"] == [(1, 0.0), (2, 0.0), (3, 1.0)]
    assert tracking.epoch_metrics([_row(1, "pretrain", 2.0)])[-1] == ("phase", float(PHASE_CODES["pretrain"]), 1)
    assert tracking.epoch_metrics([]) == []


# log_run against a real MLflow store ----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    # An experiment created without artifact_root stores artifacts under ./mlruns: keep that inside tmp_path.
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(name)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    files = {}
    for name, text in {"model.keras": "weights", "trace.md": "# trace", "layers.csv": "part,layer\n"}.items():
        files[name] = tmp_path / "outputs" / name
        files[name].parent.mkdir(exist_ok=True)
        files[name].write_text(text, encoding="utf-8")
    return {"uri": uri, "client": MlflowClient(tracking_uri=uri), "artifact_root": tmp_path / "mlartifacts", **files}


def _record(store: dict[str, Any], **changes: Any) -> RunRecord:
    fields: dict[str, Any] = {
        "experiment": "thaw-test",
        "run_name": "layers=2 lr=0.0001",
        "params": {"seed": 42, "unfreeze.layers": 2, "finetune.lr": 0.0001, "data.path": None},
        "history": HISTORY,
        # As tracking.record_from_outputs gathers them: finetune's last-epoch numbers reuse the history's keys.
        "final_metrics": {"test_accuracy": 0.75, "head_test_accuracy": 0.6, "loss": 0.5, "trainable_layers": 4},
        "tags": {"project": "thaw", "unfreeze.layers": "2"},
        "artifacts": {"model": [store["model.keras"]], "report": [store["trace.md"], store["layers.csv"]]},
    }
    fields.update(changes)
    return RunRecord(**fields)


def test_log_run_records_params_curves_metrics_tags_and_artifacts(store: dict[str, Any]):
    client = store["client"]
    result = tracking.log_run(store["uri"], _record(store), "variant-a", store["artifact_root"])
    assert result["tracking_uri"] == store["uri"]
    assert result["variant"] == "variant-a"
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "layers=2 lr=0.0001"
    assert run.info.experiment_id == result["experiment_id"]

    # Params: every one, as strings.
    assert run.data.params == {"seed": "42", "unfreeze.layers": "2", "finetune.lr": "0.0001", "data.path": "None"}

    # Curves: one point per epoch on the global step axis, and the phase marker.
    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(result["run_id"], key))

    assert history("loss") == [(1, 1.0), (2, 0.8), (3, 0.5)]
    assert history("accuracy") == [(1, 0.5), (2, 0.6), (3, 0.75)]
    assert [step for step, _ in history("val_accuracy")] == [1, 2, 3]
    assert [value for _, value in history("val_accuracy")] == pytest.approx([0.4, 0.5, 0.65])
    assert history("phase") == [(1, 0.0), (2, 0.0), (3, 1.0)]

    # Final metrics, at the last epoch's step.
    assert run.data.metrics["test_accuracy"] == 0.75
    assert run.data.metrics["head_test_accuracy"] == 0.6
    assert run.data.metrics["trainable_layers"] == 4.0
    assert history("test_accuracy") == [(3, 0.75)]

    # Tags: the record's own and the variant.
    assert run.data.tags[VARIANT_TAG] == "variant-a"
    assert run.data.tags["project"] == "thaw"
    assert run.data.tags["unfreeze.layers"] == "2"

    # Artifacts, in their folders, in the experiment's location under artifact_root.
    assert sorted(a.path for a in client.list_artifacts(result["run_id"])) == ["model", "report"]
    assert [a.path for a in client.list_artifacts(result["run_id"], "model")] == ["model/model.keras"]
    assert sorted(a.path for a in client.list_artifacts(result["run_id"], "report")) == [
        "report/layers.csv",
        "report/trace.md",
    ]
    experiment = client.get_experiment(result["experiment_id"])
    assert experiment.name == "thaw-test"
    assert experiment.artifact_location == (store["artifact_root"] / "thaw-test").as_uri()
    stored = store["artifact_root"] / "thaw-test" / result["run_id"] / "artifacts" / "report" / "trace.md"
    assert stored.read_text(encoding="utf-8") == "# trace"


def test_log_run_again_with_the_same_variant_reuses_the_run(store: dict[str, Any]):
    client = store["client"]
    first = tracking.log_run(store["uri"], _record(store), "variant-a", store["artifact_root"])
    again = tracking.log_run(
        store["uri"], _record(store, tags={"project": "thaw", "dvc.experiment": "exp-1"}), "variant-a", None
    )
    assert again["run_id"] == first["run_id"]
    assert again["experiment_id"] == first["experiment_id"]
    runs = client.search_runs([first["experiment_id"]])
    assert [r.info.run_id for r in runs] == [first["run_id"]]
    assert runs[0].data.tags["dvc.experiment"] == "exp-1"  # the tags are refreshed
    assert len(client.get_metric_history(first["run_id"], "loss")) == 3  # the curves are not logged twice

    other = tracking.log_run(store["uri"], _record(store), "variant-b", store["artifact_root"])
    assert other["run_id"] != first["run_id"]
    assert other["experiment_id"] == first["experiment_id"]
    assert len(client.search_runs([first["experiment_id"]])) == 2


def test_log_run_without_artifact_root_uses_the_store_default(store: dict[str, Any], tmp_path: Path):
    result = tracking.log_run(store["uri"], _record(store, experiment="elsewhere"), "v", artifact_root=None)
    location = store["client"].get_experiment(result["experiment_id"]).artifact_location
    assert not location.startswith(store["artifact_root"].as_uri())
    assert not store["artifact_root"].exists()


def test_log_run_logs_more_than_one_batch_of_params(store: dict[str, Any]):
    params = {f"p.{i:03d}": i for i in range(150)}  # MLflow takes at most 100 params per batch
    result = tracking.log_run(store["uri"], _record(store, params=params, artifacts={}), "many", None)
    logged = store["client"].get_run(result["run_id"]).data.params
    assert logged == {k: str(v) for k, v in params.items()}


def test_a_failed_log_run_is_marked_failed_and_not_reused(store: dict[str, Any], tmp_path: Path):
    client = store["client"]
    broken = _record(store, artifacts={"model": [tmp_path / "no-such-file.keras"]})
    with pytest.raises(Exception, match="no-such-file"):
        tracking.log_run(store["uri"], broken, "variant-f", store["artifact_root"])
    experiment = client.get_experiment_by_name("thaw-test")
    (failed,) = client.search_runs([experiment.experiment_id])
    assert failed.info.status == "FAILED"

    result = tracking.log_run(store["uri"], _record(store), "variant-f", store["artifact_root"])
    assert result["run_id"] != failed.info.run_id
    assert client.get_run(result["run_id"]).info.status == "FINISHED"


# failing fast, retrying -----------------------------------------------------------------------------------------


def test_transient_tracking_errors_are_retried_and_the_last_one_raised():
    from mlflow.exceptions import MlflowException

    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("database is locked")
        return "logged"

    assert tracking.with_retries(flaky, attempts=4, delay=0.01) == "logged"
    assert len(calls) == 3

    def down() -> None:
        calls.append(1)
        raise OSError("connection refused")

    calls.clear()
    with pytest.raises(OSError, match="connection refused"):
        tracking.with_retries(down, attempts=2, delay=0.01)
    assert len(calls) == 2
    with pytest.raises(KeyError):  # not a tracking error: not retried
        tracking.with_retries(lambda: {}["x"], attempts=3, delay=0.01)


# the run gathered from the stages' outputs ---------------------------------------------------------------------


def _outputs(root: Path) -> dict[str, Path]:
    """The files track reads, as the stages leave them (tiny)."""
    history = [{"epoch": 1, "phase": "head", "loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4}]
    for name in ("data", "base"):
        artifacts.write_json(root / "inputs" / f"{name}.json", {"kind": "none", "path": None})
    for name, _ in tracking.METRIC_FILES:
        artifacts.write_json(root / "metrics" / f"{name}.json", {"test_accuracy": 0.9, "kind": "glyphs"})
    artifacts.write_csv(root / "plots/train_head.csv", history)
    artifacts.write_csv(root / "plots/finetune.csv", [{**history[0], "epoch": 2, "phase": "finetune"}])
    artifacts.write_csv(root / "plots/confusion.csv", [{"actual": "a", "predicted": "a"}])
    for name in ("trace.md", "curves.png", "confusion.png", "layers.csv"):
        artifacts.write_text(root / "reports" / name, name)
    artifacts.write_text(root / "models/finetuned.keras", "model bytes")
    lock = {"schema": "2.0", "stages": {"finetune": {"cmd": "x", "deps": [{"path": "thaw/transfer.py", "md5": "c1"}],
                                                     "outs": [{"path": "models/finetuned.keras", "md5": "m1"}]}}}  # fmt: skip
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    return {"reports": root / "reports", "plots": root / "plots", "metrics": root / "metrics",
            "finetuned": root / "models/finetuned.keras", "lock": root / "dvc.lock", "inputs": root / "inputs"}  # fmt: skip


def _gather(paths: dict[str, Path], params: dict[str, Any], experiment: str | None = None, **more: Path):
    outputs = tracking.StageOutputs(**paths, **more)
    return tracking.record_from_outputs(params, outputs, "thaw", tracking.DvcRun(experiment))


def test_the_run_record_holds_metrics_tags_and_files(tmp_path: Path):
    paths = _outputs(tmp_path)
    params = {"seed": 1, "unfreeze": {"layers": 2}, "finetune": {"lr": 1e-4}}
    record, _ = _gather(paths, params, "bold-cat")
    assert record.run_name == "bold-cat"
    assert record.params == {"seed": 1, "unfreeze.layers": 2, "finetune.lr": 1e-4}
    assert record.final_metrics["head_test_accuracy"] == record.final_metrics["test_accuracy"] == 0.9
    assert "head_kind" not in record.final_metrics  # only numbers are metrics
    assert record.tags["dvc.experiment"] == "bold-cat"
    assert record.tags["thaw.input.data"] == "none"
    assert record.tags["dvc.lock.finetune:models/finetuned.keras"] == "m1"
    assert not any(key.endswith(".py") for key in record.tags)  # code is in the git commit, not in tags
    assert [p.name for p in record.artifacts["model"]] == ["finetuned.keras"]
    assert [row["phase"] for row in record.history] == ["head", "finetune"]


def test_the_variant_key_moves_with_params_and_every_file_track_reads_and_nothing_else(tmp_path: Path):
    paths = _outputs(tmp_path)
    params = {"seed": 1, "unfreeze": {"layers": 2}}
    _, key = _gather(paths, params)
    assert _gather(paths, params, "other")[1] == key
    # DVC reruns track only when its deps or params change: the key must not depend on anything else, such
    # as another stage's code hash in dvc.lock (the committed lock would then differ from a fresh clone's).
    paths["lock"].write_text(paths["lock"].read_text().replace("c1", "c2"))
    assert _gather(paths, params)[1] == key
    assert _gather(paths, {**params, "seed": 2})[1] != key
    for changed in (paths["metrics"] / "finetune.json", paths["inputs"] / "data.json", paths["reports"] / "trace.md",
                    paths["plots"] / "confusion.csv", paths["finetuned"]):  # fmt: skip
        original = changed.read_bytes()
        changed.write_bytes(original + b" ")
        assert _gather(paths, params)[1] != key, changed
        changed.write_bytes(original)
    assert _gather(paths, params)[1] == key


def test_the_experiment_is_marked_as_model_training_so_the_ui_opens_on_its_runs(store: dict[str, Any]):
    client = store["client"]
    created = tracking.ensure_experiment(client, "fresh", store["artifact_root"])
    assert client.get_experiment(created).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    older = client.create_experiment("made-before-the-tag")  # e.g. by an earlier thaw
    assert tracking.ensure_experiment(client, "made-before-the-tag", None) == older
    assert client.get_experiment(older).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_the_run_spans_the_stages_that_ran_and_logs_their_seconds(tmp_path: Path, store: dict[str, Any]):
    paths = _outputs(tmp_path / "project")
    timings = tmp_path / "timings"
    for stage, start, end in (("train-head", 1_000.0, 1_030.5), ("finetune", 1_031.0, 1_100.0)):
        artifacts.write_json(timings / f"{stage}.json", {"stage": stage, "start": start, "end": end})
    record, _ = _gather(paths, {"seed": 1}, timings=timings)
    assert (record.start_ms, record.end_ms) == (1_000_000, 1_100_000)
    assert record.final_metrics["stage_seconds.train-head"] == 30.5
    run_id = tracking.log_run(store["uri"], record, "timed", None)["run_id"]
    info = store["client"].get_run(run_id).info
    assert (info.start_time, info.end_time) == (1_000_000, 1_100_000)  # Duration: the stages' 100 s
    untimed, _ = _gather(paths, {"seed": 1}, timings=tmp_path / "none")
    assert (untimed.start_ms, untimed.end_ms) == (None, None)


def test_the_run_logs_its_training_dataset(tmp_path: Path, store: dict[str, Any]):
    paths = _outputs(tmp_path / "project")
    lock = yaml.safe_load(paths["lock"].read_text())
    lock["stages"]["ingest"] = {"cmd": "x", "outs": [{"path": "data/raw", "md5": "d" * 32 + ".dir"}]}
    paths["lock"].write_text(yaml.safe_dump(lock))
    meta = tmp_path / "meta.json"
    artifacts.write_json(meta, {"rows": 1000, "class_names": list("0123456789"), "row_shape": [32, 32, 3]})
    params = {"data": {"source": "npz", "path": "/data/x.npz"}}
    record, key = _gather(paths, params, raw_meta=meta)
    run_id = tracking.log_run(store["uri"], record, key, None)["run_id"]
    (used,) = store["client"].get_run(run_id).inputs.dataset_inputs
    assert (used.dataset.name, used.dataset.digest, used.dataset.source_type) == ("x.npz", "d" * 32 + ".dir", "local")
    assert json.loads(used.dataset.profile) == {"num_rows": 1000, "num_classes": 10, "image_shape": [32, 32, 3]}
    assert [(t.key, t.value) for t in used.tags] == [("mlflow.data.context", "training")]
    digits, _ = _gather(paths, {"data": {"source": "digits", "path": None}}, raw_meta=meta)
    assert (digits.datasets[0]["name"], digits.datasets[0]["source_type"]) == ("digits", "code")
    meta.write_text(meta.read_text().replace("1000", "999"))  # track reads it: the key moves with it
    assert _gather(paths, params, raw_meta=meta)[1] != key
