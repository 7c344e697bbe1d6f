"""track: log this pipeline variant to MLflow as one run: every param (flattened), the per-epoch curves of
train-head and finetune on one epoch axis with a `phase` marker, test metrics, lineage tags (git commit,
DVC experiment, dvc.lock hashes) and the artifacts (model, trace report, curves, confusion matrix, layers).

It reads only what the stages recorded, so stages that DVC skipped still contribute their numbers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from thaw import artifacts, stage, store, tracking

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    args, params = stage.parse(argv, __doc__, "lock", "finetuned", "reports", "plots", "metrics", "inputs",
                               "raw_meta", "variant", "out")  # fmt: skip
    experiment = params.tracking.experiment
    tracking_store = store.Store.from_environ()  # the environment, read once
    store.check_store(tracking_store, experiment)  # a wrong server or login: one line naming the fix
    outputs = tracking.StageOutputs(Path(args.reports), Path(args.plots), Path(args.metrics), Path(args.finetuned),
                                    Path(args.lock), Path(args.inputs), Path(args.raw_meta), stage.TIMINGS)  # fmt: skip
    # DVC names the experiment and its baseline commit in the environment of `dvc exp run`'s stages.
    dvc_run = tracking.DvcRun(os.environ.get("DVC_EXP_NAME"), os.environ.get("DVC_EXP_BASELINE_REV"))
    record, variant = tracking.record_from_outputs(dataclasses.asdict(params), outputs, experiment, dvc_run)
    uri = tracking_store.uri
    result = tracking.log_run(uri, record, variant, tracking_store.artifact_root, sweep=params.tracking.sweep)
    log.info("tracked run %s in %s (experiment %r), model %s", result["run_id"], store.redact(uri), experiment,
             result["model_uri"])  # fmt: skip
    if params.tracking.register and result["model_uri"]:
        from mlflow.tracking import MlflowClient

        from thaw import serving

        lineage = {k: v for k, v in record.tags.items() if k in ("git.commit", "dvc.experiment")}
        version = serving.register(MlflowClient(tracking_uri=uri), params.tracking.registered_model,
                                   result["model_uri"], result["run_id"], None, lineage)  # fmt: skip
        log.info("registered as %s version %s", params.tracking.registered_model, version)
    record_out = {**result, "tracking_uri": store.redact(uri), "run_name": record.run_name, "experiment": experiment}
    artifacts.write_json(args.out, record_out)
    artifacts.write_json(args.variant, {"experiment": experiment, "variant": variant})
    shutil.rmtree(stage.TIMINGS, ignore_errors=True)  # used: the next run's span starts with its first stage


if __name__ == "__main__":
    stage.run(main)
