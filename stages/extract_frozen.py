"""extract-frozen: pass every normalized image once through the frozen base and cache the feature maps.

The head then trains on these cached features, so no epoch ever pays for the base's forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from stages import artifacts, cli, model, training
from stages.freezing import freeze
from stages.params import load_section, load_seed

log = logging.getLogger(__name__)


def flow_row(pixels: np.ndarray, features: np.ndarray) -> dict[str, object]:
    shape = " x ".join(map(str, features.shape[1:]))
    busiest = int(features[0].reshape(-1, features.shape[-1]).mean(axis=0).argmax())
    return {
        "stage": "extract-frozen",
        "title": "Feature extraction (frozen layers)",
        "input": f"{len(pixels)} rows x " + " x ".join(map(str, pixels.shape[1:])),
        "operation": "Pass through frozen convolutional layers",
        "output": f"{len(features)} rows x {shape}",
        "example": f"row 0: feature map {busiest} responds most (mean activation "
        f"{float(features[0][..., busiest].mean()):.2f})",
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = cli.parse(argv, __doc__, "normalized", "base", "out", "flow")
    runtime = load_section(args.params, "runtime")
    training.configure_threads(runtime.intra_op_threads, runtime.inter_op_threads)
    training.make_deterministic(load_seed(args.params))
    data = artifacts.read_npz(args.normalized)
    base = model.load_keras_model(args.base)
    freeze(base)
    features = model.extract_features(base, data["pixels"])
    log.info("extracted features %s from %s", features.shape, data["pixels"].shape)
    artifacts.write_npz(
        args.out,
        features=features,
        labels=data["labels"],
        split=data["split"],
        class_names=data["class_names"],
    )
    artifacts.write_json(args.flow, flow_row(data["pixels"], features))


if __name__ == "__main__":
    cli.run(main)
