"""A sweep's statistics: its points grouped into cells, one per (unfreeze.layers, finetune.lr) with every seed
swept in it, ranked by the validation metric with a 95 % interval each (`thaw.intervals`), the cells that
cannot be told apart from the best marked, and the leaderboard's rows. Plain data in, plain data out: no
MLflow, no plotting (thaw/sweeps/runs.py reads the points, thaw/sweeps/plots.py draws the heatmap)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thaw.intervals import Interval, accuracy_interval, indistinguishable

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
