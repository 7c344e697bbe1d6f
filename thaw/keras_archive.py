"""The `.keras` file format, read and written without TensorFlow: members, metadata, trainable flags.

A `.keras` file is a zip of `config.json` (the architecture, with each layer's `trainable` flag),
`metadata.json` (the Keras version and the save date) and `model.weights.h5`. Keras stamps the save date
into the metadata and the file times into the zip, so two saves of the same model differ in bytes; every
archive the pipeline writes goes through `write_pinned` instead, so equal models give equal bytes (and
equal DVC hashes on every clone). Keras also writes Python object ids into the config; those are renumbered.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from thaw.artifacts import write_zip
from thaw.errors import ArchiveError

CONFIG = "config.json"
METADATA = "metadata.json"
PINNED_DATE = "1980-01-01@00:00:00"  # the zip format's own epoch, as for the member timestamps
SUPPORTED_MAJOR = 3  # the Keras major version whose config layout this module reads and edits


def read_members(path: str | Path) -> list[tuple[str, bytes, int]]:
    """Every member of the archive as (name, bytes, compress type), in archive order."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [(info.filename, archive.read(info), info.compress_type) for info in archive.infolist()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{path}: not a readable .keras file ({exc})") from None


def member_json(members: list[tuple[str, bytes, int]], name: str, path: str | Path) -> dict[str, Any]:
    for member, data, _ in members:
        if member == name:
            return json.loads(data)
    raise ArchiveError(f"{path}: not a .keras model file (no {name} inside)")


def keras_version(members: list[tuple[str, bytes, int]], path: str | Path) -> str:
    """The Keras version that saved the archive; ArchiveError unless it is one this module understands."""
    version = str(member_json(members, METADATA, path).get("keras_version", ""))
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) != SUPPORTED_MAJOR:
        raise ArchiveError(
            f"{path}: saved by Keras {version or '(unknown version)'}; this pipeline reads and edits archives "
            f"of Keras {SUPPORTED_MAJOR}.x only (re-save the model with Keras {SUPPORTED_MAJOR})"
        )
    return version


def renumber_shared_objects(config: Any, ids: dict[Any, int] | None = None) -> Any:
    """`config` with every `shared_object_id` renumbered 1, 2, ... in order of first appearance.

    Keras writes the Python `id()` of each object shared between layers (a memory address, different in
    every process); the loader only matches equal ids, so consistent small numbers load the same model.
    """
    ids = {} if ids is None else ids
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key == "shared_object_id":
                out[key] = ids.setdefault(value, len(ids) + 1)
            else:
                out[key] = renumber_shared_objects(value, ids)
        return out
    if isinstance(config, list):
        return [renumber_shared_objects(value, ids) for value in config]
    return config


def write_pinned(path: str | Path, members: list[tuple[str, bytes, int]], config: dict[str, Any] | None = None) -> None:
    """Write `members` to `path` (atomically) with the save date, the file times and the shared-object ids
    pinned; `config`, when given, replaces `config.json`."""
    out = []
    for name, data, compress_type in members:
        if name == METADATA:
            metadata = json.loads(data)
            if "date_saved" in metadata:
                metadata["date_saved"] = PINNED_DATE
            data = json.dumps(metadata).encode()
        elif name == CONFIG:
            data = json.dumps(renumber_shared_objects(json.loads(data) if config is None else config)).encode()
        out.append((name, data, compress_type))
    write_zip(path, out)


def pin(src: str | Path, dst: str | Path) -> None:
    """Copy a freshly saved `.keras` file to `dst` with its save date and file times pinned."""
    write_pinned(dst, read_members(src))


def nested_layers(layer: dict[str, Any]) -> list[dict[str, Any]]:
    """`layer` and every layer inside it (nested models are walked into), as config entries."""
    found = [layer]
    for inner in layer["config"].get("layers") or []:
        found.extend(nested_layers(inner))
    return found


def top_layer(config: dict[str, Any], name: str, path: str | Path) -> dict[str, Any]:
    """The config entry of the model's top-level layer `name`; ArchiveError when there is not exactly one."""
    found = [layer for layer in config["config"].get("layers", []) if layer["config"].get("name") == name]
    if len(found) != 1:
        raise ArchiveError(f"{path}: expected one layer named {name!r} in the model, found {len(found)}")
    return found[0]


def trainable_flags(config: dict[str, Any], part: str, path: str | Path) -> dict[str, bool]:
    """`name -> trainable` for every layer inside top-level layer `part` that carries the flag."""
    return {
        layer["config"]["name"]: bool(layer["config"]["trainable"])
        for layer in nested_layers(top_layer(config, part, path))
        if "trainable" in layer["config"]
    }
