"""Whole-dataset views of thaw.datasources' streaming sources, for the tests: the pipeline streams (ingest reads
a shard at a time), the tests look at a small source whole."""

from __future__ import annotations

from thaw.datasources import (
    DataError,
    ImageDataset,
    materialize,
    open_folder,
    open_npz,
    open_source,
    validate_images,
    validate_labels,
)


def load_folder(path: str, image_size: int, resize: str) -> ImageDataset:
    return materialize(open_folder(path, image_size, resize))


def load_npz(path: str) -> ImageDataset:
    return materialize(open_npz(path))


def load_source(source: str, path: str | None, image_size: int, resize: str) -> ImageDataset:
    return materialize(open_source(source, path, image_size, resize))


def validate(dataset: ImageDataset, image_size: int, where: str) -> None:
    """Check what ingest checks, on a whole dataset: as many labels as images, the labels, the images."""
    if len(dataset.images) != len(dataset.labels):
        raise DataError(f"{where}: {len(dataset.images)} images but {len(dataset.labels)} labels")
    validate_labels(dataset.labels, dataset.class_names, where)
    validate_images(dataset.images, image_size, where)
