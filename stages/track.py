"""track: log this pipeline variant to MLflow as one run: every param (flattened), the per-epoch curves of
train-head and finetune on one epoch axis with a `phase` marker, test metrics, lineage tags (git commit,
DVC experiment, dvc.lock hashes) and the artifacts (model, trace report, curves, confusion matrix, layers).

It reads only what the stages recorded, so stages that DVC skipped still contribute their numbers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from stages import artifacts, cli, tracking
from stages.params import flatten, load_section, read_params

log = logging.getLogger(__name__)

INPUTS = ("data", "base")
# metrics/<name>.json, and the prefix its values take among the run's final metrics
METRIC_FILES = (("train_head", "head_"), ("finetune", ""), ("unfreeze", ""), ("pretrain", "pretrain_"))


def build_record(
    params: dict,
    reports: Path,
    plots: Path,
    metrics: Path,
    finetuned: Path,
    lock: Path,
    inputs: Path,
    experiment: str,
) -> tuple[tracking.RunRecord, str]:
    """Gather the run's contents from the recorded outputs; return it with its variant key."""
    flat = flatten(params)
    hashes = tracking.lock_hashes(lock)
    history = artifacts.read_csv(plots / "train_head.csv") + artifacts.read_csv(plots / "finetune.csv")
    final: dict[str, float] = {}
    for name, prefix in METRIC_FILES:
        values = artifacts.read_json(metrics / f"{name}.json")
        final.update({prefix + k: float(v) for k, v in values.items() if isinstance(v, int | float)})
    exp_name = os.environ.get("DVC_EXP_NAME")
    tags = {f"dvc.lock.{k}": v for k, v in hashes.items() if not k.split(":", 1)[1].startswith("stages/")}
    for name in INPUTS:  # the external inputs' content hashes, "none" for the embedded default
        tags[f"thaw.input.{name}"] = str(artifacts.read_json(inputs / f"{name}.json").get("md5") or "none")
    tags.update({"project": "thaw", "unfreeze.layers": str(flat.get("unfreeze.layers")),
                 "finetune.lr": str(flat.get("finetune.lr"))})  # fmt: skip
    if commit := tracking.git_commit(Path.cwd()):
        tags["git.commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    if exp_name:
        tags["dvc.experiment"] = exp_name
    if baseline := os.environ.get("DVC_EXP_BASELINE_REV"):
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
    record = tracking.RunRecord(experiment, run_name, flat, history, final, tags, files)
    # Keyed on content: every param and the md5 of every file this stage reads (its dvc.yaml deps: the input
    # fingerprints, the model, metrics, curves and reports), so a variant whose data or results changed is a
    # new run, never a stale one. Only deps: a key read from dvc.lock's other entries would move when DVC
    # has no reason to rerun track (a code change with byte-identical outputs), and the committed lock with it.
    read = [*(inputs / f"{name}.json" for name in INPUTS), finetuned, *(metrics / f"{n}.json" for n, _ in METRIC_FILES)]
    read += [*files["report"], *files["history"]]
    return record, tracking.variant_key(flat, {path.as_posix(): artifacts.file_md5(path) for path in read})


def main(argv: Sequence[str] | None = None) -> None:
    args = cli.parse(argv, __doc__, "lock", "finetuned", "reports", "plots", "metrics", "inputs", "variant", "out")
    tracking_params = load_section(args.params, "tracking")
    experiment = tracking_params.experiment
    record, variant = build_record(
        read_params(args.params), Path(args.reports), Path(args.plots), Path(args.metrics), Path(args.finetuned),
        Path(args.lock), Path(args.inputs), experiment,
    )  # fmt: skip
    root = tracking.project_root()
    uri = tracking.tracking_uri(root)
    local_store = "MLFLOW_TRACKING_URI" not in os.environ
    result = tracking.log_run(
        uri, record, variant, artifact_root=root / "mlartifacts" if local_store else None, sweep=tracking_params.sweep
    )
    log.info("tracked run %s in %s (experiment %r)", result["run_id"], uri, experiment)
    artifacts.write_json(args.out, {**result, "run_name": record.run_name, "experiment": experiment})
    artifacts.write_json(args.variant, {"experiment": experiment, "variant": variant})


if __name__ == "__main__":
    cli.run(main)
