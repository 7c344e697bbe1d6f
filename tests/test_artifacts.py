"""thaw.artifacts: atomic writes (a file appears complete or not at all), reproducible .npz bytes, no pickles."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from thaw.artifacts import (
    atomic_path,
    read_csv,
    read_json,
    write_csv,
    write_json,
    write_npz,
    write_text,
)


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# --- atomic_path --------------------------------------------------------------------------------------------------


def test_atomic_path_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp != target
        assert tmp.parent == target.parent
        assert tmp.suffix == ".txt"
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible until the block succeeds
    assert target.read_text() == "new"
    assert leftovers(tmp_path, {"out.txt"}) == []


def test_atomic_path_keeps_the_old_file_when_the_block_raises(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="crash mid-write"), atomic_path(target) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert leftovers(tmp_path, {"out.txt"}) == []


def test_atomic_path_creates_nothing_when_the_block_raises(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "out.npz"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert not target.exists()
    assert leftovers(target.parent, set()) == []


def test_failed_write_npz_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "out.npz"
    with pytest.raises(ValueError):
        write_npz(target, ok=np.arange(3), bad=np.array([{"a": 1}], dtype=object))
    assert leftovers(tmp_path, set()) == []


def test_write_text_creates_parent_folders(tmp_path: Path) -> None:
    write_text(tmp_path / "a" / "b.md", "# title\n")
    assert (tmp_path / "a" / "b.md").read_text() == "# title\n"


# --- npz ----------------------------------------------------------------------------------------------------------


def arrays() -> dict[str, np.ndarray]:
    return {
        "images": np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3),
        "pixels": np.linspace(0, 1, 10, dtype=np.float32),
        "labels": np.array([3, 1], dtype=np.int64),
        "class_names": np.asarray(["cat", "dog"]),
    }


def test_write_npz_round_trip_with_np_load(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    write_npz(path, **arrays())
    with np.load(path) as npz:
        assert sorted(npz.files) == sorted(arrays())
        for key, value in arrays().items():
            assert npz[key].dtype == value.dtype
            assert np.array_equal(npz[key], value)


def test_write_npz_is_byte_identical_for_equal_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    write_npz(first, **arrays())
    # A later run: the clock has moved on by a day; a member stamped with the current time would change the bytes.
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 86_400)
    write_npz(second, **arrays())
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_STORED}


def test_write_npz_differs_for_different_content(tmp_path: Path) -> None:
    changed = arrays()
    changed["labels"] = np.array([3, 2], dtype=np.int64)
    write_npz(tmp_path / "a.npz", **arrays())
    write_npz(tmp_path / "b.npz", **changed)
    assert (tmp_path / "a.npz").read_bytes() != (tmp_path / "b.npz").read_bytes()


def test_write_npz_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    write_npz(path, x=np.zeros(3))
    write_npz(path, y=np.ones(2))
    with np.load(path, allow_pickle=False) as npz:
        assert npz.files == ["y"]


def test_write_npz_refuses_object_arrays(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="allow_pickle=False"):
        write_npz(tmp_path / "d.npz", x=np.array([object()], dtype=object))


# --- csv and json -------------------------------------------------------------------------------------------------


def test_csv_round_trip(tmp_path: Path) -> None:
    rows = [
        {"epoch": 1, "phase": "head", "loss": 1.25, "note": 'a, quoted "value"'},
        {"epoch": 2, "phase": "finetune", "loss": 0.5, "note": ""},
    ]
    path = tmp_path / "plots" / "history.csv"
    write_csv(path, rows)
    assert path.read_text().splitlines()[0] == "epoch,phase,loss,note"
    assert read_csv(path) == [{k: str(v) for k, v in row.items()} for row in rows]


def test_csv_round_trip_with_another_delimiter(tmp_path: Path) -> None:
    rows = [{"layer": "conv,1", "trainable": True}]
    path = tmp_path / "layers.tsv"
    write_csv(path, rows, delimiter="\t")
    assert path.read_text() == "layer\ttrainable\nconv,1\tTrue\n"
    assert read_csv(path, delimiter="\t") == [{"layer": "conv,1", "trainable": "True"}]


def test_write_csv_refuses_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    with pytest.raises(ValueError, match="no rows"):
        write_csv(path, [])
    assert not path.exists()


def test_json_round_trip(tmp_path: Path) -> None:
    data = {"b": [1, 2.5, None], "a": {"nested": True, "text": "héllo"}}
    path = tmp_path / "metrics" / "m.json"
    write_json(path, data)
    assert read_json(path) == data
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert text.index('"a"') < text.index('"b"')  # sorted keys: stable diffs
    assert json.loads(text) == data


def test_write_json_refuses_unserializable_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert read_json(path) == {"ok": 1}
    assert leftovers(tmp_path, {"m.json"}) == []
