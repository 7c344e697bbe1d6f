"""extract-frozen: pass every normalized image once through the frozen base and cache the feature maps.

The head then trains on these cached features, so no epoch ever pays for the base's forward pass. Images
are read, and features written, a chunk of whole prediction batches at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from thaw import artifacts, dataflow, imports, shards, stage
from thaw.freezing import freeze

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    args, params = stage.parse(argv, __doc__, "normalized", "base", "out", "flow")
    imports.import_tensorflow()  # only once the config is known good
    from thaw import model, training

    data = shards.open_dataset(args.normalized)
    pixels = data.array
    training.prepare_process(params.runtime)
    training.make_deterministic(params.seed)
    base = model.load_keras_model(args.base)
    freeze(base)
    row_shape = tuple(base.output_shape[1:])
    with shards.write_dataset(args.out, "features", row_shape, np.float32, data.labels, data.split,
                              data.class_names) as out:  # fmt: skip
        step = shards.chunk_rows(pixels.row_shape, pixels.dtype)  # whole prediction batches per chunk
        for start in range(0, len(pixels), step):
            out.append(model.extract_features(base, pixels[start : start + step]))
    features = shards.open_dataset(args.out).array
    log.info("extracted features %s from %s", features.shape, pixels.shape)
    artifacts.write_json(args.flow, dataflow.extract_row(pixels.shape, features.shape, features[0]))


if __name__ == "__main__":
    stage.run(main)
