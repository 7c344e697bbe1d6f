"""Fingerprints of the external files and folders a variant reads (`inputs.<name>` in params.yaml).

DVC runs one `input@<name>` stage per entry of `inputs` (dvc.yaml's `foreach`): the external path is that
stage's dependency, so DVC notices when the file is replaced or a folder's content changes, and its
output, `data/inputs/<name>.json`, is a dependency of the stage that reads the path (`ingest` for data,
`pretrain-base` for the base). The fingerprint is a content hash, so an unchanged input reruns nothing,
and `track` keys the MLflow run on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thaw import artifacts
from thaw.errors import DataError

# What `data/inputs/<name>.json` holds when the variant reads no external file (the committed default).
NO_INPUT: dict[str, Any] = {"kind": "none", "path": None}


def fingerprint(path: str | Path) -> dict[str, Any]:
    """The content hash of a file, or of a folder (every file's relative path and md5; hidden files and
    folders are skipped, as the folder source never reads them): equal content, equal fingerprint."""
    # DVC hashes the path too, for its own status, but its hashing API is internal: hence these few lines.
    root = Path(path)
    if root.is_file():
        md5 = artifacts.file_md5(root)
        return {"kind": "file", "path": str(path), "md5": md5, "files": 1, "bytes": root.stat().st_size}
    if not root.is_dir():
        raise DataError(f"{root}: input not found (fix data.path or base.path)")
    files = artifacts.folder_files(root, skip_hidden=True)
    md5 = artifacts.path_md5(root, skip_hidden=True)
    size = sum(f.stat().st_size for f in files)
    return {"kind": "folder", "path": str(path), "md5": md5, "files": len(files), "bytes": size}


def check_fingerprint(record: dict[str, Any], path: str | None, where: str | Path) -> None:
    """The stage that reads `path` checks that its fingerprint is of that path (not left by another variant)."""
    if record.get("path") != path:
        raise DataError(
            f"{where} fingerprints {record.get('path')!r} but this variant reads {path!r}: it was left by another "
            f"variant; restore it (`git checkout {where}`) or run the whole pipeline with `dvc repro`"
        )
