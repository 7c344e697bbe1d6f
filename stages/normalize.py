"""normalize: scale uint8 pixels to float32 in [0, 1] (the seed's 120 -> 0.47); labels and split unchanged."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from thaw import artifacts, dataflow, datasources, stage

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    args, _ = stage.parse(argv, __doc__, "raw", "out", "flow")
    raw = artifacts.read_npz(args.raw)
    pixels = datasources.normalize(raw["images"])
    log.info("normalized %s pixels to [%.2f, %.2f]", pixels.shape, pixels.min(), pixels.max())
    artifacts.write_npz(
        args.out, pixels=pixels, labels=raw["labels"], split=raw["split"], class_names=raw["class_names"]
    )
    artifacts.write_json(args.flow, dataflow.normalize_row(raw["images"], pixels))


if __name__ == "__main__":
    stage.run(main)
