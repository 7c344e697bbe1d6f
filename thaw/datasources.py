"""Image sources for `ingest`: each returns an ImageDataset of uint8 RGB images; bad input raises DataError.

Sources: `digits` (the embedded default: scikit-learn's bundled handwritten digits, no download),
`cifar10` (a local copy of the archive or its extracted folder), `folder` (one sub-folder per class) and `npz`
(arrays `x` and `y`, optional `class_names`).
"""

from __future__ import annotations

import logging
import pickle
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thaw.config import DataParams
from thaw.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# Split codes, stored per row by ingest. UNLABELLED rows keep their images (features are extracted for
# them) but no stage trains or evaluates on them: `data.train_per_class` simulates scarce labels.
TRAIN, VAL, TEST, UNLABELLED = 0, 1, 2, 3
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class ImageDataset:
    images: np.ndarray  # uint8, N x H x W x 3
    labels: np.ndarray  # int64, N, values in [0, len(class_names))
    class_names: tuple[str, ...]


def upscale_low_res(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear-resize a batch of grayscale uint8 images (N x h x w) to N x size x size x 3."""
    from PIL import Image

    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        big = Image.fromarray(img, mode="L").resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(big)[..., None]
    return out


def load_digits(image_size: int) -> ImageDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 rows, 10 classes), upscaled to RGB."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    # The scans have 17 grey levels (0..16); spread them over 0..255.
    low_res = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return ImageDataset(
        images=upscale_low_res(low_res, image_size),
        labels=digits.target.astype(np.int64),
        class_names=tuple(str(name) for name in digits.target_names),
    )


def load_cifar10(path: str) -> ImageDataset:
    """CIFAR-10 (train + test batches) from a local `cifar-10-python.tar.gz` or its extracted
    `cifar-10-batches-py` folder. A local file, not Keras' download, so DVC tracks what the pipeline read."""
    source = Path(path)
    if not source.exists():
        raise DataError(f"{source}: CIFAR-10 archive or folder not found (fix data.path)")
    with tempfile.TemporaryDirectory() as tmp:
        if source.is_file():
            try:
                with tarfile.open(source, "r:gz") as tar:
                    tar.extractall(tmp, filter="data")
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise DataError(f"{source}: not a readable CIFAR-10 .tar.gz archive ({exc})") from None
            folder = Path(tmp) / "cifar-10-batches-py"
        else:
            folder = source
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        images, labels = [], []
        for name in names:
            batch = folder / name
            if not batch.is_file():
                raise DataError(f"{source}: CIFAR-10 batch '{name}' is missing")
            try:
                x, y = read_cifar_batch(batch)
            except Exception as exc:
                raise DataError(f"{source}: CIFAR-10 batch '{name}' is unreadable ({exc})") from None
            images.append(np.asarray(x).transpose(0, 2, 3, 1))
            labels.append(np.asarray(y).reshape(-1))
    return ImageDataset(np.concatenate(images), np.concatenate(labels).astype(np.int64), CIFAR10_CLASSES)


# A CIFAR-10 batch is a pickle, and unpickling can run code: only NumPy's array reconstruction is let through
# (the same four globals Keras' own reader allows). Written here because Keras' public loader reads only its
# own download cache and its batch reader is private (keras.src).
CIFAR_PICKLE_GLOBALS = frozenset({("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                                  ("numpy._core.multiarray", "_reconstruct")})  # fmt: skip


class ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in CIFAR_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds arrays only")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One CIFAR-10 python batch: its images N x 3 x 32 x 32 (uint8) and labels."""
    with open(path, "rb") as fh:
        batch = {key.decode(): value for key, value in ArraysOnlyUnpickler(fh, encoding="bytes").load().items()}
    data = np.asarray(batch["data"], dtype=np.uint8)
    return data.reshape(len(data), 3, 32, 32), list(batch["labels"])


@dataclass(frozen=True)
class ImageSource:
    """An image source opened for streaming: every row's label and the class names, and `read`, which decodes
    and checks the images of the rows asked for (uint8, N x H x W x 3). Only what is asked is in memory."""

    labels: np.ndarray  # int64, one per row, values in [0, len(class_names))
    class_names: tuple[str, ...]
    read: Callable[[np.ndarray], np.ndarray]
    where: str


def in_memory(dataset: ImageDataset, where: str) -> ImageSource:
    return ImageSource(dataset.labels, dataset.class_names, lambda rows: dataset.images[rows], where)


def materialize(source: ImageSource) -> ImageDataset:
    """Every image of a source in memory: for small data, tests and benchmarks."""
    return ImageDataset(source.read(np.arange(len(source.labels))), source.labels, source.class_names)


def open_folder(path: str, image_size: int, resize: str) -> ImageSource:
    """An image folder with one sub-folder per class (sorted names are the class order). Listing it reads no
    image; `read` decodes the files asked for (`read_image`), each checked: readable, and brought to
    image_size x image_size as `resize` says."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (fix data.path)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders (expected {root}/<class name>/<image files>)")
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        found = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"{class_dir}: class '{class_dir.name}' has no images ({', '.join(IMAGE_SUFFIXES)})")
        files += found
        labels += [label] * len(found)

    def read(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), image_size, image_size, 3), dtype=np.uint8)
        for i, row in enumerate(np.asarray(rows)):
            out[i] = read_image(files[int(row)], image_size, resize)
        return out

    return ImageSource(np.asarray(labels, dtype=np.int64), tuple(p.name for p in class_dirs), read, str(root))


def read_image(file: Path, image_size: int, resize: str) -> np.ndarray:
    """One image file as uint8 image_size x image_size x 3: turned upright as its EXIF orientation says (phone
    photos are stored sideways with a tag), converted to RGB (`to_rgb`), then sized by `resize` (Pillow's
    ImageOps, bilinear): `crop` scales the short side to image_size and keeps the centre square, `pad` scales
    the long side to it and fills the rest with black, `squash` scales each side to it (the aspect ratio is
    lost), `none` refuses an image of another size."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            img.load()
            rgb = to_rgb(ImageOps.exif_transpose(img), file)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{file}: unreadable or corrupt image ({exc})") from None
    size = (image_size, image_size)
    if resize == "crop":
        rgb = ImageOps.fit(rgb, size, method=Image.Resampling.BILINEAR)
    elif resize == "pad":
        rgb = ImageOps.pad(rgb, size, method=Image.Resampling.BILINEAR, color=(0, 0, 0))
    elif resize == "squash":
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    elif rgb.size != size:
        raise DataError(
            f"{file}: image size {rgb.size[0]}x{rgb.size[1]} differs from data.image_size = {image_size} "
            f"({image_size}x{image_size}); set data.image_size, or data.resize=crop (or pad, squash) to size "
            "every image"
        )
    return np.asarray(rgb, dtype=np.uint8)


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I": how Pillow opens some 16-bit PNGs


def to_rgb(img: Any, file: Path) -> Any:
    """Any Pillow image as 8-bit RGB. The rules: a transparent pixel (RGBA, LA, PA, or a palette or grey image
    with a transparency key) is composited over white; a 16-bit grey image is scaled from 0-65535 to 0-255
    (an "I" image is read as 16-bit, values clipped to that range); grey, palette, CMYK and YCbCr images go
    through Pillow's own conversion (CMYK without its ICC profile); floating-point images are refused."""
    from PIL import Image

    if img.mode in SIXTEEN_BIT_MODES:
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        return Image.fromarray(np.round(wide / 257).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        raise DataError(f"{file}: 32-bit floating-point image (mode F): save it as 8- or 16-bit integers")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise DataError(f"{file}: image mode {img.mode} cannot be converted to RGB ({exc})") from None


def _npz_member(file: Path, name: str) -> Callable[[], np.ndarray] | None:
    """Memory-map `name.npy` inside an uncompressed `.npz` (np.savez), or None when it is compressed."""
    import zipfile

    with zipfile.ZipFile(file) as zf:
        info = zf.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(file, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
            start = (
                info.header_offset
                + 30
                + int.from_bytes(local[26:28], "little")
                + int.from_bytes(local[28:30], "little")
            )
            fh.seek(start)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            reader = readers.get(np.lib.format.read_magic(fh))
            if reader is None:  # a newer header version: read it the ordinary way
                return None
            shape, fortran, dtype = reader(fh)
            offset = fh.tell()
    if dtype.hasobject or fortran:
        return None
    # A fresh map per read: the pages a map has touched count as the process's memory until it is unmapped.
    return lambda: np.memmap(file, dtype=dtype, mode="r", shape=shape, offset=offset)


def open_npz(path: str) -> ImageSource:
    """An `.npz` with `x` (N x H x W x 3 or N x H x W, uint8 0..255) and `y` (N integer labels), optional
    `class_names`. Written by np.savez (uncompressed), `x` is memory-mapped and read a chunk at a time;
    compressed (np.savez_compressed), it is decompressed into memory. Every chunk read is checked."""
    import zipfile

    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: .npz file not found (fix data.path)")
    try:
        with np.load(file, allow_pickle=False) as npz:
            missing = {"x", "y"} - set(npz.files)
            if missing:
                raise DataError(f"{file}: missing array(s) {sorted(missing)}; it has {sorted(npz.files)}")
            y = npz["y"]
            names = npz["class_names"] if "class_names" in npz.files else None
            mapped = _npz_member(file, "x")
            x = mapped() if mapped else npz["x"]
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{file}: unreadable or truncated .npz ({exc})") from None
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] != 3):
        raise DataError(f"{file}: x has shape {x.shape}; expected N x H x W x 3 (or N x H x W)")
    if x.dtype.kind not in "uif":
        raise DataError(f"{file}: x has dtype {x.dtype}; expected uint8 pixel values 0..255")
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise DataError(f"{file}: y must be a 1-D integer array, got {y.dtype} with shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{file}: x has {len(x)} rows but y has {len(y)}")
    num_classes = int(y.max()) + 1 if y.size else 0
    class_names = tuple(str(n) for n in names) if names is not None else tuple(str(i) for i in range(num_classes))

    def read(rows: np.ndarray) -> np.ndarray:
        source = mapped() if mapped else x
        chunk = np.asarray(source[np.sort(rows)])[np.argsort(np.argsort(rows))]  # in file order, then as asked
        del source
        if chunk.ndim == 3:
            chunk = np.repeat(chunk[..., None], 3, axis=-1)
        if np.issubdtype(chunk.dtype, np.floating) and np.isnan(chunk).any():
            raise DataError(f"{file}: x contains NaN pixel values")
        if chunk.size and (chunk.min() < 0 or chunk.max() > 255):
            raise DataError(f"{file}: pixel values span [{chunk.min()}, {chunk.max()}]; expected 0..255")
        if np.issubdtype(chunk.dtype, np.floating) and not np.all(np.equal(np.mod(chunk, 1), 0)):
            raise DataError(f"{file}: x holds fractional pixel values; store uint8 0..255 (not normalized data)")
        return chunk.astype(np.uint8)

    return ImageSource(y.astype(np.int64), class_names, read, str(file))


def open_source(source: str, path: str | None, image_size: int, resize: str) -> ImageSource:
    """Dispatch on `data.source`."""
    if source == "digits":
        return in_memory(load_digits(image_size), "digits")
    if source == "cifar10":
        return in_memory(load_cifar10(str(path)), str(path))
    if source == "folder":
        return open_folder(str(path), image_size, resize)
    if source == "npz":
        return open_npz(str(path))
    raise DataError(f"data.source = {source!r}: unknown source; expected one of digits, cifar10, folder, npz")


def validate_images(x: np.ndarray, image_size: int, where: str) -> None:
    """Check a chunk of images: uint8, image_size x image_size x 3."""
    if x.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8, got {x.dtype}")
    if x.shape[1:] != (image_size, image_size, 3):
        raise DataError(
            f"{where}: images are {'x'.join(map(str, x.shape[1:]))}, expected {image_size}x{image_size}x3 "
            "(set data.image_size, or data.resize=crop for a folder)"
        )


def validate_labels(y: np.ndarray, names: tuple[str, ...], where: str) -> None:
    """Check every label: in range, at least two classes, every class present."""
    if len(y) == 0:
        raise DataError(f"{where}: the dataset is empty")
    bad = (y < 0) | (y >= len(names))
    if bad.any():
        raise DataError(
            f"{where}: label {int(y[bad][0])} at row {int(np.flatnonzero(bad)[0])} is out of range "
            f"[0, {len(names)}) for classes {list(names)}"
        )
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(f"{where}: only one class ({names[int(present[0])]!r}); a classifier needs at least two")
    absent = sorted(set(range(len(names))) - set(present.tolist()))
    if absent:
        raise DataError(f"{where}: class(es) {[names[i] for i in absent]} have no samples")


def subsample(labels: np.ndarray, rows: int | None, seed: int) -> np.ndarray:
    """Indices of a class-balanced random subset of `rows` rows (all rows, shuffled, when rows is None)."""
    rng = np.random.default_rng(seed)
    if rows is None or rows >= len(labels):
        return rng.permutation(len(labels))
    classes = np.unique(labels)
    quota = np.full(len(classes), rows // len(classes))
    quota[: rows % len(classes)] += 1
    picked = []
    for cls, n in zip(classes, quota, strict=True):
        members = np.flatnonzero(labels == cls)
        picked.append(rng.choice(members, size=min(n, len(members)), replace=False))
    return rng.permutation(np.concatenate(picked))


def stratified_split(
    labels: np.ndarray, class_names: tuple[str, ...], val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Assign each row to train (0), val (1) or test (2), per class; every class must appear in every split."""
    rng = np.random.default_rng(seed)
    split = np.zeros(len(labels), dtype=np.int8)
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(len(members) * test_fraction)
        n_val = round(len(members) * val_fraction)
        split[members[:n_test]] = 2
        split[members[n_test : n_test + n_val]] = 1
    for code, name in enumerate(SPLIT_NAMES):  # every class in train, val and test
        missing = sorted(set(np.unique(labels).tolist()) - set(np.unique(labels[split == code]).tolist()))
        if missing:
            raise DataError(
                f"the {name} split has no samples of class(es) {[class_names[i] for i in missing]}: "
                "add rows, raise data.rows, or change data.val_fraction / data.test_fraction"
            )
    return split


def limit_training_labels(labels: np.ndarray, split: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """The split with all but `per_class` random training rows of each class marked UNLABELLED (None: all
    kept). Validation and test rows are untouched, so accuracies stay comparable across label budgets."""
    if per_class is None:
        return split
    rng = np.random.default_rng([seed, per_class])
    out = split.copy()
    for cls in np.unique(labels):
        train = np.flatnonzero((labels == cls) & (split == TRAIN))
        if len(train) < per_class:
            raise DataError(
                f"data.train_per_class = {per_class} but class {int(cls)} has only {len(train)} training rows: "
                "lower it, raise data.rows, or set it to null (every training row labelled)"
            )
        out[rng.permutation(train)[per_class:]] = UNLABELLED
    return out


@dataclass(frozen=True)
class Ingested:
    """The rows ingest keeps, in their final order: labels, split codes and class names in memory, the images
    read from the source a chunk at a time (`chunks`)."""

    source: ImageSource
    keep: np.ndarray  # source row of each kept row
    labels: np.ndarray
    split: np.ndarray
    image_size: int

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.source.class_names

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        """The kept images in order, `rows` at a time, each chunk checked."""
        for start in range(0, len(self.keep), rows):
            chunk = self.source.read(self.keep[start : start + rows])
            validate_images(chunk, self.image_size, self.source.where)
            yield chunk

    def images(self) -> np.ndarray:
        """Every kept image in memory (small data, tests and benchmarks)."""
        return np.concatenate(list(self.chunks(max(1, len(self.keep)))))


def ingest(data: DataParams, seed: int) -> Ingested:
    """Open the source `data` names, check its labels, subsample and split (keeping `data.train_per_class`
    training labels per class, if set). No image is read until the result's `chunks` are."""
    opened = open_source(data.source, data.path, data.image_size, data.resize)
    validate_labels(opened.labels, opened.class_names, opened.where)
    keep = subsample(opened.labels, data.rows, seed)
    labels = opened.labels[keep]
    split = stratified_split(labels, opened.class_names, data.val_fraction, data.test_fraction, seed)
    split = limit_training_labels(labels, split, data.train_per_class, seed)
    return Ingested(opened, keep, labels, split, data.image_size)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 0..1 (the seed's 120 -> 0.47)."""
    if images.dtype != np.uint8:
        raise DataError(f"normalize expects uint8 images (ingest's output), got {images.dtype}")
    return images.astype(np.float32) / np.float32(255.0)
