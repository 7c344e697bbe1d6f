"""ingest: load the configured image source, check it, subsample it and fix a stratified train/val/test split.

Writes uint8 images N x H x W x 3 in shards, with the labels, the split and the class names, to a dataset
folder (`thaw.shards`), reading and checking the source a shard at a time. No TensorFlow here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from thaw import artifacts, dataflow, datasources, inputs, shards, stage

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    args, params = stage.parse(argv, __doc__, "input", "out", "flow")
    data = params.data
    inputs.check_fingerprint(artifacts.read_json(args.input), data.path, args.input)
    raw = datasources.ingest(data, params.seed)
    shape = (data.image_size, data.image_size, 3)
    with shards.write_dataset(args.out, "images", shape, np.uint8, raw.labels, raw.split, raw.class_names) as out:
        for chunk in raw.chunks(out.per_shard):
            out.append(chunk)
    counts = np.bincount(raw.split, minlength=4)
    log.info("ingested %d rows, %d classes; train/val/test/unlabelled = %s", len(raw.labels),
             len(raw.class_names), counts)  # fmt: skip
    artifacts.write_json(args.flow, dataflow.ingest_row((len(raw.labels), *shape), raw.labels, raw.class_names))


if __name__ == "__main__":
    stage.run(main)
