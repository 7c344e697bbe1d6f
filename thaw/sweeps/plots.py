"""A sweep's heatmap: validation and test accuracy over (unfreeze.layers x finetune.lr), drawn with matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from thaw.artifacts import atomic_path
from thaw.sweeps.stats import Cell, format_lr


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
