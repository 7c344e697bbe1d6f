"""thaw.reporting: the seed's ASCII loss bars, the per-epoch observations, the three traces of the Markdown
report, and the PNG figures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from thaw.artifacts import read_csv, write_csv
from thaw.dataflow import STAGE_ORDER
from thaw.reporting import loss_bar, observations, plot_confusion, plot_curves, render_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (epoch, phase, loss, accuracy, val_loss, val_accuracy)
EPOCHS = [
    (1, "head", 1.2, 0.40, 1.00, 0.50),
    (2, "head", 0.9, 0.60, 0.80, 0.70),
    (3, "head", 0.8, 0.65, 0.85, 0.65),
    (4, "head", 0.7, 0.70, 0.90, 0.66),
    (5, "head", 0.6, 0.72, 0.70, 0.695),
    (6, "finetune", 0.5, 0.75, 0.60, 0.72),
    (7, "finetune", 0.4, 0.80, 0.50, 0.80),
    (8, "finetune", 0.35, 0.82, 0.45, 0.80),
]
LAYERS = [
    ("base", "conv1", "Conv2D", False, 864, 0),
    ("base", "bn1", "BatchNormalization", False, 128, 0),
    ("base", "conv2", "Conv2D", True, 18432, 18432),
    ("base", "bn2", "BatchNormalization", False, 256, 0),
    ("head", "dense", "Dense", True, 8320, 8320),
    ("head", "probabilities", "Dense", True, 1290, 1290),
]


@pytest.fixture
def history(tmp_path: Path) -> list[dict[str, str]]:
    """The training history as the report stage reads it: from the CSV files, so every value is a string."""
    keys = ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy")
    write_csv(tmp_path / "h.csv", [dict(zip(keys, row, strict=True)) for row in EPOCHS])
    return read_csv(tmp_path / "h.csv")


@pytest.fixture
def layers(tmp_path: Path) -> list[dict[str, str]]:
    keys = ("part", "layer", "type", "trainable", "params", "trainable_params")
    write_csv(tmp_path / "layers.csv", [dict(zip(keys, row, strict=True)) for row in LAYERS])
    return read_csv(tmp_path / "layers.csv")


def flow_rows() -> list[dict[str, str]]:
    return [
        {
            "stage": stage,
            "title": f"Title {i}",
            "input": f"in {i}",
            "operation": f"op {i}",
            "output": f"out {i}",
            "example": f"example {i}",
        }
        for i, stage in enumerate(STAGE_ORDER, start=1)
    ]


# --- loss_bar -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss", "stars"), [(1.2, 12), (0.5, 5), (0.44, 4), (2.0, 20), (4.0, 40), (9.7, 40), (0.01, 1), (0.0, 1), (-1, 1)]
)
def test_loss_bar(loss: float, stars: int) -> None:
    assert loss_bar(loss) == "*" * stars


def test_loss_bar_scale_and_width() -> None:
    assert loss_bar(1.2, per_unit=20) == "*" * 24
    assert loss_bar(1.2, width=5) == "*" * 5


# --- observations -------------------------------------------------------------------------------------------------


def test_observations_read_the_numbers(history: list[dict[str, str]]) -> None:
    assert observations(history, unfrozen_layers=2, finetune_lr=1e-4) == [
        "Training classifier layers with frozen base",
        "Accuracy improves as classifier learns",
        "Validation accuracy dips",
        "Validation loss rises: watch for overfitting",
        "Stable: validation accuracy holds",
        "Fine-tuning starts: top 2 base layers unfrozen, learning rate 0.0001",
        "Fine-tuning improves feature extraction",
        "Model converges",
    ]


def test_observations_with_no_unfrozen_layers(history: list[dict[str, str]]) -> None:
    notes = observations(history, unfrozen_layers=0, finetune_lr=0.003)
    assert notes[5] == "Fine-tuning starts: base kept frozen, learning rate 0.003"


def test_observations_convergence_only_replaces_a_stable_last_epoch(history: list[dict[str, str]]) -> None:
    notes = observations(history[:7], unfrozen_layers=2, finetune_lr=1e-4)
    assert notes[-1] == "Fine-tuning improves feature extraction"
    assert "Model converges" not in notes


def test_observations_single_epoch(history: list[dict[str, str]]) -> None:
    assert observations(history[:1], 2, 1e-4) == ["Training classifier layers with frozen base"]


# --- render_report ------------------------------------------------------------------------------------------------


@pytest.fixture
def report(history: list[dict[str, str]], layers: list[dict[str, str]]) -> str:
    return render_report(
        flow=flow_rows(),
        history=history,
        layers=layers,
        head_metrics={"test_accuracy": 0.85, "test_loss": 0.5},
        finetune_metrics={"test_accuracy": 0.9, "test_loss": 0.3},
        unfrozen_layers=2,
        finetune_lr=1e-4,
    )


def test_report_data_flow_trace(report: str) -> None:
    assert "## Data flow - 6 stages" in report
    for i, stage in enumerate(STAGE_ORDER, start=1):
        assert f"| {i} | Title {i} (`{stage}`) | in {i} | op {i} | out {i} | example {i} |" in report
    assert report.index("(`ingest`)") < report.index("(`normalize`)") < report.index("(`finetune`)")


def test_report_training_trace(report: str) -> None:
    bars = re.findall(r"^Epoch +(\d+): (\*+) +\(loss=([\d.]+)\)$", report, flags=re.MULTILINE)
    assert [int(epoch) for epoch, _, _ in bars] == [row[0] for row in EPOCHS]
    assert [len(stars) for _, stars, _ in bars] == [12, 9, 8, 7, 6, 5, 4, 4]
    assert bars[0][2] == "1.20"
    assert (
        "Classifier layers on the frozen base (epochs 1-5) then fine-tuning the unfrozen layers (epochs 6-8)." in report
    )
    assert "| 3 | head | 0.80 | 0.65 | 0.85 | 0.65 | Validation accuracy dips |" in report
    assert "| 8 | finetune | 0.35 | 0.82 | 0.45 | 0.80 | Model converges |" in report


def test_report_layer_trace(report: str) -> None:
    assert "Layer 2: Frozen convolutional layers (conv1, bn1, bn2)" in report
    assert "Layer 3: Trainable dense layers (dense)" in report
    assert "Layer 4: Unfrozen and fine-tuned convolutional layers (conv2)" in report
    assert "Layer 5: Final dense layer (probabilities, softmax over the classes)" in report
    assert "| base | conv1 | Conv2D | frozen | 864 |" in report
    assert "| base | conv2 | Conv2D | trainable | 18432 |" in report
    assert "| head | probabilities | Dense | trainable | 1290 |" in report
    assert "Trainable parameters during fine-tuning: 28,042 of 29,290." in report


def test_report_results(report: str) -> None:
    assert "| Head on the frozen base | 0.500 | 0.850 |" in report
    assert "| After fine-tuning (top 2 base layers) | 0.300 | 0.900 |" in report
    assert "Fine-tuning changed test accuracy by +5.0 points." in report
    assert "![learning curves](curves.png)" in report
    assert "![confusion matrix](confusion.png)" in report


def test_report_with_nothing_unfrozen(history: list[dict[str, str]], layers: list[dict[str, str]]) -> None:
    frozen = [{**row, "trainable": "False"} if row["part"] == "base" else row for row in layers]
    text = render_report(flow_rows(), history, frozen, {"test_accuracy": 0.9, "test_loss": 0.3},
                         {"test_accuracy": 0.88, "test_loss": 0.31}, 0, 1e-4)  # fmt: skip
    assert "Layer 4: Unfrozen and fine-tuned convolutional layers (none: head only)" in text
    assert "| base | conv2 | Conv2D | frozen | 18432 |" in text
    assert "Fine-tuning changed test accuracy by -2.0 points." in text


# --- figures ------------------------------------------------------------------------------------------------------


def check_png(path: Path, size: tuple[int, int]) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000  # axes, curves, text: not an empty canvas
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.size == size
        # Not a blank image: many distinct colours.
        assert len(img.convert("RGB").getcolors(maxcolors=1_000_000) or []) > 50
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left behind


@pytest.mark.parametrize("epochs", [None, 5], ids=["both-phases", "head-only"])
def test_plot_curves_writes_a_png(tmp_path: Path, history: list[dict[str, str]], epochs: int | None) -> None:
    path = tmp_path / "figs" / "curves.png"
    plot_curves(history[:epochs], path)
    check_png(path, (1000, 400))


@pytest.mark.parametrize("classes", [3, 12])
def test_plot_confusion_writes_a_png(tmp_path: Path, classes: int) -> None:
    names = [f"class{i}" for i in range(classes)]
    pairs = [{"actual": names[i % classes], "predicted": names[(i * 7) % classes]} for i in range(60)]
    path = tmp_path / "figs" / "confusion.png"
    plot_confusion(pairs, names, path)
    check_png(path, (600, 500))
