"""A sweep in MLflow: a parent run per sweep, its points nested under it, the summary (best cell, leaderboard,
heatmap) logged there and the best point's model registered as the champion.

Both ways into a sweep (DVC's queue, Hydra's multirun) tag every point's run with `thaw.sweep`; this module
reads those runs, hands them to thaw/sweeps/stats.py to rank, and writes the result back.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thaw.artifacts import write_csv, write_text
from thaw.reporting import markdown_table
from thaw.sweeps.plots import plot_heatmap
from thaw.sweeps.stats import LEADERBOARD_METRICS, Point, cells, format_lr, leaderboard_rows, sweep_overrides
from thaw.tracking import (
    MODEL_URI_TAG,
    PARENT_TAG,
    ROLE_TAG,
    SWEEP_TAG,
    ensure_experiment,
    find_sweep_parent,
    store_lock,
)

log = logging.getLogger(__name__)


def ensure_sweep_parent(client: Any, experiment_id: str, sweep: str, overrides: Sequence[str] = ()) -> str:
    """The parent run of `sweep`, created (and left running until the summary) when missing."""
    if parent := find_sweep_parent(client, experiment_id, sweep):
        return parent
    run = client.create_run(
        experiment_id,
        run_name=f"sweep {sweep}",
        tags={SWEEP_TAG: sweep, ROLE_TAG: "sweep", "thaw.overrides": " ".join(overrides)},
    )
    return run.info.run_id


def points(client: Any, experiment_id: str, sweep: str | None, metric: str) -> list[Point]:
    """The finished pipeline runs of `sweep` (or of the whole experiment), best `metric` first."""
    query = "attributes.status = 'FINISHED'"  # parents are dropped below: `!=` would also drop untagged runs
    if sweep:
        query += f" and tags.`{SWEEP_TAG}` = '{sweep}'"
    runs = client.search_runs([experiment_id], filter_string=query, max_results=5000)
    found = [
        Point(
            run_id=r.info.run_id,
            name=r.info.run_name or r.info.run_id,
            sweep=r.data.tags.get(SWEEP_TAG),
            layers=r.data.params.get("unfreeze.layers", "?"),
            lr=r.data.params.get("finetune.lr", "?"),
            metrics=dict(r.data.metrics),
            params=dict(r.data.params),
        )
        for r in runs
        if ROLE_TAG not in r.data.tags
    ]
    worst = float("inf") if metric.endswith("loss") else float("-inf")
    return sorted(found, key=lambda p: p.metrics.get(metric, worst), reverse=not metric.endswith("loss"))


CHAMPION = "champion"
CHAMPION_RULE = "best cell by mean validation accuracy over its seeds; its best seed's model"


def summarize_sweep(
    uri: str, experiment: str, sweep: str, metric: str = "val_accuracy", registered_model: str | None = None
) -> list[dict[str, Any]]:
    """Nest the sweep's runs under its parent and log the summary there: best point, leaderboard, heatmap;
    with `registered_model`, register the best point's model there and point the `champion` alias at it."""
    from mlflow.tracking import MlflowClient

    with store_lock(uri):
        return _summarize(MlflowClient(tracking_uri=uri), experiment, sweep, metric, registered_model)


def register_champion(client: Any, name: str, sweep: str, run_id: str) -> str | None:
    """Register run `run_id`'s model as a new version of `name`, aliased `champion`, with its lineage (sweep,
    DVC experiment, git commit, the selection rule); its version, or None for a run without a model."""
    from thaw import serving

    tags = client.get_run(run_id).data.tags
    model_uri = tags.get(MODEL_URI_TAG)
    if not model_uri:
        log.warning("sweep %s: best run %s has no MLflow model; no champion registered", sweep, run_id)
        return None
    lineage = {"thaw.sweep": sweep, "thaw.rule": CHAMPION_RULE, "dvc.experiment": tags.get("dvc.experiment", ""),
               "git.commit": tags.get("git.commit", "")}  # fmt: skip
    return serving.register(client, name, model_uri, run_id, CHAMPION, lineage)


def _summarize(
    client: Any, experiment: str, sweep: str, metric: str, registered_model: str | None
) -> list[dict[str, Any]]:
    from mlflow.entities import Metric, Param, RunTag

    experiment_id = ensure_experiment(client, experiment, artifact_root=None)
    parent = ensure_sweep_parent(client, experiment_id, sweep)
    ranked = points(client, experiment_id, sweep, metric)
    ranked_cells = cells(ranked, metric)
    rows = leaderboard_rows(ranked_cells)
    overrides = sweep_overrides(ranked)
    for p in ranked:  # points tracked before the parent existed (DVC's queue) are nested now
        client.log_batch(p.run_id, tags=[RunTag(PARENT_TAG, parent), RunTag("thaw.overrides", overrides[p.run_id])])
    if ranked_cells:
        best = ranked_cells[0]
        metrics = [Metric(f"best_{k}", v, 0, 0) for k, v in sorted(best.points[0].metrics.items())
                   if k in LEADERBOARD_METRICS]  # fmt: skip
        for name, interval in (("val_accuracy", best.val), ("test_accuracy", best.test)):
            if interval is not None:  # the best cell's mean over its seeds and its 95 % interval
                metrics += [Metric(f"best_cell_{name}_{part}", value, 0, 0)
                            for part, value in (("mean", interval.mean), ("low", interval.low),
                                                ("high", interval.high))]  # fmt: skip
        near = "; ".join(f"unfreeze.layers={c.layers} finetune.lr={format_lr(c.lr)}"
                         for c in ranked_cells if c.near_best)  # fmt: skip
        client.log_batch(
            parent,
            metrics=metrics,
            params=[
                Param("best.unfreeze.layers", best.layers),
                Param("best.finetune.lr", best.lr),
                Param("best.seeds", str(len(best.points))),
            ],
            tags=[
                RunTag("thaw.best_run_id", best.points[0].run_id),
                RunTag("thaw.points", str(len(ranked))),
                RunTag("thaw.indistinguishable_from_best", near),
            ],
        )
        if registered_model and (version := register_champion(client, registered_model, sweep, best.points[0].run_id)):
            client.set_tag(parent, "thaw.champion", f"models:/{registered_model}@{CHAMPION} (version {version})")
            log.info("sweep %s: champion is %s version %s", sweep, registered_model, version)
        with tempfile.TemporaryDirectory() as tmp:
            write_text(Path(tmp) / "leaderboard.md", markdown_table(list(rows[0]), [list(r.values()) for r in rows]))
            write_csv(Path(tmp) / "leaderboard.csv", rows)
            plot_heatmap(ranked_cells, Path(tmp) / "heatmap.png")
            client.log_artifacts(parent, tmp, artifact_path="summary")
    client.set_terminated(parent, status="FINISHED")
    log.info("sweep %s: %d points, best %s", sweep, len(ranked), rows[0]["run"] if rows else "-")
    return rows
