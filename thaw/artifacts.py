"""Atomic reads and writes of pipeline artifacts: a file appears complete or not at all."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# The per-epoch columns of every history CSV after `epoch` and `phase` (train-head's and finetune's).
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """The md5 of a file's bytes (the hash DVC records for it), read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def path_md5(path: str | Path, skip_hidden: bool = False) -> str:
    """The md5 of a file, or of a folder's files (their relative paths and md5s, in sorted order; with
    `skip_hidden`, files under a name starting with "." are left out)."""
    path = Path(path)
    if not path.is_dir():
        return file_md5(path)
    digest = hashlib.md5()
    for file in folder_files(path, skip_hidden):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_md5(file)}\n".encode())
    return digest.hexdigest()


def folder_files(folder: Path, skip_hidden: bool = False) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if skip_hidden:
        files = [f for f in files if not any(part.startswith(".") for part in f.relative_to(folder).parts)]
    return files


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); move it over `path` only if the block succeeds.

    The rename is atomic on POSIX, so a crash mid-write never leaves a truncated file under the real name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# The timestamp of every zip member we write: equal contents then give equal bytes (and equal DVC hashes).
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Write an uncompressed `.npz` that np.load reads, byte-identical for equal arrays.

    Equal bytes give equal DVC hashes, so a rerun that reproduces its output does not rerun what follows;
    the zip members' timestamps are pinned here rather than left to numpy's defaults.
    """
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_TIME)
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def write_zip(path: str | Path, members: Sequence[tuple[str, bytes, int]]) -> None:
    """Write (name, bytes, compress type) members atomically, every timestamp pinned: equal members, equal bytes."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", allowZip64=True) as out:
        for name, data, compress_type in members:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = compress_type
            info.external_attr = 0o644 << 16
            out.writestr(info, data)


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], delimiter: str = ",") -> None:
    if not rows:
        raise ValueError(f"refusing to write {path}: no rows")
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: str | Path, delimiter: str = ",") -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))
