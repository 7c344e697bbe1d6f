"""Sweeps in MLflow: a parent run per sweep, its points nested under it, a leaderboard and a heatmap.

Both ways into a sweep (DVC's queue, Hydra's multirun) tag every point's run with `thaw.sweep`; this module
groups those runs, ranks them, and logs the summary (best point, leaderboard, heatmap) to the parent run.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from stages.artifacts import atomic_path, write_csv, write_text
from stages.reporting import markdown_table
from stages.tracking import PARENT_TAG, ROLE_TAG, SWEEP_TAG, ensure_experiment, find_sweep_parent, store_lock

log = logging.getLogger(__name__)

LEADERBOARD_METRICS = ("val_accuracy", "test_accuracy", "head_test_accuracy", "val_loss")


@dataclass(frozen=True)
class Point:
    """One run of the leaderboard."""

    run_id: str
    name: str
    sweep: str | None
    layers: str
    lr: str
    metrics: dict[str, float]
    params: dict[str, str]


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


def sweep_overrides(ranked: Sequence[Point]) -> dict[str, str]:
    """Each point's overrides, as `key=value` of the params that vary across the sweep (run id -> text)."""
    keys = sorted({k for p in ranked for k in p.params if len({q.params.get(k) for q in ranked}) > 1})
    keys = [k for k in keys if k != "tracking.sweep"]
    return {p.run_id: " ".join(f"{k}={p.params.get(k)}" for k in keys) for p in ranked}


def leaderboard_rows(ranked: Sequence[Point]) -> list[dict[str, Any]]:
    return [
        {
            "rank": i,
            "run": p.name,
            "unfreeze.layers": p.layers,
            "finetune.lr": p.lr,
            **{m: f"{p.metrics[m]:.4f}" if m in p.metrics else "" for m in LEADERBOARD_METRICS},
            "run_id": p.run_id,
        }
        for i, p in enumerate(ranked, start=1)
    ]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width terminal table."""
    if not rows:
        return "(no finished runs)"
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def plot_heatmap(ranked: Sequence[Point], path: str | Path) -> None:
    """Validation and test accuracy over (unfrozen layers x fine-tune learning rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers = sorted({p.layers for p in ranked}, key=lambda v: float(v) if v.replace(".", "").isdigit() else 0)
    lrs = sorted({p.lr for p in ranked}, key=float)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(lrs) * 2, 1.5 + 0.7 * len(layers)), dpi=100)
    for ax, metric in zip(axes, ("val_accuracy", "test_accuracy"), strict=True):
        grid = np.full((len(layers), len(lrs)), np.nan)
        for p in ranked:  # several runs of one cell (repeats): keep the best
            i, j = layers.index(p.layers), lrs.index(p.lr)
            if metric in p.metrics:
                grid[i, j] = np.nanmax([grid[i, j], p.metrics[metric]])
        image = ax.imshow(grid, cmap="viridis", vmin=np.nanmin(grid) if np.isfinite(grid).any() else 0, aspect="auto")
        ax.set_xticks(range(len(lrs)), lrs)
        ax.set_yticks(range(len(layers)), layers)
        ax.set_xlabel("finetune.lr")
        ax.set_ylabel("unfreeze.layers")
        ax.set_title(metric)
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="white")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def summarize_sweep(uri: str, experiment: str, sweep: str, metric: str = "val_accuracy") -> list[dict[str, Any]]:
    """Nest the sweep's runs under its parent and log the summary there: best point, leaderboard, heatmap."""
    from mlflow.tracking import MlflowClient

    with store_lock(uri):
        return _summarize(MlflowClient(tracking_uri=uri), experiment, sweep, metric)


def _summarize(client: Any, experiment: str, sweep: str, metric: str) -> list[dict[str, Any]]:
    from mlflow.entities import Metric, Param, RunTag

    experiment_id = ensure_experiment(client, experiment, artifact_root=None)
    parent = ensure_sweep_parent(client, experiment_id, sweep)
    ranked = points(client, experiment_id, sweep, metric)
    rows = leaderboard_rows(ranked)
    overrides = sweep_overrides(ranked)
    for p in ranked:  # points tracked before the parent existed (DVC's queue) are nested now
        client.log_batch(p.run_id, tags=[RunTag(PARENT_TAG, parent), RunTag("thaw.overrides", overrides[p.run_id])])
    if ranked:
        best = ranked[0]
        client.log_batch(
            parent,
            metrics=[Metric(f"best_{k}", v, 0, 0) for k, v in sorted(best.metrics.items()) if k in LEADERBOARD_METRICS],
            params=[Param("best.unfreeze.layers", best.layers), Param("best.finetune.lr", best.lr)],
            tags=[RunTag("thaw.best_run_id", best.run_id), RunTag("thaw.points", str(len(ranked)))],
        )
        with tempfile.TemporaryDirectory() as tmp:
            write_text(Path(tmp) / "leaderboard.md", markdown_table(list(rows[0]), [list(r.values()) for r in rows]))
            write_csv(Path(tmp) / "leaderboard.csv", rows)
            plot_heatmap(ranked, Path(tmp) / "heatmap.png")
            client.log_artifacts(parent, tmp, artifact_path="summary")
    client.set_terminated(parent, status="FINISHED")
    log.info("sweep %s: %d points, best %s", sweep, len(ranked), rows[0]["run"] if rows else "-")
    return rows


class SweepCallback(Callback):
    """Hydra callback of `stages.sweep`: before the jobs, warm the cache and open the sweep's parent run;
    after them, log the summary."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        import os
        import subprocess

        from mlflow.tracking import MlflowClient

        from stages.tracking import project_root, tracking_uri

        root = project_root()
        if config.sweep.warm_up:
            # Computed once here, the shared upstream stages are restored from DVC's run-cache by every point.
            log.info("warm-up: dvc repro train-head")
            subprocess.run(["dvc", "repro", "train-head"], cwd=root, check=True)
        if config.sweep.share:  # for points on other machines: each fetches the run-cache before it runs
            log.info("dvc push --run-cache (to the DVC remote)")
            subprocess.run(["dvc", "push", "--run-cache"], cwd=root, check=True)
        uri = tracking_uri(root)
        local = "MLFLOW_TRACKING_URI" not in os.environ
        with store_lock(uri):
            client = MlflowClient(tracking_uri=uri)
            experiment_id = ensure_experiment(
                client, config.tracking.experiment, root / "mlartifacts" if local else None
            )
            parent = ensure_sweep_parent(client, experiment_id, config.sweep.id, list(config.hydra.overrides.task))
        log.info("sweep %s: parent run %s in %s", config.sweep.id, parent, uri)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from stages.tracking import project_root, tracking_uri

        rows = summarize_sweep(
            tracking_uri(project_root()), config.tracking.experiment, config.sweep.id, config.sweep.objective
        )
        print(format_table(rows))
