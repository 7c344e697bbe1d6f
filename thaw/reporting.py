"""The trace report: the seed's three traces (data flow, training, layers) rendered from a real run's records,
plus the learning-curve and confusion-matrix figures. Plain data in, Markdown text or PNG files out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thaw.artifacts import atomic_path

PHASE_TITLES = {"head": "classifier layers on the frozen base", "finetune": "fine-tuning the unfrozen layers"}


def loss_bar(loss: float, per_unit: int = 10, width: int = 40) -> str:
    """The seed's ASCII bar: one star per 0.1 of loss (loss 1.2 -> 12 stars), at least one, at most `width`."""
    return "*" * max(1, min(width, round(loss * per_unit)))


def observations(history: Sequence[dict[str, Any]], unfrozen_layers: int, finetune_lr: float) -> list[str]:
    """One line per epoch saying what happened, read from the numbers (phase start, new best, overfitting)."""
    notes: list[str] = []
    best_val = float("-inf")
    previous: dict[str, Any] | None = None
    for row in history:
        val_acc, val_loss = float(row["val_accuracy"]), float(row["val_loss"])
        starts_phase = previous is None or previous["phase"] != row["phase"]
        if starts_phase and row["phase"] == "head":
            note = "Training classifier layers with frozen base"
        elif starts_phase:
            what = f"top {unfrozen_layers} base layers unfrozen" if unfrozen_layers else "base kept frozen"
            note = f"Fine-tuning starts: {what}, learning rate {finetune_lr:g}"
        elif val_acc > best_val + 1e-9:
            note = (
                "Accuracy improves as classifier learns"
                if row["phase"] == "head"
                else ("Fine-tuning improves feature extraction")
            )
        elif previous is not None and val_acc < float(previous["val_accuracy"]) - 0.01:
            note = "Validation accuracy dips"
        elif previous is not None and val_loss > float(previous["val_loss"]) + 1e-9:
            note = "Validation loss rises: watch for overfitting"
        else:
            note = "Stable: validation accuracy holds"
        best_val = max(best_val, val_acc)
        notes.append(note)
        previous = row
    if len(history) >= 2 and notes[-1].startswith("Stable"):
        notes[-1] = "Model converges"
    return notes


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def data_flow_section(flow: Sequence[dict[str, Any]]) -> str:
    rows = [
        (
            i,
            f"{row['title']} (`{row['stage']}`)",
            row["input"],
            row["operation"],
            row["output"],
            row["example"],
        )
        for i, row in enumerate(flow, start=1)
    ]
    table = markdown_table(("#", "Stage", "Input", "Operation", "Output", "Example from this run"), rows)
    return f"## Data flow - {len(flow)} stages\n\n{table}\n"


def training_section(history: Sequence[dict[str, Any]], notes: Sequence[str]) -> str:
    bars = "\n".join(
        f"Epoch {row['epoch']:>2}: {loss_bar(float(row['loss'])):<40} (loss={float(row['loss']):.2f})"
        for row in history
    )
    rows = [
        (row["epoch"], row["phase"], f"{float(row['loss']):.2f}", f"{float(row['accuracy']):.2f}",
         f"{float(row['val_loss']):.2f}", f"{float(row['val_accuracy']):.2f}", note)
        for row, note in zip(history, notes, strict=True)
    ]  # fmt: skip
    table = markdown_table(("Epoch", "Phase", "Loss ↓", "Accuracy ↑", "Val loss", "Val accuracy", "Observation"), rows)
    spans = []
    for phase in dict.fromkeys(row["phase"] for row in history):
        epochs = [int(r["epoch"]) for r in history if r["phase"] == phase]
        spans.append(f"{PHASE_TITLES.get(phase, phase)} (epochs {min(epochs)}-{max(epochs)})")
    phases = " then ".join(spans)
    return (
        f"## Training trace - epoch by epoch\n\n{phases[:1].upper()}{phases[1:]}.\n\n```text\n{bars}\n```\n\n{table}\n"
    )


def layer_section(layers: Sequence[dict[str, Any]]) -> str:
    def is_trainable(row: dict[str, Any]) -> bool:
        return str(row["trainable"]).lower() == "true"

    base = [r for r in layers if r["part"] == "base"]
    head = [r for r in layers if r["part"] == "head"]
    frozen = [r["layer"] for r in base if not is_trainable(r)]
    thawed = [r["layer"] for r in base if is_trainable(r)]
    summary = [
        "Layer 1: Input layer (normalized pixels)",
        f"Layer 2: Frozen convolutional layers ({', '.join(frozen) or 'none'})",
        f"Layer 3: Trainable dense layers ({', '.join(r['layer'] for r in head[:-1]) or 'none'})",
        f"Layer 4: Unfrozen and fine-tuned convolutional layers ({', '.join(thawed) or 'none: head only'})",
        f"Layer 5: Final dense layer ({head[-1]['layer'] if head else 'none'}, softmax over the classes)",
    ]
    rows = [
        (r["part"], r["layer"], r["type"], "trainable" if is_trainable(r) else "frozen", r["params"]) for r in layers
    ]
    table = markdown_table(("Part", "Layer", "Type", "State", "Parameters"), rows)
    trainable = sum(int(r["trainable_params"]) for r in layers)
    total = sum(int(r["params"]) for r in layers)
    return (
        "## Layer trace - what is frozen, what trains\n\n```text\n" + "\n".join(summary) + "\n```\n\n"
        f"{table}\n\nTrainable parameters during fine-tuning: {trainable:,} of {total:,}.\n"
    )


def render_report(
    flow: Sequence[dict[str, Any]],
    history: Sequence[dict[str, Any]],
    layers: Sequence[dict[str, Any]],
    head_metrics: dict[str, Any],
    finetune_metrics: dict[str, Any],
    unfrozen_layers: int,
    finetune_lr: float,
) -> str:
    """The whole Markdown report."""
    head_acc, ft_acc = float(head_metrics["test_accuracy"]), float(finetune_metrics["test_accuracy"])
    results = markdown_table(
        ("Model", "Test loss", "Test accuracy"),
        [
            ("Head on the frozen base", f"{float(head_metrics['test_loss']):.3f}", f"{head_acc:.3f}"),
            (f"After fine-tuning (top {unfrozen_layers} base layers)", f"{float(finetune_metrics['test_loss']):.3f}",
             f"{ft_acc:.3f}"),
        ],
    )  # fmt: skip
    return "\n".join(
        [
            "# Model pipeline trace - freezing and unfreezing layers\n",
            "A frozen pretrained base keeps learned features fixed while the head trains; unfreezing its top",
            "layers then fine-tunes them at a lower learning rate. Every number below comes from this run.\n",
            data_flow_section(flow),
            training_section(history, observations(history, unfrozen_layers, finetune_lr)),
            layer_section(layers),
            f"## Test results\n\n{results}\n\nFine-tuning changed test accuracy by {100 * (ft_acc - head_acc):+.1f} "
            "points.\n\n![learning curves](curves.png)\n\n![confusion matrix](confusion.png)\n",
        ]
    )


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Loss and accuracy per epoch (train and val), with the point where fine-tuning starts marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [float(r[key]) for r in history], marker="o", label=f"train {key}")
        ax.plot(epochs, [float(r[f"val_{key}"]) for r in history], marker="s", label=f"val {key}")
        starts = [int(r["epoch"]) for r in history if r["phase"] == "finetune"]
        if starts:
            ax.axvline(min(starts) - 0.5, color="grey", linestyle="--", label="unfreeze")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_confusion(pairs: Sequence[dict[str, str]], class_names: Sequence[str], path: str | Path) -> None:
    """Counts of (actual, predicted) class pairs on the test split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    index = {name: i for i, name in enumerate(class_names)}
    counts = np.zeros((len(class_names), len(class_names)), dtype=int)
    for pair in pairs:
        counts[index[pair["actual"]], index[pair["predicted"]]] += 1
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    image = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=90 if len(class_names) > 10 else 0)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"Test confusion matrix (accuracy {np.trace(counts) / max(1, counts.sum()):.3f})")
    for (i, j), n in np.ndenumerate(counts):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > counts.max() / 2 else "black")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
