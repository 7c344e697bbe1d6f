"""MLflow tracking: one run per pipeline variant, assembled from the records every stage left behind.

Where runs go: `MLFLOW_TRACKING_URI` when set (a tracking server), else the embedded SQLite store
`mlflow.db` at the project root. The root comes from DVC_ROOT, which DVC points at the main workspace even
for queued experiments running in temporary copies, so every run lands in the same store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from thaw.artifacts import HISTORY_KEYS, file_md5, read_csv, read_json
from thaw.config import INPUT_NAMES, flatten
from thaw.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")
VARIANT_TAG = "thaw.variant"
SWEEP_TAG = "thaw.sweep"
ROLE_TAG = "thaw.role"  # "sweep" on a sweep's parent run
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by
MODEL_URI_TAG = "thaw.model_uri"  # the run's MLflow model (models:/<id>)
# MLflow 3's UI opens an experiment on its GenAI overview unless told it holds model training runs.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
PHASE_CODES = {"pretrain": -1, "head": 0, "finetune": 1}
# metrics/<name>.json, and the prefix its values take among the run's final metrics
METRIC_FILES = (("train_head", "head_"), ("finetune", ""), ("unfreeze", ""), ("pretrain", "pretrain_"))


def lock_hashes(lock_path: str | Path, skip_stages: Iterable[str] = ("track",)) -> dict[str, str]:
    """`stage:path -> md5` for the deps and outs recorded in dvc.lock (the lineage of this run)."""
    path = Path(lock_path)
    if not path.is_file():
        return {}
    lock = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    hashes = {}
    for stage, entry in (lock.get("stages") or {}).items():
        if stage in set(skip_stages):
            continue
        for kind in ("deps", "outs"):
            for item in entry.get(kind) or []:
                digest = item.get("md5") or item.get("hash")
                if digest:
                    hashes[f"{stage}:{item['path']}"] = str(digest)
    return hashes


def variant_key(flat_params: Mapping[str, Any], content_hashes: Mapping[str, str]) -> str:
    """A stable id of the pipeline variant: every param plus the content hash of every dependency and output
    (code, inputs, data, models, metrics), so equal keys mean equal inputs and equal results."""
    payload = json.dumps({"params": flat_params, "content": content_hashes}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def epoch_metrics(history: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, int]]:
    """(key, value, step) for every epoch on one global axis, with a `phase` marker (0 head, 1 finetune)."""
    points = []
    for row in history:
        step = int(row["epoch"])
        points += [(key, float(row[key]), step) for key in HISTORY_KEYS]
        points.append(("phase", float(PHASE_CODES[str(row["phase"])]), step))
    return points


@dataclass(frozen=True)
class RunRecord:
    """Everything one pipeline variant logs to MLflow."""

    experiment: str
    run_name: str
    params: dict[str, Any]
    history: list[dict[str, Any]]
    final_metrics: dict[str, float]
    tags: dict[str, str]
    artifacts: dict[str, list[Path]]  # artifact folder in the run -> local files
    # When the stages that ran for this variant started and ended (ms since the epoch); None: when tracked.
    start_ms: int | None = None
    end_ms: int | None = None
    # What the run trained on, as MLflow dataset inputs: name, digest, source_type, source, profile.
    datasets: list[dict[str, str]] = field(default_factory=list)
    # The fine-tuned model to log as an MLflow model: its `.keras` file, class names and image shape.
    model: dict[str, Any] | None = None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise writers of an embedded SQLite store across processes (parallel sweep points).

    SQLite allows one writer at a time and MLflow's first-use schema migration is not safe to run twice at
    once; a server store (http://...) needs no lock.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock"):
        yield


def with_retries(call: Callable[[], T], attempts: int = 4, delay: float = 0.5) -> T:
    """Run `call`, retrying transient failures (a store that is briefly locked or unreachable) with
    exponential backoff from `delay` seconds; the last failure is raised. Only idempotent calls belong here.
    (MLflow's client retries HTTP errors of a server itself; this also covers a briefly locked SQLite file.)"""
    import tenacity
    from mlflow.exceptions import MlflowException

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((MlflowException, OSError)),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=delay, exp_base=2, min=delay),
        before_sleep=lambda state: log.warning(
            "tracking call failed (%s); retry %d of %d", state.outcome.exception(), state.attempt_number, attempts - 1
        ),
        reraise=True,
    )
    return retrying(call)


def ensure_experiment(client: Any, name: str, artifact_root: Path | None) -> str:
    """The id of experiment `name`, created (with its artifacts under `artifact_root`, if given) when missing."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"MLflow experiment {name!r} is deleted: restore it (`mlflow experiments restore --experiment-id "
            f"{experiment.experiment_id}`), purge it (`mlflow gc`), or set tracking.experiment to another name"
        )
    if experiment is not None:
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return str(experiment.experiment_id)
    location = (artifact_root / name).as_uri() if artifact_root else None
    try:
        return str(
            client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        )
    except MlflowException:  # a parallel job created it first
        return str(client.get_experiment_by_name(name).experiment_id)


def find_sweep_parent(client: Any, experiment_id: str, sweep: str) -> str | None:
    """The run id of sweep `sweep`'s parent run, if it exists."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`{ROLE_TAG}` = 'sweep'", max_results=1
    )
    return runs[0].info.run_id if runs else None


def log_run(
    uri: str, record: RunRecord, variant: str, artifact_root: Path | None, sweep: str | None = None
) -> dict[str, str]:
    """Create the variant's run (or find it, when this exact variant was tracked before) and log the record.

    Uses MlflowClient with an explicit run id: no global MLflow state. `artifact_root` is used only when
    the experiment is created in a local store, so artifacts of temporary DVC workspaces are not lost.
    A run of a sweep is tagged with it and nested under the sweep's parent run when that exists.
    """
    from mlflow.tracking import MlflowClient

    with store_lock(uri):
        return _log_run(MlflowClient(tracking_uri=uri), uri, record, variant, artifact_root, sweep)


def _log_run(
    client: Any, uri: str, record: RunRecord, variant: str, artifact_root: Path | None, sweep: str | None
) -> dict[str, str]:
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    experiment_id = ensure_experiment(client, record.experiment, artifact_root)
    tags = dict(record.tags)
    if sweep:
        tags[SWEEP_TAG] = sweep
        if parent := find_sweep_parent(client, experiment_id, sweep):
            tags[PARENT_TAG] = parent

    existing = client.search_runs(
        [experiment_id], filter_string=f"tags.`{VARIANT_TAG}` = '{variant}' and attributes.status = 'FINISHED'",
        max_results=1,
    )  # fmt: skip
    if existing:
        run_id = existing[0].info.run_id
        log.info("variant %s already tracked as run %s; updating its tags", variant, run_id)
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        model_uri = existing[0].data.tags.get(MODEL_URI_TAG, "")
        return {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id, "variant": variant,
                "model_uri": model_uri}  # fmt: skip

    run = client.create_run(experiment_id, start_time=record.start_ms, run_name=record.run_name,
                            tags={VARIANT_TAG: variant, **tags})  # fmt: skip
    run_id = run.info.run_id
    try:
        if record.datasets:
            inputs = [
                DatasetInput(Dataset(**d), tags=[InputTag("mlflow.data.context", "training")]) for d in record.datasets
            ]
            with_retries(lambda: client.log_inputs(run_id, datasets=inputs))
        params = [Param(k, str(v)) for k, v in sorted(record.params.items())]
        timestamp = run.info.start_time
        metrics = [Metric(k, v, timestamp, step) for k, v, step in epoch_metrics(record.history)]
        last_step = max((int(r["epoch"]) for r in record.history), default=0)
        # Final values whose names are also curves (loss, val_accuracy, ...) are already the curve's last point.
        final = {k: v for k, v in record.final_metrics.items() if k not in HISTORY_KEYS}
        metrics += [Metric(k, float(v), timestamp, last_step) for k, v in sorted(final.items())]
        # Logging the same batch or artifact twice changes nothing, so these calls may be retried.
        for start in range(0, max(len(params), len(metrics)), 100):  # MLflow's per-batch limits
            batch = (metrics[start : start + 100], params[start : start + 100])
            with_retries(lambda batch=batch: client.log_batch(run_id, metrics=batch[0], params=batch[1]))
        for folder, files in record.artifacts.items():
            for file in files:
                with_retries(lambda f=file, d=folder: client.log_artifact(run_id, str(f), artifact_path=d or None))
        model_uri = ""
        if record.model:
            model_uri = log_model(client, run_id, experiment_id, record.model, tags)
            client.set_tag(run_id, MODEL_URI_TAG, model_uri)
        # Read back before reporting success: a run whose metrics did not all land is not a finished run.
        missing = {m.key for m in metrics} - set(client.get_run(run_id).data.metrics)
        if missing:
            raise RuntimeError(f"MLflow run {run_id} is missing metrics {sorted(missing)} after logging")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED", end_time=record.end_ms)
    return {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id, "variant": variant,
            "model_uri": model_uri}  # fmt: skip


def log_model(client: Any, run_id: str, experiment_id: str, model: Mapping[str, Any], tags: Mapping[str, str]) -> str:
    """Save the fine-tuned model as an MLflow pyfunc model and log it to the run; its `models:/` URI."""
    import tempfile

    from thaw import serving

    lineage = {k: v for k, v in tags.items() if k in ("git.commit", "dvc.experiment", SWEEP_TAG)}
    with tempfile.TemporaryDirectory(prefix="thaw-mlflow-model-") as tmp:
        folder = serving.save(Path(model["keras"]), list(model["class_names"]), list(model["image_shape"]),
                              Path(tmp) / "model")  # fmt: skip
        return serving.log(client, run_id, experiment_id, folder, lineage)


@dataclass(frozen=True)
class StageOutputs:
    """What the stages wrote that a run is gathered from (`track`'s dvc.yaml deps, and the stage timings)."""

    reports: Path
    plots: Path
    metrics: Path
    finetuned: Path
    lock: Path
    inputs: Path  # the input fingerprints' folder
    raw_meta: Path | None = None  # ingest's meta.json: the dataset's classes and row shape
    timings: Path | None = None  # thaw.stage's per-stage start and end records


@dataclass(frozen=True)
class DvcRun:
    """How DVC ran this variant: the experiment's name and its baseline commit (`dvc exp run` only)."""

    experiment: str | None = None
    baseline_rev: str | None = None


def record_from_outputs(
    params: Mapping[str, Any], outputs: StageOutputs, experiment: str, dvc: DvcRun = DvcRun()
) -> tuple[RunRecord, str]:
    """Gather a variant's run from the outputs the stages recorded (so stages that DVC skipped still
    contribute their numbers); return it with its variant key. `params` is the whole config, as plain data."""
    reports, plots, metrics, finetuned = outputs.reports, outputs.plots, outputs.metrics, outputs.finetuned
    lock, inputs, raw_meta, timings = outputs.lock, outputs.inputs, outputs.raw_meta, outputs.timings
    flat = flatten(params)
    hashes = lock_hashes(lock)
    history = read_csv(plots / "train_head.csv") + read_csv(plots / "finetune.csv")
    final: dict[str, float] = {}
    for name, prefix in METRIC_FILES:
        values = read_json(metrics / f"{name}.json")
        final.update({prefix + k: float(v) for k, v in values.items() if isinstance(v, int | float)})
    exp_name = dvc.experiment
    # Data and model lineage as tags; the code's hashes are in the variant's git commit.
    tags = {f"dvc.lock.{k}": v for k, v in hashes.items() if not k.split(":", 1)[1].endswith(".py")}
    for name in INPUT_NAMES:  # the external inputs' content hashes, "none" for the embedded default
        tags[f"thaw.input.{name}"] = str(read_json(inputs / f"{name}.json").get("md5") or "none")
    tags.update({"project": "thaw", "unfreeze.layers": str(flat.get("unfreeze.layers")),
                 "finetune.lr": str(flat.get("finetune.lr"))})  # fmt: skip
    if commit := git_commit(Path.cwd()):
        tags["git.commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    if exp_name:
        tags["dvc.experiment"] = exp_name
    if baseline := dvc.baseline_rev:
        tags["dvc.baseline_rev"] = baseline
    run_name = exp_name or f"layers={flat.get('unfreeze.layers')} lr={flat.get('finetune.lr')}"
    files = {
        "model": [finetuned],
        "report": [
            reports / "trace.md",
            reports / "curves.png",
            reports / "confusion.png",
            reports / "layers.csv",
        ],
        "history": [plots / "train_head.csv", plots / "finetune.csv", plots / "confusion.csv"],
    }
    spans = read_timings(timings) if timings else {}
    final.update({f"stage_seconds.{stage}": round(end - start, 3) for stage, (start, end) in spans.items()})
    start_ms = int(min(start for start, _ in spans.values()) * 1000) if spans else None
    end_ms = int(max(end for _, end in spans.values()) * 1000) if spans else None
    meta = read_json(raw_meta) if raw_meta else None
    # The ingested dataset is ingest's one folder output (a `.dir` hash); its deps are files (code, fingerprint).
    digest = next((h for key, h in hashes.items() if key.startswith("ingest:") and h.endswith(".dir")), "unknown")
    datasets = [training_dataset(flat, meta, digest)] if meta else []
    model = {"keras": finetuned, "class_names": meta["class_names"], "image_shape": meta["row_shape"]} if meta else None
    record = RunRecord(experiment, run_name, flat, history, final, tags, files, start_ms, end_ms, datasets, model)
    # Keyed on content: every param and the md5 of every file this stage reads (its dvc.yaml deps: the input
    # fingerprints, the model, metrics, curves and reports), so a variant whose data or results changed is a
    # new run, never a stale one. Only deps: a key read from dvc.lock's other entries would move when DVC
    # has no reason to rerun track (a code change with byte-identical outputs), and the committed lock with it.
    read = [inputs / f"{name}.json" for name in INPUT_NAMES] + [metrics / f"{n}.json" for n, _ in METRIC_FILES]
    read += [raw_meta] if raw_meta else []
    read += [finetuned, *files["report"], *files["history"]]
    return record, variant_key(flat, {path.as_posix(): file_md5(path) for path in read})


def read_timings(folder: Path) -> dict[str, tuple[float, float]]:
    """stage -> (start, end) in seconds since the epoch, from the records `thaw.stage` leaves for each stage
    that ran in this workspace (stages DVC restored from its cache left none: they did not run)."""
    spans = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = read_json(path)
        spans[str(record["stage"])] = (float(record["start"]), float(record["end"]))
    return spans


def training_dataset(flat_params: Mapping[str, Any], meta: Mapping[str, Any], digest: str) -> dict[str, str]:
    """The MLflow dataset input of a run: the ingested data, named after its source, digested by the content
    hash DVC recorded for it (what the run really read), with its rows, classes and image shape."""
    source = str(flat_params.get("data.source"))
    path = flat_params.get("data.path")
    profile = {"num_rows": meta["rows"], "num_classes": len(meta["class_names"]), "image_shape": meta["row_shape"]}
    return {
        "name": Path(str(path)).name if path else source,
        "digest": digest[:36],
        "source_type": "local" if path else "code",
        "source": json.dumps({"uri": str(path)} if path else {"name": "scikit-learn bundled digits"}),
        "profile": json.dumps(profile),
    }
