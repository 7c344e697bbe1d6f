"""The TensorFlow stages on tiny data: pretrain-base (every kind), train-head, unfreeze, finetune, and the six
stage mains run in order in one process, the way dvc.yaml calls them."""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from thaw import artifacts, finetune, freezing, model, pretrain_base, train_head, unfreeze
from thaw.freezing import freeze, layer_table, thaw_saved_model, unfreeze_top_layers, weighted_layers
from thaw.inputs import NO_INPUT
from thaw.config import BaseParams, ConfigError, FinetuneParams, PretrainParams, TrainHeadParams

REPO = Path(__file__).resolve().parents[1]
IMAGE = 16
FILTERS = [4, 8, 8]
CLASSES = 3
HISTORY_COLUMNS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy"]


def _split(n: int) -> np.ndarray:
    """Train / val / test = 0 / 1 / 2, every class in every split."""
    return np.array([0, 0, 0, 1, 2] * (n // 5))


def _labels(n: int) -> np.ndarray:
    return np.arange(n) % CLASSES


def _classifier(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    base = model.build_conv_base(IMAGE, FILTERS)
    freeze(base)
    return model.assemble(base, model.build_head((4, 4, 8), CLASSES, 8, 0.0))


# pretrain-base -------------------------------------------------------------------------------------------------


def test_prepare_base_glyphs_pretrains_the_base():
    params = BaseParams(
        kind="glyphs", filters=FILTERS, pretrain=PretrainParams(classes=3, per_class=6, epochs=1, lr=0.01, batch_size=8)
    )
    base, history = pretrain_base.prepare_base(params, IMAGE, seed=4)
    assert base.name == model.BASE_NAME
    assert tuple(base.output_shape) == (None, 4, 4, 8)
    assert [(row["epoch"], row["phase"]) for row in history] == [(1, "pretrain")]
    assert all(np.isfinite(row[key]) for row in history for key in HISTORY_COLUMNS[2:])

    # The same seed without pretraining gives the initial weights: pretraining moved them.
    untrained, no_history = pretrain_base.prepare_base(BaseParams(kind="random", filters=FILTERS), IMAGE, seed=4)
    assert no_history == []
    kernel = base.get_layer("conv1").kernel.numpy()
    assert not np.array_equal(kernel, untrained.get_layer("conv1").kernel.numpy())
    # and the pretrained base is exactly the conv base: the throw-away letter classifier is not part of it.
    assert [layer.name for layer in weighted_layers(base)] == [layer.name for layer in weighted_layers(untrained)]


def test_prepare_base_random_is_reproducible_from_the_seed():
    params = BaseParams(kind="random", filters=FILTERS)
    a, history = pretrain_base.prepare_base(params, IMAGE, seed=9)
    b, _ = pretrain_base.prepare_base(params, IMAGE, seed=9)
    c, _ = pretrain_base.prepare_base(params, IMAGE, seed=10)
    assert history == []
    assert tuple(a.output_shape) == (None, 4, 4, 8)
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights(), strict=True))
    assert not np.array_equal(a.get_layer("conv1").kernel.numpy(), c.get_layer("conv1").kernel.numpy())


def test_prepare_base_file_loads_a_saved_base(tmp_path: Path):
    keras.utils.set_random_seed(1)
    saved = model.build_conv_base(IMAGE, [4, 8], pooled_blocks=1)
    saved.name = "someone_elses_base"
    path = tmp_path / "saved_base.keras"
    model.save_model(saved, path)

    base, history = pretrain_base.prepare_base(BaseParams(kind="file", path=str(path)), IMAGE, seed=0)
    assert history == []
    assert base.name == model.BASE_NAME  # renamed, so that assembly and unfreezing find it
    assert tuple(base.output_shape) == (None, 8, 8, 8)
    assert all(np.array_equal(x, y) for x, y in zip(saved.get_weights(), base.get_weights(), strict=True))


def test_prepare_base_file_rejects_a_mismatched_input_shape(tmp_path: Path):
    path = tmp_path / "base32.keras"
    model.save_model(model.build_conv_base(32, [4]), path)
    with pytest.raises(ConfigError, match=r"data\.image_size = 16") as info:
        pretrain_base.prepare_base(BaseParams(kind="file", path=str(path)), IMAGE, seed=0)
    assert "(32, 32, 3)" in str(info.value)
    assert "base32.keras" in str(info.value)


def test_prepare_base_file_missing(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"base\.path = .*nope\.keras"):
        pretrain_base.prepare_base(BaseParams(kind="file", path=str(tmp_path / "nope.keras")), IMAGE, seed=0)


def test_prepare_base_keras_app_and_unfreezing_inside_it(tmp_path: Path):
    network = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    weights = [w * np.float32(1.5) for w in network.get_weights()]
    network.set_weights(weights)
    path = tmp_path / "mnv3s.weights.h5"
    network.save_weights(path)

    params = BaseParams(kind="keras_app", application="MobileNetV3Small", path=str(path))
    base, history = pretrain_base.prepare_base(params, 32, seed=0)
    assert history == []
    assert base.name == model.BASE_NAME
    inner = next(layer for layer in base.layers if isinstance(layer, keras.Model))
    assert all(np.array_equal(x, y) for x, y in zip(weights, inner.get_weights(), strict=True))

    # The unfreeze stage walks into the nested application: its top two non-BatchNorm weighted layers thaw, in
    # the saved model exactly as on the live one.
    freeze(base)
    classifier = model.assemble(base, model.build_head(base.output_shape[1:], CLASSES, 8, 0.0))
    loaded, thawed, table = _thaw_saved(classifier, 2, tmp_path)
    weighted = weighted_layers(base)
    non_bn = [layer.name for layer in weighted if not isinstance(layer, keras.layers.BatchNormalization)]
    assert thawed == non_bn[-2:]
    assert [layer.name for layer in weighted_layers(loaded.get_layer(model.BASE_NAME)) if layer.trainable] == thawed
    assert layer_table(loaded) == table
    assert len(loaded.trainable_weights) > len(loaded.get_layer(model.HEAD_NAME).trainable_weights)
    unfreeze_top_layers(classifier, 2)
    assert layer_table(classifier) == table


# train-head ----------------------------------------------------------------------------------------------------


def test_train_head_fits_on_the_train_split_only():
    n = 30
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, 4, 4, 8)).astype(np.float32)
    split = _split(n)
    features[split == 2] = np.nan  # the test rows must not reach training or validation
    params = TrainHeadParams(units=8, dropout=0.1, epochs=2, lr=0.01, batch_size=8)

    head, history = train_head.train_head(features, _labels(n), split, CLASSES, params, seed=3)

    assert tuple(head.output_shape) == (None, CLASSES)
    assert [(row["epoch"], row["phase"]) for row in history] == [(1, "head"), (2, "head")]
    assert all(np.isfinite(row[key]) for row in history for key in HISTORY_COLUMNS[2:])
    assert np.all(np.isfinite(head.get_weights()[0]))
    _, again = train_head.train_head(features, _labels(n), split, CLASSES, params, seed=3)
    assert again == history


def test_format_probabilities_elides_the_middle():
    assert train_head.format_probabilities(np.array([0.1, 0.7, 0.2])) == "[0.10, 0.70, 0.20]"
    assert train_head.format_probabilities(np.full(10, 0.1)) == "[0.10, 0.10, 0.10, ..., 0.10]"


# unfreeze ------------------------------------------------------------------------------------------------------


def _thaw_saved(classifier: keras.Model, n: int, tmp_path: Path) -> tuple[keras.Model, list[str], list[dict]]:
    """Save `classifier` (base frozen) and thaw its top `n` base layers the way the unfreeze stage does."""
    model.save_model(classifier, tmp_path / "model.keras")
    frozen = layer_table(classifier)
    thawed, table = unfreeze.unfreeze(frozen, n)
    weighted = [row["layer"] for row in frozen if row["part"] == model.BASE_NAME]
    thaw_saved_model(tmp_path / "model.keras", tmp_path / "unfrozen.keras", weighted, thawed)
    return model.load_keras_model(tmp_path / "unfrozen.keras", compile=False), thawed, table


def test_unfreeze_thaws_the_saved_model_as_keras_would(tmp_path: Path):
    loaded, thawed, table = _thaw_saved(_classifier(), 2, tmp_path)
    assert thawed == ["conv2", "conv3"]
    assert layer_table(loaded) == table  # the table unfreeze writes is what Keras loads
    reference = _classifier()
    unfreeze_top_layers(reference, 2)
    assert layer_table(reference) == table  # and what thawing the live model gives
    assert [w.path for w in loaded.trainable_weights] == [w.path for w in reference.trainable_weights]
    for ours, theirs in zip(loaded.get_weights(), _classifier().get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)  # weights copied unchanged
    assert unfreeze.summary(table) == {
        "trainable_layers": 4,  # conv2, conv3, and the head's two dense layers
        "frozen_layers": 4,  # conv1 and the three BatchNorms
        "trainable_params": 3 * 3 * 4 * 8 + 3 * 3 * 8 * 8 + (2 * 2 * 8 * 8 + 8) + (8 * CLASSES + CLASSES),
        "total_params": loaded.count_params(),
    }
    row = unfreeze.flow_row((4, 4, 8), thawed, rows=30)
    assert row["stage"] == "unfreeze"
    assert row["input"] == row["output"] == "30 rows x 4 x 4 x 8"
    assert row["example"] == "layers now trainable: conv2, conv3"
    assert unfreeze.flow_row((4, 4, 8), [], rows=5)["example"] == "base stays frozen (head only)"


def test_unfreeze_zero_keeps_the_base_frozen_and_output_bytes_are_deterministic(tmp_path: Path):
    classifier = _classifier()
    loaded, thawed, _ = _thaw_saved(classifier, 0, tmp_path)
    assert thawed == []
    assert [w.path for w in loaded.trainable_weights] == [w.path for w in classifier.trainable_weights]
    first = (tmp_path / "unfrozen.keras").read_bytes()
    weighted = [row["layer"] for row in layer_table(classifier) if row["part"] == model.BASE_NAME]
    thaw_saved_model(tmp_path / "model.keras", tmp_path / "again.keras", weighted, thawed)
    assert (tmp_path / "again.keras").read_bytes() == first


UNFREEZE_WITHOUT_TENSORFLOW = """
import runpy, sys
sys.argv = ["unfreeze", "--model", "model.keras", "--frozen-layers", "frozen.csv", "--features", "features.npz",
            "--out", "unfrozen.keras", "--layers", "layers.csv", "--metrics", "unfreeze.json", "--flow", "flow.json"]
runpy.run_module("stages.unfreeze", run_name="__main__", alter_sys=True)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"tensorflow", "keras", "mlflow", "tf_keras"})
assert not heavy, f"unfreeze imported {heavy[:10]}"
"""


def test_the_unfreeze_stage_runs_without_tensorflow(tmp_path: Path):
    classifier = _classifier()
    model.save_model(classifier, tmp_path / "model.keras")
    artifacts.write_csv(tmp_path / "frozen.csv", layer_table(classifier))
    artifacts.write_npz(tmp_path / "features.npz", features=np.zeros((30, 4, 4, 8), np.float32))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["unfreeze"]["layers"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", UNFREEZE_WITHOUT_TENSORFLOW], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    loaded = model.load_keras_model(tmp_path / "unfrozen.keras")
    assert [layer.name for layer in weighted_layers(loaded.get_layer(model.BASE_NAME)) if layer.trainable] == [
        "conv2", "conv3"]  # fmt: skip
    assert layer_table(loaded) == freezing.parse_table(artifacts.read_csv(tmp_path / "layers.csv"))
    assert artifacts.read_json(tmp_path / "flow.json")["input"] == "30 rows x 4 x 4 x 8"


def test_unfreeze_too_many_layers_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unfreeze\.layers = 7.*conv1, conv2, conv3"):
        unfreeze.unfreeze(layer_table(_classifier()), 7)


def test_thaw_saved_model_rejects_a_file_without_a_base(tmp_path: Path):
    path = tmp_path / "head.keras"
    model.save_model(model.build_head((4, 4, 8), CLASSES, 8, 0.0), path)
    with pytest.raises(ValueError, match=r"head\.keras: expected one layer named 'base'"):
        thaw_saved_model(path, tmp_path / "out.keras", [], [])
    assert not (tmp_path / "out.keras").exists()


# finetune ------------------------------------------------------------------------------------------------------


def test_finetune_continues_the_epoch_numbers_and_moves_only_thawed_layers():
    n = 30
    rng = np.random.default_rng(2)
    pixels = rng.random((n, IMAGE, IMAGE, 3), dtype=np.float32)
    split = _split(n)
    classifier = _classifier()
    unfreeze_top_layers(classifier, 1)
    base = classifier.get_layer(model.BASE_NAME)
    before = {w.path: np.array(w.numpy()) for w in base.weights}

    params = FinetuneParams(epochs=2, lr=0.02, batch_size=8)
    history = finetune.finetune(classifier, pixels, _labels(n), split, params, first_epoch=4, seed=0)

    assert [(row["epoch"], row["phase"]) for row in history] == [(4, "finetune"), (5, "finetune")]
    assert float(classifier.optimizer.learning_rate) == pytest.approx(0.02)  # recompiled at finetune.lr
    changed = {w.path for w in base.weights if not np.array_equal(before[w.path], w.numpy())}
    assert changed == {"conv3/kernel"}


# all stage mains, in order, in one process ---------------------------------------------------------------------


def _tiny_params(path: Path) -> list[int]:
    """The repo's params.yaml made tiny; returns the base's filters (the repo's own)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["data"].update(source="digits", path=None, rows=60, image_size=32, train_per_class=4)
    params["base"].update(kind="glyphs", path=None, application=None)
    params["base"]["pretrain"].update(classes=4, per_class=6, epochs=1, batch_size=16)
    params["train_head"].update(epochs=1, batch_size=16)
    params["finetune"].update(epochs=1, batch_size=16)
    params["unfreeze"]["layers"] = 2
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return list(params["base"]["filters"])


def _dvc_commands() -> tuple[dict[str, str], dict[str, tuple[str, list[str]]]]:
    """dvc.yaml's vars (`paths.raw` -> path) and each stage's command as (module, argv), vars substituted."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    values: dict[str, str] = {}
    for entry in dvc.get("vars") or []:
        for group, mapping in entry.items():
            values.update({f"{group}.{key}": str(value) for key, value in mapping.items()})
    commands = {}
    for name, stage in dvc["stages"].items():
        if "foreach" in stage:  # the `input@<name>` stages: none in the default variant
            continue
        words = shlex.split(re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], stage["cmd"]))
        assert words[:2] == ["python", "-m"], stage["cmd"]
        commands[name] = (words[2], words[3:])
    return values, commands


@pytest.mark.slow
def test_stage_mains_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """ingest .. finetune, each stage's main called with the argv of its dvc.yaml command line."""
    monkeypatch.chdir(tmp_path)
    filters = _tiny_params(tmp_path / "params.yaml")
    blocks, channels = len(filters), filters[-1]
    assert blocks >= 2
    convs = [f"conv{i}" for i in range(1, blocks + 1)]
    paths, commands = _dvc_commands()
    for name in ("data", "base"):  # the committed fingerprints: this variant reads no external file
        artifacts.write_json(Path(paths["paths.inputs"]) / f"{name}.json", NO_INPUT)
    for stage in ("ingest", "normalize", "pretrain-base", "extract-frozen", "train-head", "unfreeze", "finetune"):
        module, argv = commands[stage]
        importlib.import_module(module).main(argv)
    p = {key.removeprefix("paths."): value for key, value in paths.items()}

    # Data: 60 digits, 32x32 pixels in [0, 1], features 8x8xC from the base (two pooled blocks).
    normalized = artifacts.read_npz(p["normalized"])
    assert normalized["pixels"].shape == (60, 32, 32, 3)
    features = artifacts.read_npz(p["features"])
    assert features["features"].shape == (60, 8, 8, channels)
    assert features["features"].dtype == np.float32
    assert np.array_equal(features["labels"], normalized["labels"])
    assert np.array_equal(features["split"], normalized["split"])
    assert set(np.unique(features["split"])) == {0, 1, 2}
    class_names = [str(c) for c in features["class_names"]]
    assert class_names == [str(d) for d in range(10)]

    # Models: all load in safe mode; the cached features are exactly what the saved base computes.
    base = model.load_keras_model(p["base"])
    assert tuple(base.output_shape) == (None, 8, 8, channels)
    np.testing.assert_allclose(
        model.extract_features(base, normalized["pixels"][:4]), features["features"][:4], rtol=1e-5, atol=1e-5
    )
    head = model.load_keras_model(p["head"])
    assert tuple(head.output_shape) == (None, 10)
    classifier = model.load_keras_model(p["model"], compile=False)
    assert classifier.get_layer(model.BASE_NAME).trainable_weights == []
    unfrozen = model.load_keras_model(p["unfrozen"], compile=False)
    thawed = [layer.name for layer in weighted_layers(unfrozen.get_layer(model.BASE_NAME)) if layer.trainable]
    assert thawed == convs[-2:]
    finetuned = model.load_keras_model(p["finetuned"], compile=False)
    probabilities = finetuned.predict(normalized["pixels"][:3], verbose=0)
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # Fine-tuning moved the top conv but neither conv1 nor the BatchNorm statistics of the trained-head model.
    for layer, var in (("conv1", "kernel"), ("bn1", "moving_mean"), (f"bn{blocks}", "moving_variance")):
        before = getattr(classifier.get_layer(model.BASE_NAME).get_layer(layer), var).numpy()
        after = getattr(finetuned.get_layer(model.BASE_NAME).get_layer(layer), var).numpy()
        assert np.array_equal(before, after), f"{layer}.{var} changed during fine-tuning"
    assert not np.array_equal(
        classifier.get_layer(model.BASE_NAME).get_layer(convs[-1]).kernel.numpy(),
        finetuned.get_layer(model.BASE_NAME).get_layer(convs[-1]).kernel.numpy(),
    )

    # Histories: one axis of epochs, head then finetune.
    head_history = artifacts.read_csv("plots/train_head.csv")
    finetune_history = artifacts.read_csv("plots/finetune.csv")
    assert list(head_history[0]) == HISTORY_COLUMNS
    assert list(finetune_history[0]) == HISTORY_COLUMNS
    assert [(r["epoch"], r["phase"]) for r in head_history] == [("1", "head")]
    assert [(r["epoch"], r["phase"]) for r in finetune_history] == [("2", "finetune")]
    assert all(np.isfinite(float(r[k])) for r in head_history + finetune_history for k in HISTORY_COLUMNS[2:])

    # Metrics.
    pretrain_metrics = artifacts.read_json("metrics/pretrain.json")
    assert pretrain_metrics["kind"] == "glyphs"
    assert pretrain_metrics["params"] == base.count_params()
    assert {"source_loss", "source_accuracy", "source_val_loss", "source_val_accuracy"} <= set(pretrain_metrics)
    head_metrics = artifacts.read_json("metrics/train_head.json")
    assert set(head_metrics) == {"test_loss", "test_accuracy", "loss", "accuracy", "val_loss", "val_accuracy"}
    assert head_metrics["val_accuracy"] == float(head_history[-1]["val_accuracy"])
    finetune_metrics = artifacts.read_json("metrics/finetune.json")
    assert set(finetune_metrics) == set(head_metrics) | {"val_rows", "test_rows"}  # for binomial intervals
    assert (finetune_metrics["val_rows"], finetune_metrics["test_rows"]) == (10, 10)
    assert all(0.0 <= finetune_metrics[k] <= 1.0 for k in ("accuracy", "val_accuracy", "test_accuracy"))
    unfreeze_metrics = artifacts.read_json("metrics/unfreeze.json")
    assert unfreeze_metrics["trainable_layers"] == 2 + 2  # two convs and the head's two dense layers
    assert unfreeze_metrics["frozen_layers"] == (blocks - 2) + blocks  # the other convs and every BatchNorm
    assert unfreeze_metrics["total_params"] == finetuned.count_params()

    # Layer table and confusion pairs.
    layers = artifacts.read_csv("reports/layers.csv")
    assert list(layers[0]) == ["part", "layer", "type", "trainable", "params", "trainable_params"]
    expected = []
    for i, conv in enumerate(convs, start=1):
        expected += [("base", conv, str(conv in convs[-2:])), ("base", f"bn{i}", "False")]
    expected += [("head", "dense", "True"), ("head", "probabilities", "True")]
    assert [(r["part"], r["layer"], r["trainable"]) for r in layers] == expected
    assert int(layers[2]["params"]) == 3 * 3 * filters[0] * filters[1]  # conv2, no bias
    assert int(layers[1]["trainable_params"]) == 0  # bn1
    confusion = artifacts.read_csv("plots/confusion.csv")
    test_labels = normalized["labels"][normalized["split"] == 2]
    assert [r["actual"] for r in confusion] == [class_names[i] for i in test_labels]
    assert all(r["predicted"] in class_names for r in confusion)

    # The data-flow trace: one row per stage.
    flow = Path(p["flow"])
    stages = ("ingest", "normalize", "extract-frozen", "train-head", "unfreeze", "finetune")
    for stage in stages:
        row = json.loads((flow / f"{stage}.json").read_text(encoding="utf-8"))
        assert row["stage"] == stage
        assert {"title", "input", "operation", "output", "example"} <= set(row)
    assert json.loads((flow / "extract-frozen.json").read_text())["output"] == f"60 rows x 8 x 8 x {channels}"
    # Nothing half-written left behind by the atomic writes.
    leftovers = [p for p in Path().rglob(".*.tmp*")]
    assert leftovers == []
    shutil.rmtree(tmp_path / "data")  # the largest files; pytest keeps the last few tmp_paths
