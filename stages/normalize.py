"""normalize: scale uint8 pixels to float32 in [0, 1] (the seed's 120 -> 0.47); labels and split unchanged."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from stages import artifacts, cli
from stages.datasources import DataError

log = logging.getLogger(__name__)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 0..1."""
    if images.dtype != np.uint8:
        raise DataError(f"normalize expects uint8 images (ingest's output), got {images.dtype}")
    return images.astype(np.float32) / np.float32(255.0)


def flow_row(images: np.ndarray, pixels: np.ndarray) -> dict[str, object]:
    n, h, w, c = images.shape
    # A real pixel of row 0 as the worked example (the brightest mid-grey one, like the seed's 120).
    flat = images[0].reshape(-1)
    i = int(np.argmin(np.abs(flat.astype(int) - 120)))
    return {
        "stage": "normalize",
        "title": "Preprocessing",
        "input": f"{n} rows x {h} x {w} x {c}",
        "operation": "Normalize pixel values to 0-1 range",
        "output": f"{n} rows x {h} x {w} x {c}",
        "example": f"pixel value {int(flat[i])} becomes {float(pixels[0].reshape(-1)[i]):.2f}",
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = cli.parse(argv, __doc__, "raw", "out", "flow")
    raw = artifacts.read_npz(args.raw)
    pixels = normalize(raw["images"])
    log.info("normalized %s pixels to [%.2f, %.2f]", pixels.shape, pixels.min(), pixels.max())
    artifacts.write_npz(
        args.out, pixels=pixels, labels=raw["labels"], split=raw["split"], class_names=raw["class_names"]
    )
    artifacts.write_json(args.flow, flow_row(raw["images"], pixels))


if __name__ == "__main__":
    cli.run(main)
