"""normalize: scale uint8 pixels to float32 in [0, 1] (the seed's 120 -> 0.47), a shard at a time; labels and
split unchanged."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from thaw import artifacts, dataflow, datasources, shards, stage

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    args, _ = stage.parse(argv, __doc__, "raw", "out", "flow")
    raw = shards.open_dataset(args.raw)
    images = raw.array
    low, high = np.inf, -np.inf
    with shards.write_dataset(args.out, "pixels", images.row_shape, np.float32, raw.labels, raw.split,
                              raw.class_names) as out:  # fmt: skip
        for chunk in images.chunks():
            pixels = datasources.normalize(chunk)
            low, high = min(low, float(pixels.min())), max(high, float(pixels.max()))
            out.append(pixels)
    log.info("normalized %s pixels to [%.2f, %.2f]", images.shape, low, high)
    first = images[0]
    artifacts.write_json(args.flow, dataflow.normalize_row(images.shape, first, datasources.normalize(first)))


if __name__ == "__main__":
    stage.run(main)
