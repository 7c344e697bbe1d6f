"""thaw.inputs: content fingerprints of external files and folders, and the check that a stage reads the
path its fingerprint is of."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from thaw.errors import DataError
from thaw.inputs import NO_INPUT, check_fingerprint, fingerprint

REPO = Path(__file__).resolve().parents[1]


def make_folder(root: Path) -> Path:
    for cls, names in {"cat": ["a.png", "b.png"], "dog": ["c.png"]}.items():
        (root / cls).mkdir(parents=True)
        for name in names:
            (root / cls / name).write_bytes(f"{cls}/{name}".encode())
    return root


def test_a_file_is_fingerprinted_by_content(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    path.write_bytes(b"one")
    first = fingerprint(path)
    assert first == {"kind": "file", "path": str(path), "md5": "f97c5d29941bfb1b2fdab0874906ab82", "files": 1,
                     "bytes": 3}  # fmt: skip
    os.utime(path, (1, 1))  # a new modification time alone changes nothing
    assert fingerprint(path) == first
    path.write_bytes(b"two")  # replaced in place
    assert fingerprint(path)["md5"] != first["md5"]


def test_a_folder_is_fingerprinted_by_every_file_and_its_place(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images")
    first = fingerprint(root)
    assert (first["kind"], first["files"], first["bytes"]) == ("folder", 3, len(b"cat/a.png" * 3))
    (root / ".hidden").write_text("not an image the folder source reads")
    (root / "cat" / ".DS_Store").write_text("neither is this")
    assert fingerprint(root) == first
    (root / "dog" / "c.png").write_bytes(b"edited")
    edited = fingerprint(root)
    assert edited["md5"] != first["md5"]
    (root / "dog" / "c.png").rename(root / "cat" / "c.png")  # same bytes, another class
    assert fingerprint(root)["md5"] != edited["md5"]


def test_a_missing_input_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope: input not found"):
        fingerprint(tmp_path / "nope")


def test_a_stage_refuses_a_fingerprint_of_another_path(tmp_path: Path) -> None:
    check_fingerprint(NO_INPUT, None, "data/inputs/data.json")
    check_fingerprint({"kind": "file", "path": "/d/x.npz", "md5": "0"}, "/d/x.npz", "data/inputs/data.json")
    with pytest.raises(DataError, match=r"data/inputs/data\.json fingerprints '/d/x\.npz' but this variant reads "
                                        r"None: .*git checkout data/inputs/data\.json"):  # fmt: skip
        check_fingerprint({"kind": "file", "path": "/d/x.npz"}, None, "data/inputs/data.json")
    with pytest.raises(DataError, match=r"fingerprints None but this variant reads '/d/y\.npz'"):
        check_fingerprint(NO_INPUT, "/d/y.npz", "data/inputs/data.json")


def test_the_committed_fingerprints_say_no_input(project_root: Path) -> None:
    for name in ("data", "base"):
        assert json.loads((project_root / "data/inputs" / f"{name}.json").read_text()) == NO_INPUT
