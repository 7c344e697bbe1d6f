"""The light stages (ingest, normalize) run as real processes, the way DVC runs them: their outputs, their clean
failure on bad config or data (exit status 2, one line, no output file), and that they never import TensorFlow,
Keras or MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from thaw.inputs import NO_INPUT

ROWS = 100


def env_for(project_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project_root), env.get("PYTHONPATH", "")) if p)
    return env


def write_params(project_root: Path, workdir: Path, **data: Any) -> Path:
    """The repository's params.yaml with data.rows shrunk (and any other data.* keys changed)."""
    params = yaml.safe_load((project_root / "params.yaml").read_text(encoding="utf-8"))
    params["data"].update({"rows": ROWS, "train_per_class": None, **data})
    params["inputs"] = {"data": params["data"]["path"]} if params["data"].get("path") else {}
    # The fingerprint the `input@data` stage would have left (ingest checks that it is of data.path).
    (workdir / "inputs").mkdir(parents=True, exist_ok=True)
    fingerprint = {"kind": "file", "path": params["data"]["path"]} if params["data"].get("path") else NO_INPUT
    (workdir / "inputs" / "data.json").write_text(json.dumps(fingerprint), encoding="utf-8")
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def run_stage(project_root: Path, workdir: Path, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=workdir,
        env=env_for(project_root),
        capture_output=True,
        text=True,
        timeout=120,
    )


def ingest(project_root: Path, workdir: Path, out: str = "data/raw/dataset.npz") -> subprocess.CompletedProcess[str]:
    return run_stage(
        project_root, workdir, "stages.ingest", "--input", "inputs/data.json", "--out", out,
        "--flow", "reports/flow/ingest.json",
    )  # fmt: skip


def normalize(project_root: Path, workdir: Path, raw: str = "data/raw/dataset.npz") -> subprocess.CompletedProcess[str]:
    return run_stage(
        project_root, workdir, "stages.normalize", "--raw", raw, "--out", "data/normalized/dataset.npz",
        "--flow", "reports/flow/normalize.json",
    )  # fmt: skip


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def workdir(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory where ingest then normalize ran on the digits with data.rows shrunk."""
    root = tmp_path_factory.mktemp("light")
    write_params(project_root, root)
    assert_ok(ingest(project_root, root))
    assert_ok(normalize(project_root, root))
    return root


# --- ingest -------------------------------------------------------------------------------------------------------


def test_ingest_output(workdir: Path) -> None:
    with np.load(workdir / "data/raw/dataset.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["class_names", "images", "labels", "split"]
        images, labels, split, names = npz["images"], npz["labels"], npz["split"], npz["class_names"]
    assert images.shape == (ROWS, 32, 32, 3)
    assert images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert names.tolist() == [str(i) for i in range(10)]
    assert np.bincount(labels, minlength=10).tolist() == [ROWS // 10] * 10
    assert np.bincount(split, minlength=3).tolist() == [60, 20, 20]
    for code in (0, 1, 2):
        assert set(labels[split == code].tolist()) == set(range(10))


def test_ingest_flow_record(workdir: Path) -> None:
    flow = json.loads((workdir / "reports/flow/ingest.json").read_text(encoding="utf-8"))
    assert flow["stage"] == "ingest"
    assert flow["input"] == flow["output"] == f"{ROWS} rows x 32 x 32 x 3"
    with np.load(workdir / "data/raw/dataset.npz") as npz:
        label = int(npz["labels"][0])
    assert flow["example"] == f"row 0: a 32x32 image with label '{label}'"


def test_ingest_is_reproducible(project_root: Path, workdir: Path) -> None:
    """Same params, same bytes: DVC sees an unchanged output and skips the downstream stages."""
    assert_ok(ingest(project_root, workdir, out="again/dataset.npz"))
    assert (workdir / "again/dataset.npz").read_bytes() == (workdir / "data/raw/dataset.npz").read_bytes()


# --- normalize ----------------------------------------------------------------------------------------------------


def test_normalize_output(workdir: Path) -> None:
    with np.load(workdir / "data/raw/dataset.npz") as raw, np.load(workdir / "data/normalized/dataset.npz") as norm:
        assert sorted(norm.files) == ["class_names", "labels", "pixels", "split"]
        images, pixels = raw["images"], norm["pixels"]
        assert pixels.dtype == np.float32
        assert pixels.shape == images.shape
        assert pixels.min() >= 0.0
        assert pixels.max() <= 1.0
        assert pixels.min() == 0.0
        assert pixels.max() == 1.0
        np.testing.assert_allclose(pixels, images / 255.0, rtol=0, atol=1e-7)
        for key in ("labels", "split", "class_names"):
            assert np.array_equal(norm[key], raw[key]), key
        assert 120 in images  # the seed's worked example appears in the digits
        assert np.all(np.round(pixels[images == 120], 2) == np.float32(0.47))


def test_normalize_worked_example(project_root: Path, tmp_path: Path) -> None:
    """The seed's example on a raw file written here: pixel 120 -> 0.47."""
    images = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    images[0, 1, 2] = 120
    images[1] = 255
    raw = tmp_path / "raw.npz"
    np.savez(raw, images=images, labels=np.array([0, 1]), split=np.array([0, 2], dtype=np.int8),
             class_names=np.array(["a", "b"]))  # fmt: skip
    assert_ok(normalize(project_root, tmp_path, raw=str(raw)))
    with np.load(tmp_path / "data/normalized/dataset.npz") as norm:
        pixels = norm["pixels"]
    assert pixels.dtype == np.float32
    assert round(float(pixels[0, 1, 2, 0]), 2) == 0.47
    assert pixels[0, 0, 0, 0] == 0.0
    assert np.all(pixels[1] == 1.0)
    flow = json.loads((tmp_path / "reports/flow/normalize.json").read_text(encoding="utf-8"))
    assert flow["example"] == "pixel value 120 becomes 0.47"
    assert flow["input"] == "2 rows x 4 x 4 x 3"


def test_normalize_missing_input_fails_cleanly(project_root: Path, tmp_path: Path) -> None:
    proc = normalize(project_root, tmp_path, raw="nowhere/raw.npz")
    assert proc.returncode == 2, proc.stderr
    assert "nowhere/raw.npz" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()


# --- clean failures -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"source": "nope"},
            "data.source = 'nope' is not allowed: expected one of ['digits', 'cifar10', 'folder', 'npz']",
        ),
        ({"bogus": 1}, "data.bogus: Key 'bogus' not in 'DataParams'"),
        ({"val_fraction": 1.5}, "data.val_fraction = 1.5 is not allowed"),
        ({"source": "npz", "path": None}, "data.path = None is not allowed"),
        ({"source": "npz", "path": "missing.npz"}, "missing.npz: .npz file not found (fix data.path)"),
        ({"source": "folder", "path": "no_such_dir"}, "no_such_dir: image folder not found (fix data.path)"),
    ],
)
def test_bad_config_exits_2_with_one_line_and_no_output(
    project_root: Path, tmp_path: Path, data: dict[str, Any], expected: str
) -> None:
    write_params(project_root, tmp_path, **data)
    proc = ingest(project_root, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert " ERROR " in lines[0]
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "reports").exists()


def test_too_few_rows_for_the_split_fails_cleanly(project_root: Path, tmp_path: Path) -> None:
    write_params(project_root, tmp_path, rows=20, val_fraction=0.1, test_fraction=0.1)
    proc = ingest(project_root, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "split has no samples of class(es)" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_missing_params_file_fails_cleanly(project_root: Path, tmp_path: Path) -> None:
    proc = ingest(project_root, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "params.yaml: params file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- no heavy imports ---------------------------------------------------------------------------------------------

NO_HEAVY_IMPORTS = textwrap.dedent(
    """
    import runpy
    import sys

    for argv in (
        ["ingest", "--input", "inputs/data.json", "--out", "raw.npz", "--flow", "flow/ingest.json"],
        ["normalize", "--raw", "raw.npz", "--out", "normalized.npz", "--flow", "flow/normalize.json"],
    ):
        sys.argv = argv
        runpy.run_module("stages." + argv[0], run_name="__main__", alter_sys=True)

    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"tensorflow", "keras", "mlflow", "tf_keras"})
    assert not heavy, f"the light stages imported {heavy[:10]}"
    print("light stages ran without tensorflow, keras or mlflow")
    """
)


def test_light_stages_do_not_import_tensorflow_keras_or_mlflow(project_root: Path, tmp_path: Path) -> None:
    write_params(project_root, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", NO_HEAVY_IMPORTS],
        cwd=tmp_path,
        env=env_for(project_root),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "light stages ran without tensorflow, keras or mlflow" in proc.stdout
    assert (tmp_path / "raw.npz").is_file()
    assert (tmp_path / "normalized.npz").is_file()


def test_ingest_keeps_train_per_class_labels_and_the_rest_unlabelled(project_root: Path, tmp_path: Path) -> None:
    write_params(project_root, tmp_path, train_per_class=3)
    assert_ok(ingest(project_root, tmp_path))
    with np.load(tmp_path / "data/raw/dataset.npz") as raw:
        split, labels = raw["split"], raw["labels"]
    assert len(split) == ROWS  # every image is kept: features are extracted for the unlabelled too
    assert np.bincount(split, minlength=4).tolist() == [30, 20, 20, 30]
    assert all(np.sum((labels == c) & (split == 0)) == 3 for c in range(10))
