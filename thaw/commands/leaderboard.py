"""leaderboard: print a sweep (or every pipeline run) read from MLflow, one row per (unfreeze.layers,
finetune.lr) with its seeds' mean and 95 % interval, ranked by a validation metric; `near_best` marks the
rows indistinguishable from the best.

thaw leaderboard                       # every run of the experiment
thaw leaderboard --sweep depth-lr      # one sweep
thaw leaderboard --sweep depth-lr --summarize   # also nest its runs and log the summary
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from thaw import config, store
from thaw.sweeps import runs, stats


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="thaw leaderboard", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--sweep", help="a sweep id (tracking.sweep); default: all runs")
    parser.add_argument("--experiment", default="thaw")
    parser.add_argument("--metric", default="val_accuracy", help="rank by this metric (default: %(default)s)")
    parser.add_argument("--summarize", action="store_true", help="log the sweep's summary to its parent run")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else mlflow.db at the project root")
    parser.add_argument("--registered-model", help="with --summarize: register the best point's model here as "
                        "`champion` (default: tracking.registered_model of params.yaml, else 'thaw')")  # fmt: skip
    args = parser.parse_args(argv)
    if args.summarize and not args.sweep:
        parser.error("--summarize needs --sweep")

    from mlflow.tracking import MlflowClient

    uri = args.tracking_uri or store.Store.from_environ().uri
    if args.summarize:
        name = args.registered_model or registered_model_name(Path("params.yaml"))
        rows = runs.summarize_sweep(uri, args.experiment, args.sweep, args.metric, name)
    else:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(args.experiment)
        if experiment is None:
            raise SystemExit(f"no experiment {args.experiment!r} in {uri}: run the pipeline first (dvc repro)")
        ranked = runs.points(client, experiment.experiment_id, args.sweep, args.metric)
        rows = stats.leaderboard_rows(stats.cells(ranked, args.metric))
    print(stats.format_table(rows))


def registered_model_name(params: Path) -> str:
    return config.load(params).tracking.registered_model if params.is_file() else "thaw"


if __name__ == "__main__":
    main()
