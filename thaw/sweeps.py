"""Sweeps in MLflow: a parent run per sweep, its points nested under it, a leaderboard and a heatmap.

Both ways into a sweep (DVC's queue, Hydra's multirun) tag every point's run with `thaw.sweep`; this module
groups those runs into cells, one per (unfreeze.layers, finetune.lr) with every seed swept in it, ranks the
cells by the validation metric with a 95 % interval each (`thaw.intervals`), marks the cells that cannot be
told apart from the best, and logs the summary (best cell, leaderboard, heatmap) to the parent run.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from thaw.artifacts import atomic_path, write_csv, write_text
from thaw.intervals import Interval, accuracy_interval, indistinguishable
from thaw.reporting import markdown_table
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


@dataclass(frozen=True)
class Cell:
    """The runs of one (unfreeze.layers, finetune.lr) point, over every seed swept, with their intervals."""

    layers: str
    lr: str
    points: tuple[Point, ...]  # best first
    score: float  # the mean of the ranking metric
    val: Interval | None
    test: Interval | None
    near_best: bool = False  # its validation interval overlaps the best cell's


def format_lr(lr: str) -> str:
    """A learning rate for people: 7.5e-05, 0.001."""
    try:
        return f"{float(lr):.2g}"
    except ValueError:
        return lr


def _rows(points: Sequence[Point], key: str) -> int | None:
    rows = {int(p.metrics[key]) for p in points if key in p.metrics}
    return rows.pop() if len(rows) == 1 else None


def cells(ranked: Sequence[Point], metric: str = "val_accuracy") -> list[Cell]:
    """Group runs by (unfreeze.layers, finetune.lr), best `metric` mean first; mark the cells whose
    validation-accuracy interval overlaps the best cell's. Test accuracy is shown, never used to rank."""
    groups: dict[tuple[str, str], list[Point]] = {}
    for p in ranked:
        groups.setdefault((p.layers, p.lr), []).append(p)
    lower_is_better = metric.endswith("loss")
    worst = float("inf") if lower_is_better else float("-inf")
    built = []
    for (layers, lr), members in groups.items():
        scores = [p.metrics[metric] for p in members if metric in p.metrics]
        val = accuracy_interval([p.metrics["val_accuracy"] for p in members if "val_accuracy" in p.metrics],
                                _rows(members, "val_rows"))  # fmt: skip
        test = accuracy_interval([p.metrics["test_accuracy"] for p in members if "test_accuracy" in p.metrics],
                                 _rows(members, "test_rows"))  # fmt: skip
        score = sum(scores) / len(scores) if scores else worst
        built.append(Cell(layers, lr, tuple(members), score, val, test))
    built.sort(key=lambda c: c.score, reverse=not lower_is_better)
    best = built[0].val if built else None
    return [Cell(c.layers, c.lr, c.points, c.score, c.val, c.test, i == 0 or indistinguishable(best, c.val))
            for i, c in enumerate(built)]  # fmt: skip


def leaderboard_rows(ranked_cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """One row per cell: its settings, seeds, validation and test accuracy with 95 % intervals."""
    return [
        {
            "rank": i,
            "run": c.points[0].name,
            "unfreeze.layers": c.layers,
            "finetune.lr": format_lr(c.lr),
            "seeds": len(c.points),
            "val_accuracy": str(c.val) if c.val else "",
            "test_accuracy": str(c.test) if c.test else "",
            "head_test_accuracy": _mean(c.points, "head_test_accuracy"),
            "near_best": "yes" if c.near_best else "",
            "run_id": c.points[0].run_id,
        }
        for i, c in enumerate(ranked_cells, start=1)
    ]


def _mean(points: Sequence[Point], key: str) -> str:
    values = [p.metrics[key] for p in points if key in p.metrics]
    return f"{sum(values) / len(values):.3f}" if values else ""


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width terminal table."""
    if not rows:
        return "(no finished runs)"
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def plot_heatmap(ranked_cells: Sequence[Cell], path: str | Path) -> None:
    """Validation and test accuracy over (unfreeze.layers x finetune.lr): each cell's mean and 95 % interval;
    `*` marks the cells indistinguishable from the best by validation accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers = sorted({c.layers for c in ranked_cells}, key=lambda v: float(v) if v.replace(".", "").isdigit() else 0)
    lrs = sorted({c.lr for c in ranked_cells}, key=float)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * len(lrs) * 2, 1.8 + 0.9 * len(layers)), dpi=100)
    for ax, name in zip(axes, ("val_accuracy", "test_accuracy"), strict=True):
        grid = np.full((len(layers), len(lrs)), np.nan)
        labels: dict[tuple[int, int], str] = {}
        for c in ranked_cells:
            interval = c.val if name == "val_accuracy" else c.test
            if interval is None:
                continue
            i, j = layers.index(c.layers), lrs.index(c.lr)
            grid[i, j] = interval.mean
            mark = "*" if c.near_best else ""
            labels[(i, j)] = f"{interval.mean:.3f}{mark}\n[{interval.low:.2f}, {interval.high:.2f}]"
        image = ax.imshow(grid, cmap="viridis", vmin=np.nanmin(grid) if np.isfinite(grid).any() else 0, aspect="auto")
        ax.set_xticks(range(len(lrs)), [format_lr(lr) for lr in lrs])
        ax.set_yticks(range(len(layers)), layers)
        ax.set_xlabel("finetune.lr")
        ax.set_ylabel("unfreeze.layers")
        ax.set_title(f"{name}: mean [95 % interval]")
        for (i, j), text in labels.items():
            ax.text(j, i, text, ha="center", va="center", color="white", fontsize=8)
        fig.colorbar(image, ax=ax)
    fig.text(0.01, 0.01, "* indistinguishable from the best by validation accuracy (95 % intervals overlap)",
             fontsize=8)  # fmt: skip
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


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


class SweepCallback(Callback):
    """Hydra callback of `thaw sweep`: before the jobs, check the tracking store, warm the cache and open the
    sweep's parent run; after them, log the summary."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        import subprocess

        from mlflow.tracking import MlflowClient

        from thaw.store import artifact_root, check_store, project_root, tracking_uri

        root = project_root()
        uri = tracking_uri(root)
        # A wrong server or login fails here, in seconds, before the warm-up trains anything.
        check_store(uri, experiment=config.tracking.experiment)
        if config.sweep.warm_up:
            # Computed once here, the shared upstream stages are restored from DVC's run-cache by every point.
            log.info("warm-up: dvc repro train-head")
            start_up = time.perf_counter()
            subprocess.run(["dvc", "repro", "train-head"], cwd=root, check=True)
            log.info("warm-up: done in %.1f s", time.perf_counter() - start_up)
        if config.sweep.share:  # for points on other machines: each fetches the run-cache before it runs
            log.info("dvc push --run-cache (to the DVC remote)")
            subprocess.run(["dvc", "push", "--run-cache"], cwd=root, check=True)
        with store_lock(uri):
            client = MlflowClient(tracking_uri=uri)
            experiment_id = ensure_experiment(client, config.tracking.experiment, artifact_root(root))
            parent = ensure_sweep_parent(client, experiment_id, config.sweep.id, list(config.hydra.overrides.task))
        log.info("sweep %s: parent run %s in %s", config.sweep.id, parent, uri)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from thaw.store import project_root, tracking_uri

        rows = summarize_sweep(tracking_uri(project_root()), config.tracking.experiment, config.sweep.id,
                               config.sweep.objective, config.tracking.registered_model)  # fmt: skip
        print(format_table(rows))
