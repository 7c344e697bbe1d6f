"""thaw.transfer: the three trainings on tiny data: the base (glyphs-pretrained, random, from a file, a Keras
application), the head on cached features (train split only), and fine-tuning (only the thawed layers move)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from thaw import model, transfer
from thaw.config import BaseParams, Params
from thaw.datasources import TEST, TRAIN, VAL
from thaw.errors import ConfigError
from thaw.freezing import freeze, layer_table, unfreeze_top_layers, weighted_layers

IMAGE = 16
FILTERS = [4, 8, 8]
CLASSES = 3
HISTORY = ("loss", "accuracy", "val_loss", "val_accuracy")


def _split(n: int) -> np.ndarray:
    """Train / val / test, every class in every split."""
    return np.array([TRAIN, TRAIN, TRAIN, VAL, TEST] * (n // 5))


def _labels(n: int) -> np.ndarray:
    return np.arange(n) % CLASSES


def _base(params: Params, **changes: object) -> BaseParams:
    return replace(params.base, **{"filters": FILTERS, **changes})


def _classifier(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    base = model.build_conv_base(IMAGE, FILTERS)
    freeze(base)
    return model.assemble(base, model.build_head((4, 4, 8), CLASSES, 8, 0.0))


# the base --------------------------------------------------------------------------------------------------------


def test_prepare_base_glyphs_pretrains_the_base(committed_params: Params):
    pretrain = replace(committed_params.base.pretrain, classes=3, per_class=6, epochs=1, lr=0.01, batch_size=8)
    base, history = transfer.prepare_base(_base(committed_params, kind="glyphs", pretrain=pretrain), IMAGE, seed=4)
    assert base.name == model.BASE_NAME
    assert tuple(base.output_shape) == (None, 4, 4, 8)
    assert [(row["epoch"], row["phase"]) for row in history] == [(1, "pretrain")]
    assert all(np.isfinite(row[key]) for row in history for key in HISTORY)

    # The same seed without pretraining gives the initial weights: pretraining moved them.
    untrained, no_history = transfer.prepare_base(_base(committed_params, kind="random"), IMAGE, seed=4)
    assert no_history == []
    kernel = base.get_layer("conv1").kernel.numpy()
    assert not np.array_equal(kernel, untrained.get_layer("conv1").kernel.numpy())
    # and the pretrained base is exactly the conv base: the throw-away letter classifier is not part of it.
    assert [layer.name for layer in weighted_layers(base)] == [layer.name for layer in weighted_layers(untrained)]


def test_prepare_base_random_is_reproducible_from_the_seed(committed_params: Params):
    params = _base(committed_params, kind="random")
    a, history = transfer.prepare_base(params, IMAGE, seed=9)
    b, _ = transfer.prepare_base(params, IMAGE, seed=9)
    c, _ = transfer.prepare_base(params, IMAGE, seed=10)
    assert history == []
    assert tuple(a.output_shape) == (None, 4, 4, 8)
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights(), strict=True))
    assert not np.array_equal(a.get_layer("conv1").kernel.numpy(), c.get_layer("conv1").kernel.numpy())


def test_prepare_base_file_loads_a_saved_base(committed_params: Params, tmp_path: Path):
    keras.utils.set_random_seed(1)
    saved = model.build_conv_base(IMAGE, [4, 8], pooled_blocks=1)
    saved.name = "someone_elses_base"
    path = tmp_path / "saved_base.keras"
    model.save_model(saved, path)

    base, history = transfer.prepare_base(_base(committed_params, kind="file", path=str(path)), IMAGE, seed=0)
    assert history == []
    assert base.name == model.BASE_NAME  # renamed, so that assembly and unfreezing find it
    assert tuple(base.output_shape) == (None, 8, 8, 8)
    assert all(np.array_equal(x, y) for x, y in zip(saved.get_weights(), base.get_weights(), strict=True))


def test_prepare_base_file_rejects_a_mismatched_input_shape(committed_params: Params, tmp_path: Path):
    path = tmp_path / "base32.keras"
    model.save_model(model.build_conv_base(32, [4]), path)
    with pytest.raises(ConfigError, match=r"data\.image_size = 16") as info:
        transfer.prepare_base(_base(committed_params, kind="file", path=str(path)), IMAGE, seed=0)
    assert "(32, 32, 3)" in str(info.value)
    assert "base32.keras" in str(info.value)


def test_prepare_base_file_missing_names_the_key(committed_params: Params, tmp_path: Path):
    params = _base(committed_params, kind="file", path=str(tmp_path / "nope.keras"))
    with pytest.raises(ConfigError, match=r"base\.path = .*nope\.keras.*no such model file"):
        transfer.prepare_base(params, IMAGE, seed=0)


def test_prepare_base_rejects_an_unfreeze_depth_beyond_the_base_before_pretraining(committed_params: Params):
    # One pretraining epoch on the full letters would take seconds: the depth is refused before it starts.
    params = _base(committed_params, kind="glyphs")
    with pytest.raises(ConfigError, match=r"unfreeze\.layers = 9 .* conv1, conv2, conv3; .*choose 0\.\.3"):
        transfer.prepare_base(params, IMAGE, seed=0, unfreeze_layers=9)


def test_prepare_base_keras_app_and_unfreezing_inside_it(committed_params: Params, tmp_path: Path):
    network = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    weights = [w * np.float32(1.5) for w in network.get_weights()]
    network.set_weights(weights)
    path = tmp_path / "mnv3s.weights.h5"
    network.save_weights(path)

    params = replace(committed_params.base, kind="keras_app", application="MobileNetV3Small", path=str(path))
    base, history = transfer.prepare_base(params, 32, seed=0)
    assert history == []
    assert base.name == model.BASE_NAME
    inner = next(layer for layer in base.layers if isinstance(layer, keras.Model))
    assert all(np.array_equal(x, y) for x, y in zip(weights, inner.get_weights(), strict=True))
    # Unfreezing walks into the nested application: its top two non-BatchNorm weighted layers thaw.
    freeze(base)
    classifier = model.assemble(base, model.build_head(base.output_shape[1:], CLASSES, 8, 0.0))
    thawed = unfreeze_top_layers(classifier, 2)
    weighted = weighted_layers(base)
    non_bn = [layer.name for layer in weighted if not isinstance(layer, keras.layers.BatchNormalization)]
    assert thawed == non_bn[-2:]
    assert sum(row["trainable"] for row in layer_table(classifier) if row["part"] == model.BASE_NAME) == 2


# the head --------------------------------------------------------------------------------------------------------


def test_train_head_fits_on_the_train_split_only(committed_params: Params):
    n = 30
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, 4, 4, 8)).astype(np.float32)
    split = _split(n)
    features[split == TEST] = np.nan  # the test rows must not reach training or validation
    params = replace(committed_params.train_head, units=8, dropout=0.1, epochs=2, lr=0.01, batch_size=8)

    head, history = transfer.train_head(features, _labels(n), split, CLASSES, params, seed=3)

    assert tuple(head.output_shape) == (None, CLASSES)
    assert [(row["epoch"], row["phase"]) for row in history] == [(1, "head"), (2, "head")]
    assert all(np.isfinite(row[key]) for row in history for key in HISTORY)
    assert np.all(np.isfinite(head.get_weights()[0]))
    _, again = transfer.train_head(features, _labels(n), split, CLASSES, params, seed=3)
    assert again == history


# fine-tuning -----------------------------------------------------------------------------------------------------


def test_finetune_continues_the_epoch_numbers_and_moves_only_thawed_layers(committed_params: Params):
    n = 30
    rng = np.random.default_rng(2)
    pixels = rng.random((n, IMAGE, IMAGE, 3), dtype=np.float32)
    classifier = _classifier()
    unfreeze_top_layers(classifier, 1)
    base = classifier.get_layer(model.BASE_NAME)
    before = {w.path: np.array(w.numpy()) for w in base.weights}

    params = replace(committed_params.finetune, epochs=2, lr=0.02, batch_size=8)
    history = transfer.finetune(classifier, pixels, _labels(n), _split(n), params, first_epoch=4, seed=0)

    assert [(row["epoch"], row["phase"]) for row in history] == [(4, "finetune"), (5, "finetune")]
    assert float(classifier.optimizer.learning_rate) == pytest.approx(0.02)  # recompiled at finetune.lr
    changed = {w.path for w in base.weights if not np.array_equal(before[w.path], w.numpy())}
    assert changed == {"conv3/kernel"}
