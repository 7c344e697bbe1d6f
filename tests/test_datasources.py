"""thaw.datasources: every image source on small real inputs written by the tests, the checks that reject bad
data with the file and the problem named, and the balanced subsample and stratified split. No network."""

from __future__ import annotations

import io
import os
import pickle
import re
import socket
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from datasets import load_folder, load_npz, load_source, validate
from PIL import Image

from thaw.datasources import (
    CIFAR10_CLASSES,
    DataError,
    ImageDataset,
    load_cifar10,
    load_digits,
    read_image,
    stratified_split,
    subsample,
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection (e.g. a dataset download) fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"test tried to use the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_digits(32)


# --- digits -------------------------------------------------------------------------------------------------------


def test_digits_shape_dtype_and_classes(digits: ImageDataset) -> None:
    assert digits.images.shape == (1797, 32, 32, 3)
    assert digits.images.dtype == np.uint8
    assert digits.labels.dtype == np.int64
    assert digits.labels.shape == (1797,)
    assert digits.class_names == tuple(str(i) for i in range(10))
    assert set(np.unique(digits.labels).tolist()) == set(range(10))
    assert digits.images.min() == 0
    assert digits.images.max() == 255
    # Grayscale scans replicated to three equal channels.
    assert np.array_equal(digits.images[..., 0], digits.images[..., 1])
    assert np.array_equal(digits.images[..., 0], digits.images[..., 2])
    validate(digits, 32, "digits")


def test_digits_follow_image_size() -> None:
    assert load_digits(16).images.shape == (1797, 16, 16, 3)


# --- subsample ----------------------------------------------------------------------------------------------------


def test_subsample_is_balanced(digits: ImageDataset) -> None:
    keep = subsample(digits.labels, 100, seed=0)
    assert len(keep) == 100
    assert len(np.unique(keep)) == 100
    assert np.bincount(digits.labels[keep], minlength=10).tolist() == [10] * 10


def test_subsample_with_remainder_stays_balanced(digits: ImageDataset) -> None:
    keep = subsample(digits.labels, 95, seed=0)
    counts = np.bincount(digits.labels[keep], minlength=10)
    assert counts.sum() == 95
    assert counts.max() - counts.min() <= 1


def test_subsample_is_deterministic_in_seed(digits: ImageDataset) -> None:
    assert np.array_equal(subsample(digits.labels, 50, seed=3), subsample(digits.labels, 50, seed=3))
    assert not np.array_equal(subsample(digits.labels, 50, seed=3), subsample(digits.labels, 50, seed=4))


def test_subsample_is_shuffled_not_grouped_by_class(digits: ImageDataset) -> None:
    labels = digits.labels[subsample(digits.labels, 100, seed=0)]
    assert not np.all(np.diff(labels) >= 0)


@pytest.mark.parametrize("rows", [None, 1797, 5000])
def test_subsample_all_rows_is_a_permutation(digits: ImageDataset, rows: int | None) -> None:
    keep = subsample(digits.labels, rows, seed=0)
    assert sorted(keep.tolist()) == list(range(1797))
    assert not np.array_equal(keep, np.arange(1797))


# --- stratified_split ---------------------------------------------------------------------------------------------


def test_stratified_split_puts_every_class_in_every_split(digits: ImageDataset) -> None:
    labels = digits.labels[subsample(digits.labels, 100, seed=0)]
    split = stratified_split(labels, digits.class_names, 0.2, 0.2, seed=0)
    assert split.shape == labels.shape
    assert set(np.unique(split).tolist()) == {0, 1, 2}
    for code in (0, 1, 2):
        assert np.bincount(labels[split == code], minlength=10).min() >= 1
    # 10 rows per class, 20 % val and 20 % test: 6 / 2 / 2 per class.
    for cls in range(10):
        assert np.bincount(split[labels == cls], minlength=3).tolist() == [6, 2, 2]


def test_stratified_split_is_deterministic_in_seed(digits: ImageDataset) -> None:
    labels = digits.labels[:300]
    a = stratified_split(labels, digits.class_names, 0.2, 0.2, seed=1)
    assert np.array_equal(a, stratified_split(labels, digits.class_names, 0.2, 0.2, seed=1))
    assert not np.array_equal(a, stratified_split(labels, digits.class_names, 0.2, 0.2, seed=2))


def test_stratified_split_too_few_rows_names_the_class() -> None:
    labels = np.array([0] * 10 + [1] * 2)
    with pytest.raises(
        DataError, match=r"the val split has no samples of class\(es\) \['b'\]: add rows, raise data\.rows"
    ):
        stratified_split(labels, ("a", "b"), 0.2, 0.2, seed=0)


def test_stratified_split_missing_training_rows() -> None:
    labels = np.array([0] * 10 + [1] * 2)
    with pytest.raises(DataError, match=r"the train split has no samples of class\(es\) \['b'\]"):
        stratified_split(labels, ("a", "b"), 0.45, 0.45, seed=0)


# --- folder -------------------------------------------------------------------------------------------------------


def write_image(path: Path, size: tuple[int, int] = (12, 12), value: int = 100, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, value // 2, 255 - value)
    Image.new(mode, size, colour).save(path)
    return path


def make_folder(root: Path, per_class: dict[str, int], size: tuple[int, int] = (12, 12)) -> Path:
    for cls, n in per_class.items():
        for i in range(n):
            write_image(root / cls / f"{i}.png", size, value=10 * i + 50)
    return root


def test_folder_happy_path(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images", {"cat": 3, "dog": 2})
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    write_image(root / "dog" / "gray.JPG", mode="L", value=77)
    ds = load_folder(str(root), image_size=12, resize="none")
    assert ds.class_names == ("cat", "dog")
    assert ds.images.shape == (6, 12, 12, 3)
    assert ds.images.dtype == np.uint8
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.images[0, 0, 0].tolist() == [50, 25, 205]
    validate(ds, 12, str(root))


def test_folder_resize(tmp_path: Path) -> None:
    root = tmp_path / "images"
    write_image(root / "a" / "big.png", (40, 20))
    write_image(root / "b" / "small.png", (10, 10))
    ds = load_folder(str(root), image_size=16, resize="squash")
    assert ds.images.shape == (2, 16, 16, 3)
    validate(ds, 16, str(root))


RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def bands(path: Path, size: tuple[int, int], colours: list[tuple[int, int, int]], **save: object) -> Path:
    """An image of vertical bands (left to right), as wide as `size` says: a quarter, half, quarter for three."""
    width, height = size
    edges = [0, width // 4, 3 * width // 4, width] if len(colours) == 3 else [0, width // 2, width]
    pixels = np.zeros((height, width, 3), np.uint8)
    for colour, start, stop in zip(colours, edges, edges[1:], strict=False):  # edges has one more
        pixels[:, start:stop] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save)
    return path


def near(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - colour) <= tolerance))


def test_a_photo_is_turned_upright_by_its_exif_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: stored sideways, shown turned 90 degrees clockwise (a phone held upright)
    tagged = bands(tmp_path / "tagged.jpg", (24, 12), [RED, BLUE], quality=95, exif=exif.tobytes())
    plain = bands(tmp_path / "plain.jpg", (24, 12), [RED, BLUE], quality=95)
    upright = read_image(tagged, 12, "squash")  # shown 12 wide x 24 high: red on top, blue below
    assert near(upright[2, 6], RED) and near(upright[9, 6], BLUE), upright[:, 6]
    stored = read_image(plain, 12, "squash")  # no tag: as stored, red left, blue right
    assert near(stored[6, 2], RED) and near(stored[6, 9], BLUE), stored[6]


def test_crop_keeps_the_centre_pad_keeps_everything_squash_stretches(tmp_path: Path) -> None:
    wide = bands(tmp_path / "wide.png", (40, 20), [RED, GREEN, BLUE])  # 2:1; the middle half is green
    crop, pad, squash = (read_image(wide, 10, mode) for mode in ("crop", "pad", "squash"))
    # short side to 10, the centre 10 of 20 columns: green (the filter reads a pixel past the crop at the edges)
    assert all(near(p, GREEN, 0) for p in crop[:, 1:-1].reshape(-1, 3))
    assert all(near(p, GREEN, 80) for p in crop.reshape(-1, 3))
    assert pad[:2].max() == 0 and pad[-2:].max() == 0  # the 10x5 picture between black bars
    assert near(pad[5, 0], RED) and near(pad[5, 5], GREEN) and near(pad[5, 9], BLUE)
    assert near(squash[0, 0], RED) and near(squash[9, 5], GREEN) and near(squash[9, 9], BLUE)
    for sized in (crop, pad, squash):
        assert sized.shape == (10, 10, 3) and sized.dtype == np.uint8


def test_every_image_mode_becomes_rgb_by_the_stated_rule(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # a transparent pixel: white
    rgba[0, 1] = (200, 100, 0, 128)  # half transparent: half-way to white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png", 4, "none")
    assert out[0, 0].tolist() == [255, 255, 255] and out[1, 1].tolist() == [10, 20, 30]
    assert np.allclose(out[0, 1], [227, 177, 127], atol=2), out[0, 1]

    Image.fromarray(np.array([[0, 257 * 100], [65535, 257 * 255]], np.uint16)).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # a 16-bit grey PNG
    assert read_image(tmp_path / "deep.png", 2, "none")[..., 0].tolist() == [[0, 100], [255, 255]]

    Image.new("LA", (2, 2), (90, 0)).save(tmp_path / "la.png")  # grey, fully transparent
    assert read_image(tmp_path / "la.png", 2, "none").tolist() == [[[255] * 3] * 2] * 2
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)
    palette.save(tmp_path / "p.png", transparency=0)  # index 0 transparent; every pixel is index 1
    assert read_image(tmp_path / "p.png", 2, "none")[0, 0].tolist() == [0, 128, 0]
    Image.new("L", (2, 2), 77).save(tmp_path / "grey.png")
    assert read_image(tmp_path / "grey.png", 2, "none")[0, 0].tolist() == [77, 77, 77]
    Image.new("CMYK", (2, 2), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")  # no ink: white
    assert near(read_image(tmp_path / "cmyk.jpg", 2, "none")[0, 0], (255, 255, 255), 2)

    Image.new("F", (2, 2), 0.5).save(tmp_path / "float.tif")
    with pytest.raises(DataError, match=r"float\.tif: 32-bit floating-point image \(mode F\): save it as 8- or 16"):
        read_image(tmp_path / "float.tif", 2, "none")


def test_folder_mismatched_sizes_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "images"
    write_image(root / "a" / "0.png", (12, 12))
    odd = write_image(root / "b" / "0.png", (14, 12))
    with pytest.raises(DataError) as info:
        load_folder(str(root), image_size=12, resize="none")
    message = str(info.value)
    assert message.startswith(f"{odd}: image size 14x12 differs from data.image_size = 12 (12x12)")
    assert "data.resize=crop" in message


def test_folder_corrupt_image_names_the_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images", {"a": 2, "b": 2})
    bad = root / "b" / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad))}: unreadable or corrupt image"):
        load_folder(str(root), image_size=12, resize="none")


def test_folder_truncated_image_names_the_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images", {"a": 2, "b": 2})
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(buffer, "PNG")
    bad = root / "a" / "cut.png"
    bad.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad))}: unreadable or corrupt image"):
        load_folder(str(root), image_size=12, resize="none")


def test_folder_empty_class(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images", {"a": 2})
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=rf"^{re.escape(str(root / 'empty'))}: class 'empty' has no images \(\.png"):
        load_folder(str(root), image_size=12, resize="none")


def test_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"image folder not found \(fix data\.path\)"):
        load_folder(str(tmp_path / "nowhere"), image_size=12, resize="none")


def test_folder_without_class_subfolders(tmp_path: Path) -> None:
    write_image(tmp_path / "flat.png")
    with pytest.raises(DataError, match=r"no class sub-folders"):
        load_folder(str(tmp_path), image_size=12, resize="none")


# --- npz ----------------------------------------------------------------------------------------------------------


def rgb_batch(n: int = 6, size: int = 8, classes: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % classes


def test_npz_happy_path(tmp_path: Path) -> None:
    x, y = rgb_batch()
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y, class_names=np.array(["neg", "pos"]))
    ds = load_npz(str(path))
    assert np.array_equal(ds.images, x)
    assert ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == y.tolist()
    assert ds.class_names == ("neg", "pos")
    validate(ds, 8, str(path))


def test_npz_class_names_default_to_numbers(tmp_path: Path) -> None:
    x, y = rgb_batch(classes=3)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    assert load_npz(str(path)).class_names == ("0", "1", "2")


def test_npz_whole_number_floats_are_accepted(tmp_path: Path) -> None:
    x, y = rgb_batch()
    path = tmp_path / "d.npz"
    np.savez(path, x=x.astype(np.float64), y=y)
    ds = load_npz(str(path))
    assert ds.images.dtype == np.uint8
    assert np.array_equal(ds.images, x)


def test_npz_grayscale_is_replicated_to_three_channels(tmp_path: Path) -> None:
    gray = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8)
    path = tmp_path / "g.npz"
    np.savez(path, x=gray, y=np.array([0, 1, 0, 1]))
    ds = load_npz(str(path))
    assert ds.images.shape == (4, 8, 8, 3)
    for channel in range(3):
        assert np.array_equal(ds.images[..., channel], gray)


def test_npz_missing_y(tmp_path: Path) -> None:
    x, _ = rgb_batch()
    path = tmp_path / "d.npz"
    np.savez(path, x=x, labels=np.zeros(6, dtype=int))
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}: missing array\(s\) \['y'\]; it has \['labels', 'x'\]"
    ):
        load_npz(str(path))


def test_npz_nan_pixels(tmp_path: Path) -> None:
    x, y = rgb_batch()
    x = x.astype(np.float32)
    x[2, 3, 4, 1] = np.nan
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: x contains NaN pixel values"):
        load_npz(str(path))


@pytest.mark.parametrize(("low", "high"), [(-1, 10), (0, 256), (0, 1000)])
def test_npz_out_of_range_pixels(tmp_path: Path, low: int, high: int) -> None:
    x, y = rgb_batch()
    x = np.clip(x.astype(np.int16), 0, 10)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = low, high
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(DataError, match=rf"pixel values span \[{low}, {high}\]; expected 0\.\.255"):
        load_npz(str(path))


def test_npz_fractional_pixels_are_refused(tmp_path: Path) -> None:
    """Already-normalized data (0..1 floats) must not be silently truncated to black images."""
    x, y = rgb_batch()
    path = tmp_path / "d.npz"
    np.savez(path, x=x.astype(np.float32) / 255, y=y)
    with pytest.raises(DataError, match=r"x holds fractional pixel values; store uint8 0\.\.255"):
        load_npz(str(path))


def test_npz_truncated_file(tmp_path: Path) -> None:
    x, y = rgb_batch()
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: unreadable or truncated \.npz"):
        load_npz(str(path))


def test_npz_that_is_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match=r"unreadable or truncated \.npz"):
        load_npz(str(path))


def test_npz_mismatched_lengths(tmp_path: Path) -> None:
    x, y = rgb_batch(n=6)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y[:5])
    with pytest.raises(DataError, match=r"x has 6 rows but y has 5"):
        load_npz(str(path))


def test_npz_object_arrays_are_refused(tmp_path: Path) -> None:
    x, y = rgb_batch()
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.array([int(v) for v in y], dtype=object))
    with pytest.raises(DataError, match=r"unreadable or truncated \.npz \(Object arrays cannot be loaded"):
        load_npz(str(path))


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.zeros((4, 8, 8, 1), np.uint8), np.arange(4) % 2, r"x has shape \(4, 8, 8, 1\); expected N x H x W x 3"),
        (np.zeros((4, 64), np.uint8), np.arange(4) % 2, r"x has shape \(4, 64\)"),
        (
            np.zeros((4, 8, 8, 3), np.uint8),
            np.array([0.0, 1.0, 0.0, 1.0]),
            r"y must be a 1-D integer array, got float64",
        ),
        (np.zeros((4, 8, 8, 3), np.uint8), np.zeros((4, 1), int), r"y must be a 1-D integer array, .*shape \(4, 1\)"),
    ],
)
def test_npz_bad_shapes_and_label_types(tmp_path: Path, x: np.ndarray, y: np.ndarray, match: str) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(DataError, match=match):
        load_npz(str(path))


def test_npz_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"\.npz file not found \(fix data\.path\)"):
        load_npz(str(tmp_path / "none.npz"))


# --- validate -----------------------------------------------------------------------------------------------------


def dataset(images: np.ndarray, labels: list[int], names: tuple[str, ...] = ("a", "b")) -> ImageDataset:
    return ImageDataset(images, np.asarray(labels, dtype=np.int64), names)


def test_validate_accepts_a_good_dataset() -> None:
    validate(dataset(np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 0, 1]), 8, "here")


def test_validate_empty_dataset() -> None:
    with pytest.raises(DataError, match=r"^here: the dataset is empty"):
        validate(dataset(np.zeros((0, 8, 8, 3), np.uint8), []), 8, "here")


@pytest.mark.parametrize(("labels", "bad", "row"), [([0, 1, 2, 0], 2, 2), ([0, -1, 1, 0], -1, 1)])
def test_validate_label_out_of_range(labels: list[int], bad: int, row: int) -> None:
    with pytest.raises(
        DataError, match=rf"here: label {bad} at row {row} is out of range \[0, 2\) for classes \['a', 'b'\]"
    ):
        validate(dataset(np.zeros((4, 8, 8, 3), np.uint8), labels), 8, "here")


def test_validate_single_class() -> None:
    with pytest.raises(DataError, match=r"only one class \('a'\); a classifier needs at least two"):
        validate(dataset(np.zeros((3, 8, 8, 3), np.uint8), [0, 0, 0], ("a",)), 8, "here")


def test_validate_class_with_no_samples() -> None:
    with pytest.raises(DataError, match=r"class\(es\) \['c'\] have no samples"):
        validate(dataset(np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 0, 1], ("a", "b", "c")), 8, "here")


def test_validate_wrong_image_size() -> None:
    with pytest.raises(
        DataError, match=r"images are 16x16x3, expected 32x32x3 \(set data\.image_size, or data\.resize=crop"
    ):
        validate(dataset(np.zeros((4, 16, 16, 3), np.uint8), [0, 1, 0, 1]), 32, "here")


def test_validate_wrong_dtype() -> None:
    with pytest.raises(DataError, match=r"images must be uint8, got float32"):
        validate(dataset(np.zeros((4, 8, 8, 3), np.float32), [0, 1, 0, 1]), 8, "here")


def test_validate_label_count_mismatch() -> None:
    with pytest.raises(DataError, match=r"4 images but 3 labels"):
        validate(dataset(np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 0]), 8, "here")


# --- cifar10 from a local archive ---------------------------------------------------------------------------------

CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
PER_BATCH = 5


def cifar_batch(index: int) -> dict[bytes, object]:
    """A batch in the real CIFAR-10 python layout: rows of 3072 bytes (1024 red, 1024 green, 1024 blue)."""
    rng = np.random.default_rng(index)
    data = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
    labels = [int(v) for v in (np.arange(PER_BATCH) + 2 * index) % 10]  # all ten classes
    return {b"batch_label": f"batch {index}".encode(), b"labels": labels, b"data": data, b"filenames": []}


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol 2 as Python 2's cPickle wrote it, the format of the real CIFAR-10 batches: byte strings are
    (SHORT_)BINSTRING opcodes. (Python 3's protocol 2 writes bytes as `_codecs.encode(...)` calls instead, which
    Keras' restricted unpickler refuses, so `pickle.dump(..., protocol=2)` would not be the real format.)"""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_cifar_folder(
    folder: Path, skip: str | None = None, dumps: Callable[[object], bytes] = py2_pickle
) -> list[dict[bytes, object]]:
    folder.mkdir(parents=True)
    batches = []
    for i, name in enumerate(CIFAR_BATCHES):
        batch = cifar_batch(i)
        batches.append(batch)
        if name != skip:
            (folder / name).write_bytes(dumps(batch))
    (folder / "batches.meta").write_bytes(dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}))
    return batches


def write_cifar_archive(tmp_path: Path, skip: str | None = None) -> tuple[Path, list[dict[bytes, object]]]:
    staging = tmp_path / "staging"
    batches = write_cifar_folder(staging / "cifar-10-batches-py", skip)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, batches


def check_cifar(ds: ImageDataset, batches: list[dict[bytes, object]]) -> None:
    n = PER_BATCH * len(CIFAR_BATCHES)
    assert ds.images.shape == (n, 32, 32, 3)
    assert ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64
    assert ds.class_names == CIFAR10_CLASSES
    assert ds.labels.tolist() == [label for b in batches for label in b[b"labels"]]
    # Channel layout: row bytes are [R plane | G plane | B plane], each 32x32 in row-major order.
    data = np.concatenate([b[b"data"] for b in batches])
    assert np.array_equal(ds.images[..., 0].reshape(n, -1), data[:, :1024])
    assert np.array_equal(ds.images[..., 1].reshape(n, -1), data[:, 1024:2048])
    assert np.array_equal(ds.images[..., 2].reshape(n, -1), data[:, 2048:])
    assert ds.images[5, 0, 1, 2] == data[5, 2048 + 1]
    assert ds.images[5, 1, 0, 0] == data[5, 32]


def test_cifar10_from_archive(tmp_path: Path) -> None:
    archive, batches = write_cifar_archive(tmp_path)
    ds = load_cifar10(str(archive))
    check_cifar(ds, batches)
    validate(ds, 32, str(archive))


def test_cifar10_from_extracted_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar_folder(folder)
    check_cifar(load_cifar10(str(folder)), batches)


def test_cifar10_batches_pickled_by_python3_default_protocol(tmp_path: Path) -> None:
    """A CIFAR-format copy written with today's Python (default protocol) reads the same."""
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar_folder(folder, dumps=pickle.dumps)
    check_cifar(load_cifar10(str(folder)), batches)


def test_cifar10_through_load_source(tmp_path: Path) -> None:
    archive, batches = write_cifar_archive(tmp_path)
    check_cifar(load_source("cifar10", str(archive), 32, False), batches)


@pytest.mark.parametrize("missing", ["data_batch_3", "test_batch"])
def test_cifar10_missing_batch_in_archive(tmp_path: Path, missing: str) -> None:
    archive, _ = write_cifar_archive(tmp_path, skip=missing)
    with pytest.raises(DataError, match=rf"^{re.escape(str(archive))}: CIFAR-10 batch '{missing}' is missing"):
        load_cifar10(str(archive))


def test_cifar10_missing_batch_in_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_folder(folder, skip="data_batch_1")
    with pytest.raises(DataError, match=r"CIFAR-10 batch 'data_batch_1' is missing"):
        load_cifar10(str(folder))


def test_cifar10_archive_with_another_layout(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    write_cifar_folder(staging / "batches")
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "batches", arcname="batches")
    with pytest.raises(DataError, match=r"CIFAR-10 batch 'data_batch_1' is missing"):
        load_cifar10(str(archive))


def test_cifar10_not_an_archive(tmp_path: Path) -> None:
    bogus = tmp_path / "cifar-10-python.tar.gz"
    bogus.write_bytes(b"definitely not gzip")
    with pytest.raises(DataError, match=rf"^{re.escape(str(bogus))}: not a readable CIFAR-10 \.tar\.gz archive"):
        load_cifar10(str(bogus))


def test_cifar10_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CIFAR-10 archive or folder not found \(fix data\.path\)"):
        load_cifar10(str(tmp_path / "nope.tar.gz"))


class _Gadget:
    """A pickle payload that would create a directory if the loader ran arbitrary code."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.target),))


def test_cifar10_tampered_batch_does_not_run_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_folder(folder)
    marker = tmp_path / "pwned"
    batch = cifar_batch(0)
    batch[b"labels"] = _Gadget(marker)
    (folder / "data_batch_1").write_bytes(py2_pickle(batch))
    with pytest.raises(DataError, match=r"CIFAR-10 batch 'data_batch_1' is unreadable"):
        load_cifar10(str(folder))
    assert not marker.exists()


# --- dispatch -----------------------------------------------------------------------------------------------------


def test_load_source_dispatches(tmp_path: Path) -> None:
    x, y = rgb_batch()
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    assert np.array_equal(load_source("npz", str(path), 8, False).images, x)
    root = make_folder(tmp_path / "images", {"a": 1, "b": 1})
    assert load_source("folder", str(root), 12, False).class_names == ("a", "b")
    assert load_source("digits", None, 8, False).images.shape == (1797, 8, 8, 3)


def test_load_source_unknown() -> None:
    with pytest.raises(DataError, match=r"data\.source = 'nope': unknown source"):
        load_source("nope", None, 32, False)


# --- scarce labels: data.train_per_class --------------------------------------------------------------------------


def test_limit_training_labels_keeps_k_per_class_and_leaves_val_and_test() -> None:
    from thaw.datasources import TRAIN, UNLABELLED, limit_training_labels

    labels = np.repeat(np.arange(3), 10)
    split = stratified_split(labels, ("a", "b", "c"), 0.2, 0.2, seed=0)
    limited = limit_training_labels(labels, split, 2, seed=0)
    for cls in range(3):
        assert np.sum((labels == cls) & (limited == TRAIN)) == 2
    assert np.array_equal(limited[split != TRAIN], split[split != TRAIN])  # val and test untouched
    assert set(np.unique(limited[split == TRAIN])) == {TRAIN, UNLABELLED}
    assert np.array_equal(limit_training_labels(labels, split, 2, seed=0), limited)  # deterministic
    assert limit_training_labels(labels, split, None, seed=0) is split
    with pytest.raises(DataError, match=r"data\.train_per_class = 7 but class 0 has only 6 training rows"):
        limit_training_labels(labels, split, 7, seed=0)


# --- streaming: nothing is read before it is asked for ---------------------------------------------------------------


def test_a_folder_is_listed_without_decoding_and_every_file_read_is_checked(tmp_path: Path) -> None:
    from thaw.datasources import open_folder

    root = tmp_path / "images"
    write_image(root / "a" / "0.png", (12, 12))
    write_image(root / "b" / "0.png", (12, 12))
    broken = root / "b" / "1.png"
    broken.write_bytes(b"not a png")
    source = open_folder(str(root), image_size=12, resize="none")  # listing only: no error yet
    assert source.labels.tolist() == [0, 1, 1]
    assert source.read(np.array([1, 0])).shape == (2, 12, 12, 3)
    with pytest.raises(DataError, match=r"1\.png: unreadable or corrupt image"):
        source.read(np.array([2]))


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_an_npz_is_read_by_rows_memory_mapped_or_not(tmp_path: Path, save) -> None:
    from thaw.datasources import _npz_member, open_npz

    x = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "x.npz"
    save(path, x=x, y=np.arange(20) % 2)
    mapped = _npz_member(path, "x")
    assert (mapped is not None) == (save is np.savez)  # uncompressed members are memory-mapped in place
    rows = np.array([19, 3, 3, 0])
    np.testing.assert_array_equal(open_npz(str(path)).read(rows), x[rows])


def test_ingest_streams_the_kept_rows_in_chunks(tmp_path: Path) -> None:
    from thaw.config import DataParams
    from thaw.datasources import ingest

    x = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "x.npz"
    np.savez(path, x=x, y=np.arange(40) % 2)
    data = DataParams(source="npz", path=str(path), rows=30, image_size=8, val_fraction=0.2, test_fraction=0.2,
                      resize="none", train_per_class=None)  # fmt: skip
    raw = ingest(data, seed=1)
    chunks = list(raw.chunks(7))
    assert [len(c) for c in chunks] == [7, 7, 7, 7, 2]
    np.testing.assert_array_equal(np.concatenate(chunks), x[raw.keep])
    np.testing.assert_array_equal(raw.images(), x[raw.keep])
    np.testing.assert_array_equal(raw.labels, (np.arange(40) % 2)[raw.keep])
