"""thaw.serving: the fine-tuned model as an MLflow pyfunc model (signature, input example, the pipeline's
normalization), logged to a run as a LoggedModel, and registered with an alias; and `thaw predict`."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from thaw import model, serving, tracking

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "owl"]


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    base = model.build_conv_base(16, [4, 8])
    classifier = model.assemble(base, model.build_head((4, 4, 8), len(CLASSES), 8, 0.0))
    path = tmp_path_factory.mktemp("model") / "finetuned.keras"
    model.save_model(classifier, path)
    return path


@pytest.fixture(scope="module")
def saved(keras_file: Path) -> Path:
    return serving.save(keras_file, CLASSES, [16, 16, 3], keras_file.parent / "mlflow-model")


def images(n: int = 5) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def test_the_pyfunc_predicts_what_the_keras_file_does_on_normalized_pixels(keras_file: Path, saved: Path):
    import mlflow.pyfunc

    loaded = mlflow.pyfunc.load_model(str(saved))
    out = loaded.predict(images())
    assert list(out.columns) == CLASSES
    direct = model.load_keras_model(keras_file, compile=False).predict(images() / np.float32(255), verbose=0)
    np.testing.assert_allclose(out.to_numpy(), direct, rtol=1e-5, atol=1e-6)
    signature = loaded.metadata.signature
    assert signature.inputs.inputs[0].shape == (-1, 16, 16, 3)
    assert signature.outputs.input_names() == CLASSES
    assert (saved / "input_example.json").is_file() or any(saved.glob("input_example*"))


def test_a_logged_model_is_loadable_by_uri_and_registered_under_an_alias(saved: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = tracking.ensure_experiment(client, "thaw", tmp_path / "mlartifacts")
    run_id = client.create_run(experiment_id).info.run_id
    model_uri = serving.log(client, run_id, experiment_id, saved, {"git.commit": "abc"})
    assert model_uri.startswith("models:/")
    assert [o.model_id for o in client.get_run(run_id).outputs.model_outputs] == [model_uri.removeprefix("models:/")]
    first = serving.register(client, "thaw", model_uri, run_id, "champion", {"thaw.sweep": "s1"})
    second = serving.register(client, "thaw", model_uri, run_id, None, {})
    assert (first, second) == ("1", "2")
    champion = client.get_model_version_by_alias("thaw", "champion")
    assert (str(champion.version), champion.run_id, champion.tags["thaw.sweep"]) == ("1", run_id, "s1")
    by_alias = mlflow.pyfunc.load_model("models:/thaw@champion").predict(images(2))
    assert by_alias.shape == (2, len(CLASSES))


def thaw_predict(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "thaw", "predict", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)  # fmt: skip


def test_predict_writes_a_row_per_image_and_refuses_a_corrupt_one(saved: Path, tmp_path: Path):
    from PIL import Image

    folder = tmp_path / "photos"
    for i, array in enumerate(images(3)):
        (folder / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(folder / f"class{i % 2}" / f"{i}.png")
    proc = thaw_predict("--model", str(saved), "--input", str(folder), "--out", "out.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "out.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows] == ["class0/0.png", "class0/2.png", "class1/1.png"]
    assert list(rows[0]) == ["image", "label", "probability", *(f"p_{c}" for c in CLASSES)]
    assert all(r["label"] in CLASSES for r in rows)
    assert all(abs(sum(float(r[f"p_{c}"]) for c in CLASSES) - 1) < 1e-4 for r in rows)

    (folder / "class1" / "broken.png").write_bytes(b"not a png")
    proc = thaw_predict("--model", str(saved), "--input", str(folder), "--out", "bad.csv", cwd=tmp_path)
    assert proc.returncode == 2
    assert "broken.png: unreadable or corrupt image" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad.csv").exists()


def test_predict_takes_a_keras_file_and_an_npz_and_names_a_wrong_size(keras_file: Path, tmp_path: Path):
    np.savez(tmp_path / "x.npz", x=images(4), y=np.zeros(4, np.int64))
    proc = thaw_predict("--model", str(keras_file), "--input", "x.npz", "--out", "out.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "out.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows] == ["0", "1", "2", "3"] and rows[0]["label"] in {"0", "1", "2"}
    np.savez(tmp_path / "big.npz", x=np.zeros((2, 32, 32, 3), np.uint8), y=np.zeros(2, np.int64))
    proc = thaw_predict("--model", str(keras_file), "--input", "big.npz", "--out", "big.csv", cwd=tmp_path)
    assert proc.returncode == 2 and "images are 32x32x3, expected 16x16x3" in proc.stderr


def test_requirements_pin_the_distribution_that_installed_each_import(monkeypatch: pytest.MonkeyPatch):
    """A GPU machine has `tensorflow`, this one `tensorflow-cpu`: the model's pins name whichever is installed."""
    import importlib.metadata

    from packaging.utils import canonicalize_name

    installed = serving.requirements()
    assert len(installed) >= len(serving.SERVING_IMPORTS) and all("==" in pin for pin in installed)
    tensorflow = importlib.metadata.packages_distributions()["tensorflow"][0]
    assert f"{canonicalize_name(tensorflow)}=={importlib.metadata.version(tensorflow)}" in installed

    gpu = {module: [module] for module in serving.SERVING_IMPORTS} | {"PIL": ["Pillow"]}
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: gpu)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: {"tensorflow": "2.21.0"}.get(name, "1.0"))
    assert serving.requirements()[:2] == ["tensorflow==2.21.0", "keras==1.0"]
    assert "pillow==1.0" in serving.requirements()
    del gpu["pandas"]
    with pytest.raises(RuntimeError, match="no installed distribution provides `pandas`"):
        serving.requirements()


def test_defining_the_pyfunc_prints_no_advice_and_leaves_its_input_unchecked_by_mlflow():
    """MLflow advises type hints on `predict` when the class is defined, in every `track` and every process that
    loads the model; the hint given is one MLflow takes without building a schema or a validating wrapper."""
    code = "import warnings; warnings.simplefilter('always'); import thaw.serving"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "type hint" not in proc.stderr.lower(), proc.stderr
    from mlflow.pyfunc.utils.data_validation import _get_func_info_if_type_hint_supported

    assert _get_func_info_if_type_hint_supported(serving.KerasImageClassifier.predict) is None
