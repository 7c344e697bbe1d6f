"""The data-flow trace: one row per stage (what came in, what it did, what went out, and a worked example
from this run's row 0), as the seed's table shows them. Each stage writes its row to `reports/flow/`;
`report` reads them back in pipeline order. NumPy only: no TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thaw import artifacts

STAGE_ORDER = ("ingest", "normalize", "extract-frozen", "train-head", "unfreeze", "finetune")


def _rows(shape: Sequence[int]) -> str:
    return f"{shape[0]} rows x " + " x ".join(map(str, shape[1:]))


def format_probabilities(p: np.ndarray) -> str:
    """The seed's style: `[0.1, 0.7, 0.05, ..., 0.02]`."""
    shown = [f"{v:.2f}" for v in p]
    if len(shown) > 4:
        shown = [*shown[:3], "...", shown[-1]]
    return "[" + ", ".join(shown) + "]"


# Each row takes the shapes (rows first) and row 0's values: a stage never holds more than a chunk.


def ingest_row(shape: Sequence[int], labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    _, h, w, _ = shape
    return {
        "stage": "ingest",
        "title": "Data input",
        "input": _rows(shape),
        "operation": "Load images with labels",
        "output": _rows(shape),
        "example": f"row 0: a {h}x{w} image with label '{class_names[int(labels[0])]}'",
        "class_names": [str(name) for name in class_names],
    }


def normalize_row(shape: Sequence[int], image: np.ndarray, pixels: np.ndarray) -> dict[str, Any]:
    # A real pixel of row 0 as the worked example (the one nearest mid-grey, like the seed's 120).
    flat = image.reshape(-1)
    i = int(np.argmin(np.abs(flat.astype(int) - 120)))
    return {
        "stage": "normalize",
        "title": "Preprocessing",
        "input": _rows(shape),
        "operation": "Normalize pixel values to 0-1 range",
        "output": _rows(shape),
        "example": f"pixel value {int(flat[i])} becomes {float(pixels.reshape(-1)[i]):.2f}",
    }


def extract_row(pixels_shape: Sequence[int], features_shape: Sequence[int], features: np.ndarray) -> dict[str, Any]:
    """`features`: row 0's feature map."""
    busiest = int(features.reshape(-1, features.shape[-1]).mean(axis=0).argmax())
    return {
        "stage": "extract-frozen",
        "title": "Feature extraction (frozen layers)",
        "input": _rows(pixels_shape),
        "operation": "Pass through frozen convolutional layers",
        "output": _rows(features_shape),
        "example": f"row 0: feature map {busiest} responds most (mean activation "
        f"{float(features[..., busiest].mean()):.2f})",
    }


def head_row(features_shape: Sequence[int], probabilities: np.ndarray) -> dict[str, Any]:
    """`probabilities`: row 0's class probabilities."""
    return {
        "stage": "train-head",
        "title": "Train classifier layers",
        "input": _rows(features_shape),
        "operation": "Train dense layers on extracted features",
        "output": f"{features_shape[0]} rows x {len(probabilities)} (class probabilities)",
        "example": format_probabilities(probabilities),
    }


def unfreeze_row(feature_shape: Sequence[int], thawed: Sequence[str], rows: int) -> dict[str, Any]:
    return {
        "stage": "unfreeze",
        "title": "Unfreeze layers",
        "input": _rows((rows, *feature_shape)),
        "operation": f"Unfreeze the top {len(thawed)} convolutional layers for fine-tuning",
        "output": _rows((rows, *feature_shape)),
        "example": ("layers now trainable: " + ", ".join(thawed)) if thawed else "base stays frozen (head only)",
    }


def finetune_row(pixels_shape: Sequence[int], probabilities: np.ndarray) -> dict[str, Any]:
    """`probabilities`: row 0's class probabilities."""
    return {
        "stage": "finetune",
        "title": "Fine-tune entire model",
        "input": _rows(pixels_shape),
        "operation": "Train unfrozen layers and head with a lower learning rate",
        "output": f"{pixels_shape[0]} rows x {len(probabilities)} (class probabilities)",
        "example": format_probabilities(probabilities),
    }


def read_flow(folder: str | Path) -> list[dict[str, Any]]:
    """The stages' data-flow rows, in pipeline order."""
    rows = []
    for stage in STAGE_ORDER:
        path = Path(folder) / f"{stage}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing data-flow record of stage '{stage}' (run `dvc repro {stage}`)")
        rows.append(artifacts.read_json(path))
    return rows
