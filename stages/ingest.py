"""ingest: load the configured image source, check it, subsample it and fix a stratified train/val/test split.

Writes uint8 images N x H x W x 3, labels, class names and the split to one `.npz`. No TensorFlow here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from stages import artifacts, cli, datasources
from stages.input import check_fingerprint
from stages.params import load_section, load_seed

log = logging.getLogger(__name__)


def ingest(
    source: str,
    path: str | None,
    rows: int | None,
    image_size: int,
    resize: bool,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    train_per_class: int | None = None,
) -> dict[str, np.ndarray]:
    """Load, validate, subsample and split (keeping `train_per_class` training labels per class, if set);
    return the arrays of the raw dataset."""
    dataset = datasources.load_source(source, path, image_size, resize)
    datasources.validate(dataset, image_size, where=path or source)
    keep = datasources.subsample(dataset.labels, rows, seed)
    labels = dataset.labels[keep]
    split = datasources.stratified_split(labels, dataset.class_names, val_fraction, test_fraction, seed)
    split = datasources.limit_training_labels(labels, split, train_per_class, seed)
    return {
        "images": dataset.images[keep],
        "labels": labels,
        "split": split,
        "class_names": np.asarray(dataset.class_names),
    }


def flow_row(raw: dict[str, np.ndarray]) -> dict[str, object]:
    """This stage's row of the data-flow trace."""
    n, h, w, c = raw["images"].shape
    label = int(raw["labels"][0])
    return {
        "stage": "ingest",
        "title": "Data input",
        "input": f"{n} rows x {h} x {w} x {c}",
        "operation": "Load images with labels",
        "output": f"{n} rows x {h} x {w} x {c}",
        "example": f"row 0: a {h}x{w} image with label '{raw['class_names'][label]}'",
        "class_names": [str(name) for name in raw["class_names"]],
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = cli.parse(argv, __doc__, "input", "out", "flow")
    data = load_section(args.params, "data")
    check_fingerprint(artifacts.read_json(args.input), data.path, args.input)
    raw = ingest(
        data.source, data.path, data.rows, data.image_size, data.resize,
        data.val_fraction, data.test_fraction, load_seed(args.params), data.train_per_class,
    )  # fmt: skip
    counts = np.bincount(raw["split"], minlength=4)
    log.info(
        "ingested %d rows, %d classes; train/val/test/unlabelled = %s",
        len(raw["labels"]),
        len(raw["class_names"]),
        counts,
    )
    artifacts.write_npz(args.out, **raw)
    artifacts.write_json(args.flow, flow_row(raw))


if __name__ == "__main__":
    cli.run(main)
