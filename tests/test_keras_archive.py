"""thaw.keras_archive and the checked thaw: `.keras` files written byte-reproducibly, their Keras version
checked, and unfreeze's output read back and compared with what it meant to write."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from thaw import keras_archive, model
from thaw.freezing import BASE_NAME, freeze, layer_table, read_thawed, thaw_saved_model
from thaw.keras_archive import ArchiveError

SAVE = """
import sys
import keras
from thaw import model
keras.utils.set_random_seed(3)
base = model.build_conv_base(16, [4, 8])
model.save_model(model.assemble(base, model.build_head((4, 4, 8), 3, 4, 0.1)), sys.argv[1])
"""


def classifier() -> keras.Model:
    keras.utils.set_random_seed(0)
    base = model.build_conv_base(16, [4, 8])
    freeze(base)
    return model.assemble(base, model.build_head((4, 4, 8), 3, 4, 0.0))


def test_two_processes_save_the_same_model_to_the_same_bytes(tmp_path: Path) -> None:
    """Keras stamps the save date, file times and Python object ids; save_model pins all three."""
    for name in ("a.keras", "b.keras"):
        proc = subprocess.run([sys.executable, "-c", SAVE, str(tmp_path / name)], capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.keras") as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        metadata = json.loads(archive.read("metadata.json"))
        assert metadata["date_saved"] == keras_archive.PINNED_DATE
        ids = [m for m in archive.read("config.json").decode().split('"shared_object_id": ')[1:]]
        assert ids and all(int(m.split("}")[0].split(",")[0]) < 100 for m in ids)
    loaded = model.load_keras_model(tmp_path / "a.keras")
    assert loaded.count_params() > 0


def test_renumbering_keeps_shared_objects_shared() -> None:
    config = {
        "a": {"shared_object_id": 140230953756304},
        "b": [{"shared_object_id": 99}, {"shared_object_id": 140230953756304}],
    }
    assert keras_archive.renumber_shared_objects(config) == {
        "a": {"shared_object_id": 1}, "b": [{"shared_object_id": 2}, {"shared_object_id": 1}]}  # fmt: skip


def test_an_archive_of_another_keras_major_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.keras"
    model.save_model(classifier(), path)
    members = keras_archive.read_members(path)
    members = [(n, json.dumps({"keras_version": "2.15.0"}).encode() if n == "metadata.json" else d, c)
               for n, d, c in members]  # fmt: skip
    keras_archive.write_zip(path, members)
    with pytest.raises(ArchiveError, match=r"old\.keras: saved by Keras 2\.15\.0; .* Keras 3\.x only"):
        thaw_saved_model(path, tmp_path / "out.keras", [], [])
    assert not (tmp_path / "out.keras").exists()


def test_not_a_zip_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.keras"
    path.write_text("not a zip")
    with pytest.raises(ArchiveError, match=r"junk\.keras: not a readable \.keras file"):
        keras_archive.read_members(path)


def test_thaw_reads_back_the_flags_it_wrote(tmp_path: Path) -> None:
    net = classifier()
    model.save_model(net, tmp_path / "model.keras")
    weighted = [row["layer"] for row in layer_table(net) if row["part"] == BASE_NAME]
    flags = thaw_saved_model(tmp_path / "model.keras", tmp_path / "unfrozen.keras", weighted, ["conv2"])
    assert flags == {"conv1": False, "bn1": False, "conv2": True, "bn2": False}
    loaded = model.load_keras_model(tmp_path / "unfrozen.keras", compile=False)
    assert [w.path for w in loaded.trainable_weights][:1] == ["conv2/kernel"]
    for ours, theirs in zip(loaded.get_weights(), net.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_a_written_model_that_differs_from_the_intent_is_an_error(tmp_path: Path) -> None:
    net = classifier()
    model.save_model(net, tmp_path / "model.keras")
    weighted = [row["layer"] for row in layer_table(net) if row["part"] == BASE_NAME]
    with pytest.raises(ArchiveError, match=r"trainable base layers \[\], not the intended \['conv2'\]"):
        read_thawed(tmp_path / "model.keras", weighted, {"conv2"})  # a frozen file checked against a thaw
    with pytest.raises(ArchiveError, match=r"base layer\(s\) \['conv9'\] have no trainable flag"):
        thaw_saved_model(tmp_path / "model.keras", tmp_path / "unfrozen.keras", [*weighted, "conv9"], [])
    assert not (tmp_path / "unfrozen.keras").exists()  # nothing half-checked is left under the real name
