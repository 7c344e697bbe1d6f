"""thaw.shards: datasets as row-sharded `.npy` files: round trips, gathering rows across shards in the order
asked, byte-identical folders for equal data, and no half-written dataset after a failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from thaw import artifacts, shards


@pytest.fixture
def small_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards of 7 rows of 4x4x3 float32 (192 bytes a row), so tiny data spans several shards."""
    monkeypatch.setattr(shards, "SHARD_BYTES", 7 * 4 * 4 * 3 * 4)


def _data(n: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 4, 4, 3), dtype=np.float32), np.arange(n) % 3, np.arange(n, dtype=np.int8) % 4


def test_a_dataset_round_trips_through_several_shards(tmp_path: Path, small_shards: None):
    x, labels, split = _data()
    shards.save(tmp_path / "d", "pixels", x, labels, split, ["a", "b", "c"])
    files = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert files == ["labels.npy", "meta.json", *(f"pixels-{i:05d}.npy" for i in range(5)), "split.npy"]
    data = shards.open_dataset(tmp_path / "d")
    assert (len(data), data.array.shape, data.array.dtype) == (30, (30, 4, 4, 3), np.float32)
    assert data.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(data.labels, labels)
    np.testing.assert_array_equal(data.split, split)
    np.testing.assert_array_equal(data.array[:], x)
    np.testing.assert_array_equal(np.concatenate(list(data.array.chunks(4))), x)


def test_rows_are_gathered_across_shards_in_the_order_asked(tmp_path: Path, small_shards: None):
    x, labels, split = _data()
    shards.save(tmp_path / "d", "pixels", x, labels, split, ["a", "b", "c"])
    array = shards.open_dataset(tmp_path / "d").array
    order = np.random.default_rng(1).permutation(30)
    np.testing.assert_array_equal(array[order], x[order])
    np.testing.assert_array_equal(array[np.array([29, 0, 29, 7])], x[[29, 0, 29, 7]])
    np.testing.assert_array_equal(array[-1], x[-1])
    np.testing.assert_array_equal(array[split == 2], x[split == 2])
    view = shards.rows(array, split == 1)
    assert view.shape == (int((split == 1).sum()), 4, 4, 3)
    np.testing.assert_array_equal(view[np.array([1, 0])], x[split == 1][[1, 0]])
    with pytest.raises(IndexError):
        array[30]


def test_equal_data_gives_byte_identical_folders(tmp_path: Path, small_shards: None):
    x, labels, split = _data()
    shards.save(tmp_path / "a", "pixels", x, labels, split, ["a", "b", "c"])
    with shards.write_dataset(tmp_path / "b", "pixels", x.shape[1:], x.dtype, labels, split, ["a", "b", "c"]) as out:
        for start in range(0, 30, 4):  # appended in other chunk sizes: the same shards
            out.append(x[start : start + 4])
    assert artifacts.path_md5(tmp_path / "a") == artifacts.path_md5(tmp_path / "b")


def test_a_failed_write_leaves_the_previous_dataset_whole(tmp_path: Path):
    x, labels, split = _data()
    shards.save(tmp_path / "d", "pixels", x, labels, split, ["a", "b", "c"])
    before = artifacts.path_md5(tmp_path / "d")
    with pytest.raises(RuntimeError), shards.write_dataset(tmp_path / "d", "pixels", (4, 4, 3), np.float32, labels,
                                                           split, ["a", "b", "c"]) as out:  # fmt: skip
        out.append(x[:10])
        raise RuntimeError("killed mid-write")
    with (
        pytest.raises(ValueError, match=r"10 rows of pixels written for 30 labels"),
        shards.write_dataset(tmp_path / "d", "pixels", (4, 4, 3), np.float32, labels, split, ["a"]) as out,
    ):
        out.append(x[:10])
    assert artifacts.path_md5(tmp_path / "d") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary folder left behind


def test_rows_of_another_shape_or_dtype_are_refused(tmp_path: Path):
    x, labels, split = _data()
    with (
        pytest.raises(ValueError, match=r"expected float32"),
        shards.write_dataset(tmp_path / "d", "pixels", (4, 4, 3), np.float32, labels, split, ["a"]) as out,
    ):
        out.append(x.astype(np.float64))


def test_chunks_hold_whole_batches_and_about_a_shard():
    assert shards.prediction_batch((32, 32, 3)) == 256  # the default's pixels
    assert shards.prediction_batch((160, 160, 3)) == 13  # 4 MiB of input: MobileNetV2's activations stay small
    assert shards.prediction_batch((4000, 4000, 3)) == 1
    assert shards.chunk_rows((32, 32, 3), np.float32) % 256 == 0
    assert shards.chunk_rows((160, 160, 3), np.float32) % 13 == 0
    assert shards.rows_per_shard((8, 8, 64), np.float32) == shards.SHARD_BYTES // (8 * 8 * 64 * 4)


def test_opening_a_missing_dataset_names_the_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"nope: not a dataset folder"):
        shards.open_dataset(tmp_path / "nope")
