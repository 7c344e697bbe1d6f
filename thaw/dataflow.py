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


def _rows(array: np.ndarray | Sequence[int], rows: int | None = None) -> str:
    shape = array.shape if isinstance(array, np.ndarray) else (rows, *array)
    return f"{shape[0]} rows x " + " x ".join(map(str, shape[1:]))


def format_probabilities(p: np.ndarray) -> str:
    """The seed's style: `[0.1, 0.7, 0.05, ..., 0.02]`."""
    shown = [f"{v:.2f}" for v in p]
    if len(shown) > 4:
        shown = [*shown[:3], "...", shown[-1]]
    return "[" + ", ".join(shown) + "]"


def ingest_row(images: np.ndarray, labels: np.ndarray, class_names: np.ndarray) -> dict[str, Any]:
    _, h, w, _ = images.shape
    return {
        "stage": "ingest",
        "title": "Data input",
        "input": _rows(images),
        "operation": "Load images with labels",
        "output": _rows(images),
        "example": f"row 0: a {h}x{w} image with label '{class_names[int(labels[0])]}'",
        "class_names": [str(name) for name in class_names],
    }


def normalize_row(images: np.ndarray, pixels: np.ndarray) -> dict[str, Any]:
    # A real pixel of row 0 as the worked example (the one nearest mid-grey, like the seed's 120).
    flat = images[0].reshape(-1)
    i = int(np.argmin(np.abs(flat.astype(int) - 120)))
    return {
        "stage": "normalize",
        "title": "Preprocessing",
        "input": _rows(images),
        "operation": "Normalize pixel values to 0-1 range",
        "output": _rows(pixels),
        "example": f"pixel value {int(flat[i])} becomes {float(pixels[0].reshape(-1)[i]):.2f}",
    }


def extract_row(pixels: np.ndarray, features: np.ndarray) -> dict[str, Any]:
    busiest = int(features[0].reshape(-1, features.shape[-1]).mean(axis=0).argmax())
    return {
        "stage": "extract-frozen",
        "title": "Feature extraction (frozen layers)",
        "input": _rows(pixels),
        "operation": "Pass through frozen convolutional layers",
        "output": _rows(features),
        "example": f"row 0: feature map {busiest} responds most (mean activation "
        f"{float(features[0][..., busiest].mean()):.2f})",
    }


def head_row(features: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    return {
        "stage": "train-head",
        "title": "Train classifier layers",
        "input": _rows(features),
        "operation": "Train dense layers on extracted features",
        "output": f"{len(features)} rows x {probabilities.shape[1]} (class probabilities)",
        "example": format_probabilities(probabilities[0]),
    }


def unfreeze_row(feature_shape: Sequence[int], thawed: Sequence[str], rows: int) -> dict[str, Any]:
    return {
        "stage": "unfreeze",
        "title": "Unfreeze layers",
        "input": _rows(feature_shape, rows),
        "operation": f"Unfreeze the top {len(thawed)} convolutional layers for fine-tuning",
        "output": _rows(feature_shape, rows),
        "example": ("layers now trainable: " + ", ".join(thawed)) if thawed else "base stays frozen (head only)",
    }


def finetune_row(pixels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    return {
        "stage": "finetune",
        "title": "Fine-tune entire model",
        "input": _rows(pixels),
        "operation": "Train unfrozen layers and head with a lower learning rate",
        "output": f"{len(pixels)} rows x {probabilities.shape[1]} (class probabilities)",
        "example": format_probabilities(probabilities[0]),
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
