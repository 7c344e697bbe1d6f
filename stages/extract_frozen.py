"""extract-frozen: pass every normalized image once through the frozen base and cache the feature maps.

The head then trains on these cached features, so no epoch ever pays for the base's forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from thaw import artifacts, dataflow, model, stage, training
from thaw.freezing import freeze

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    args, params = stage.parse(argv, __doc__, "normalized", "base", "out", "flow")
    training.configure_threads(params.runtime.intra_op_threads, params.runtime.inter_op_threads)
    training.make_deterministic(params.seed)
    data = artifacts.read_npz(args.normalized)
    base = model.load_keras_model(args.base)
    freeze(base)
    features = model.extract_features(base, data["pixels"])
    log.info("extracted features %s from %s", features.shape, data["pixels"].shape)
    artifacts.write_npz(
        args.out, features=features, labels=data["labels"], split=data["split"], class_names=data["class_names"]
    )
    artifacts.write_json(args.flow, dataflow.extract_row(data["pixels"], features))


if __name__ == "__main__":
    stage.run(main)
