"""Datasets larger than memory: a folder of row-sharded `.npy` files, written and read a chunk at a time.

A dataset folder (`data/raw`, `data/normalized`, `data/features`) holds

    meta.json               rows, the big array's name, dtype, row shape, rows per shard; the class names
    labels.npy, split.npy   one small value per row, whole (9 bytes a row)
    <name>-00000.npy, ...   the big array (images, pixels or features), `rows_per_shard` rows per file

Why `.npy` shards and not TFRecord: NumPy writes and memory-maps them without TensorFlow, so `ingest` and
`normalize` stay free of it; any row is read by index without parsing, which the training loop's per-epoch
shuffle needs; a file's bytes are a pure function of its values, so outputs are byte-reproducible and DVC's
hashes stable; and DVC caches each shard as its own file. Shards of about `SHARD_BYTES` keep every read and
write bounded: a stage holds a chunk, never the dataset (labels and split excepted).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SHARD_BYTES = 32 << 20
META = "meta.json"


def rows_per_shard(row_shape: Sequence[int], dtype: np.dtype | str) -> int:
    """How many rows one shard holds: about SHARD_BYTES, at least one row (a pure function of the row's shape
    and dtype, so equal data is cut into equal shards)."""
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return max(1, SHARD_BYTES // max(1, row_bytes))


@dataclass
class ShardedArray:
    """A read-only N x ... array stored as shards: indexing with an int, a slice or an index array reads
    just those rows, so `x[batch_indices]` costs a batch, not the dataset.

    Rows are read with `os.pread` at their offset in the shard file, not through a memory map: pages of a
    map stay in the process's resident memory once touched, so reading a dataset through maps would grow a
    stage's memory with the dataset; read this way it is bounded by the rows asked for (the OS page cache
    still serves repeated reads).
    """

    folder: Path
    name: str
    rows: int
    row_shape: tuple[int, ...]
    dtype: np.dtype
    per_shard: int
    _offsets: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.rows, *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.rows

    def shard_path(self, i: int) -> Path:
        return self.folder / f"{self.name}-{i:05d}.npy"

    def _data_offset(self, i: int) -> int:
        """Where shard i's rows start: after its .npy header (read once)."""
        if i not in self._offsets:
            with open(self.shard_path(i), "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                    version, np.lib.format.read_array_header_2_0
                )
                read_header(fh)
                self._offsets[i] = fh.tell()
        return self._offsets[i]

    def _read(self, shard: int, first: int, count: int, out: np.ndarray) -> None:
        """Rows first .. first + count - 1 of a shard into `out` (contiguous, count rows)."""
        size = count * self.row_bytes
        with open(self.shard_path(shard), "rb", buffering=0) as fh:
            got = os.preadv(fh.fileno(), [memoryview(out).cast("B")], self._data_offset(shard) + first * self.row_bytes)
        if got != size:
            raise OSError(f"{self.shard_path(shard)}: truncated ({got} of {size} bytes at row {first})")

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, int | np.integer):
            i = int(index) + (self.rows if index < 0 else 0)
            if not 0 <= i < self.rows:
                raise IndexError(f"row {index} of {self.rows}")
            return self[np.array([i])][0]
        indices = np.arange(self.rows)[index] if isinstance(index, slice) else np.asarray(index)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.rows):
            raise IndexError(f"rows out of range 0..{self.rows - 1}")
        out = np.empty((len(indices), *self.row_shape), dtype=self.dtype)
        order = np.argsort(indices, kind="stable")
        ordered = indices[order]
        # Runs of consecutive rows within one shard are read in one call (a slice is one run per shard).
        start = 0
        while start < len(ordered):
            shard, first = divmod(int(ordered[start]), self.per_shard)
            end = start + 1
            while (end < len(ordered) and ordered[end] == ordered[end - 1] + 1
                   and ordered[end] // self.per_shard == shard):  # fmt: skip
                end += 1
            block = np.empty((end - start, *self.row_shape), dtype=self.dtype)
            self._read(shard, first, end - start, block)
            out[order[start:end]] = block
            start = end
        return out

    def chunks(self, rows: int | None = None) -> Iterator[np.ndarray]:
        """The rows in order, `rows` at a time (default: one shard at a time)."""
        step = rows or self.per_shard
        for start in range(0, self.rows, step):
            yield self[start : min(start + step, self.rows)]


# A prediction batch holds at most this many bytes of input: 256 rows of 32x32x3 float32 pixels (the
# default's batch), 13 at 160x160, whose activations in a network like MobileNetV2 would otherwise take GBs.
PREDICT_BATCH_BYTES = 4 << 20


def prediction_batch(row_shape: Sequence[int], dtype: np.dtype | str = np.float32, most: int = 256) -> int:
    """Rows per prediction batch: `most`, or fewer for rows so large that a batch would pass PREDICT_BATCH_BYTES."""
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return max(1, min(most, PREDICT_BATCH_BYTES // max(1, row_bytes)))


def chunk_rows(row_shape: Sequence[int], dtype: np.dtype | str, multiple: int | None = None) -> int:
    """Rows per chunk when streaming: about SHARD_BYTES, a multiple of `multiple` (default: the prediction
    batch of such rows, so chunked prediction batches exactly as one call over every row would)."""
    multiple = multiple or prediction_batch(row_shape, dtype)
    return max(1, rows_per_shard(row_shape, dtype) // multiple) * multiple


@dataclass(frozen=True)
class RowView:
    """Rows `indices` of an indexable array (an ndarray or a ShardedArray), gathered only when indexed: the
    train split of a sharded dataset without reading it."""

    array: Any
    indices: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.indices), *self.array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.array[self.indices[index]]


def rows(array: Any, mask: np.ndarray) -> RowView:
    """The rows of `array` where `mask` is true (or at the given indices), not yet read."""
    mask = np.asarray(mask)
    return RowView(array, np.flatnonzero(mask) if mask.dtype == bool else mask)


@dataclass(frozen=True)
class Dataset:
    """A sharded dataset: the big array plus the per-row labels and split codes, and the class names."""

    array: ShardedArray
    labels: np.ndarray
    split: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


def open_dataset(folder: str | Path) -> Dataset:
    """Open a dataset folder written by `write_dataset` (nothing is read but the labels and the split)."""
    folder = Path(folder)
    meta_path = folder / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: not a dataset folder (no {META}); run the stage that writes it")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    array = ShardedArray(folder, meta["name"], int(meta["rows"]), tuple(meta["row_shape"]), np.dtype(meta["dtype"]),
                         int(meta["rows_per_shard"]))  # fmt: skip
    labels = np.load(folder / "labels.npy", allow_pickle=False)
    split = np.load(folder / "split.npy", allow_pickle=False)
    return Dataset(array, labels, split, tuple(meta["class_names"]))


class ShardWriter:
    """Appends rows in chunks; each full shard is written as soon as it is complete."""

    def __init__(self, folder: Path, name: str, row_shape: Sequence[int], dtype: np.dtype | str) -> None:
        self.folder, self.name = folder, name
        self.row_shape, self.dtype = tuple(int(d) for d in row_shape), np.dtype(dtype)
        self.per_shard = rows_per_shard(self.row_shape, self.dtype)
        self.rows = 0
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.shape[1:] != self.row_shape or rows.dtype != self.dtype:
            raise ValueError(
                f"{self.name}: got rows {rows.dtype} {rows.shape[1:]}, expected {self.dtype} {self.row_shape}"
            )
        self._pending.append(rows)
        self._pending_rows += len(rows)
        while self._pending_rows >= self.per_shard:
            self._flush(self.per_shard)

    def _flush(self, n: int) -> None:
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        shard, rest = block[:n], block[n:]
        index = self.rows // self.per_shard
        np.save(self.folder / f"{self.name}-{index:05d}.npy", np.ascontiguousarray(shard), allow_pickle=False)
        self.rows += len(shard)
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)

    def close(self) -> None:
        if self._pending_rows:
            self._flush(self._pending_rows)


@contextlib.contextmanager
def write_dataset(
    folder: str | Path,
    name: str,
    row_shape: Sequence[int],
    dtype: np.dtype | str,
    labels: np.ndarray,
    split: np.ndarray,
    class_names: Sequence[str],
) -> Iterator[ShardWriter]:
    """Write a dataset folder: the caller appends exactly `len(labels)` rows of `name` to the yielded writer.

    Everything is written into a temporary folder beside `folder`, which replaces it only when the block
    succeeds with every row written: a failure leaves no half-written dataset under the real name.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        writer = ShardWriter(tmp, name, row_shape, dtype)
        yield writer
        writer.close()
        if writer.rows != len(labels):
            raise ValueError(f"{folder}: {writer.rows} rows of {name} written for {len(labels)} labels")
        np.save(tmp / "labels.npy", np.asarray(labels), allow_pickle=False)
        np.save(tmp / "split.npy", np.asarray(split), allow_pickle=False)
        meta = {"name": name, "rows": writer.rows, "row_shape": list(writer.row_shape), "dtype": writer.dtype.str,
                "rows_per_shard": writer.per_shard, "class_names": [str(c) for c in class_names]}  # fmt: skip
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_folder(new: Path, target: Path) -> None:
    """Put `new` where `target` is: the old folder moves aside first (a folder cannot be renamed over a
    non-empty one), so at every moment either the old or the new dataset is whole on disk."""
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old) if target.is_dir() and not target.is_symlink() else target.unlink()
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save(folder: str | Path, name: str, array: np.ndarray, labels: np.ndarray, split: np.ndarray,
         class_names: Sequence[str]) -> None:  # fmt: skip
    """Write an in-memory array as a dataset folder (small data: tests, benchmarks)."""
    with write_dataset(folder, name, array.shape[1:], array.dtype, labels, split, class_names) as out:
        out.append(array)
