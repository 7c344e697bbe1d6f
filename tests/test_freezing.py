"""Freezing and thawing the base: which layers train, the layer table, and what one epoch of fit really changes."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from thaw import model
from thaw.freezing import (
    freeze,
    is_thawable,
    layer_table,
    table_summary,
    thaw_saved_model,
    thaw_table,
    unfreeze_top_layers,
    weighted_layers,
)


def thawable_layers(base: keras.Model) -> list[keras.Layer]:
    """The weighted layers that unfreezing may make trainable, in order (what top_thawable_layers counts)."""
    return [layer for layer in weighted_layers(base) if is_thawable(type(layer).__name__)]


IMAGE = 16
FILTERS = [4, 8, 8]
CLASSES = 3


def _classifier() -> keras.Model:
    """The pipeline's shape in miniature: a frozen conv base (16x16x3 -> 4x4x8) joined to a trained head."""
    keras.utils.set_random_seed(3)
    base = model.build_conv_base(IMAGE, FILTERS)
    freeze(base)
    head = model.build_head((4, 4, 8), CLASSES, units=8, dropout=0.0)
    return model.assemble(base, head)


def _trainable_weighted(classifier: keras.Model) -> list[str]:
    return [layer.name for layer in weighted_layers(classifier.get_layer(model.BASE_NAME)) if layer.trainable]


def _batchnorms(classifier: keras.Model) -> list[keras.layers.BatchNormalization]:
    base = classifier.get_layer(model.BASE_NAME)
    return [layer for layer in weighted_layers(base) if isinstance(layer, keras.layers.BatchNormalization)]


def _data(n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Far from the BatchNorm initial statistics (mean 0, variance 1), so updating them would show.
    x = (rng.random((n, IMAGE, IMAGE, 3)) * 4.0 + 2.0).astype(np.float32)
    return x, rng.integers(0, CLASSES, n)


def _snapshot(classifier: keras.Model) -> dict[str, np.ndarray]:
    base = classifier.get_layer(model.BASE_NAME)
    return {w.path: np.array(w.numpy()) for w in base.weights}


def test_weighted_and_thawable_layers_bottom_to_top():
    base = _classifier().get_layer(model.BASE_NAME)
    assert [layer.name for layer in weighted_layers(base)] == ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3"]
    assert [layer.name for layer in thawable_layers(base)] == ["conv1", "conv2", "conv3"]


def test_unfreeze_zero_leaves_the_base_frozen():
    classifier = _classifier()
    assert unfreeze_top_layers(classifier, 0) == []
    assert _trainable_weighted(classifier) == []
    assert classifier.get_layer(model.BASE_NAME).trainable_weights == []
    head = classifier.get_layer(model.HEAD_NAME)
    assert len(classifier.trainable_weights) == len(head.trainable_weights) == 4  # two dense kernels + biases


def test_unfreeze_two_thaws_conv2_and_conv3_only():
    classifier = _classifier()
    assert unfreeze_top_layers(classifier, 2) == ["conv2", "conv3"]
    assert _trainable_weighted(classifier) == ["conv2", "conv3"]
    assert all(not bn.trainable for bn in _batchnorms(classifier))
    base_trainable = {w.path.split("/")[-2] for w in classifier.get_layer(model.BASE_NAME).trainable_weights}
    assert base_trainable == {"conv2", "conv3"}


def test_unfreeze_is_not_cumulative():
    classifier = _classifier()
    unfreeze_top_layers(classifier, 3)
    assert unfreeze_top_layers(classifier, 1) == ["conv3"]
    assert _trainable_weighted(classifier) == ["conv3"]


def test_unfreeze_all_thawable_layers_keeps_batchnorm_frozen():
    classifier = _classifier()
    assert unfreeze_top_layers(classifier, 3) == ["conv1", "conv2", "conv3"]
    assert _trainable_weighted(classifier) == ["conv1", "conv2", "conv3"]
    assert all(not bn.trainable for bn in _batchnorms(classifier))


def test_unfreeze_more_layers_than_thawable_raises_with_the_names():
    classifier = _classifier()
    with pytest.raises(ValueError, match=r"unfreeze\.layers = 4") as info:
        unfreeze_top_layers(classifier, 4)
    message = str(info.value)
    assert "conv1, conv2, conv3" in message
    assert "0..3" in message
    assert "bn1" not in message
    assert _trainable_weighted(classifier) == []  # nothing changed


def test_unfreeze_negative_raises():
    with pytest.raises(ValueError, match=r"unfreeze\.layers = -1"):
        unfreeze_top_layers(_classifier(), -1)


def test_layer_table_rows_and_parameter_counts():
    classifier = _classifier()
    unfreeze_top_layers(classifier, 2)
    rows = layer_table(classifier)
    assert [(r["part"], r["layer"], r["type"], r["trainable"]) for r in rows] == [
        ("base", "conv1", "Conv2D", False),
        ("base", "bn1", "BatchNormalization", False),
        ("base", "conv2", "Conv2D", True),
        ("base", "bn2", "BatchNormalization", False),
        ("base", "conv3", "Conv2D", True),
        ("base", "bn3", "BatchNormalization", False),
        ("head", "dense", "Dense", True),
        ("head", "probabilities", "Dense", True),
    ]
    params = {r["layer"]: (r["params"], r["trainable_params"]) for r in rows}
    assert params == {
        "conv1": (3 * 3 * 3 * 4, 0),  # no bias
        "bn1": (4 * 4, 0),  # gamma, beta, moving mean, moving variance
        "conv2": (3 * 3 * 4 * 8, 3 * 3 * 4 * 8),
        "bn2": (4 * 8, 0),
        "conv3": (3 * 3 * 8 * 8, 3 * 3 * 8 * 8),
        "bn3": (4 * 8, 0),
        "dense": (2 * 2 * 8 * 8 + 8, 2 * 2 * 8 * 8 + 8),  # the 4x4x8 map pooled 2x2, flattened: 32 inputs
        "probabilities": (8 * CLASSES + CLASSES, 8 * CLASSES + CLASSES),
    }
    assert sum(r["params"] for r in rows) == classifier.count_params()
    assert sum(r["trainable_params"] for r in rows) == sum(int(np.prod(w.shape)) for w in classifier.trainable_weights)


def test_one_epoch_of_fit_changes_only_the_thawed_convolutions():
    """The key behaviour: fine-tuning moves conv2/conv3 but neither conv1 nor any BatchNorm statistic."""
    classifier = _classifier()
    unfreeze_top_layers(classifier, 2)
    model.compile_classifier(classifier, 0.05)
    before = _snapshot(classifier)
    x, y = _data()
    classifier.fit(x, y, batch_size=8, epochs=1, verbose=0)
    after = _snapshot(classifier)

    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    assert changed == {"conv2/kernel", "conv3/kernel"}, changed
    for bn in _batchnorms(classifier):
        np.testing.assert_array_equal(before[bn.moving_mean.path], bn.moving_mean.numpy())
        np.testing.assert_array_equal(before[bn.moving_variance.path], bn.moving_variance.numpy())


def test_a_trainable_batchnorm_would_rewrite_its_statistics():
    """The control for the test above: in Keras 3, fit's training=True overrides the base's training=False, so
    a BatchNorm left trainable updates its moving statistics. This is why unfreezing keeps BatchNorm frozen."""
    classifier = _classifier()
    unfreeze_top_layers(classifier, 2)
    bn1 = classifier.get_layer(model.BASE_NAME).get_layer("bn1")
    bn1.trainable = True
    model.compile_classifier(classifier, 0.05)
    mean_before = np.array(bn1.moving_mean.numpy())
    x, y = _data()
    classifier.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.array_equal(mean_before, bn1.moving_mean.numpy())


def test_trainable_flags_survive_save_and_load(tmp_path: Path):
    classifier = _classifier()
    unfreeze_top_layers(classifier, 2)
    model.save_model(classifier, tmp_path / "unfrozen.keras")
    loaded = model.load_keras_model(tmp_path / "unfrozen.keras", compile=False)
    assert _trainable_weighted(loaded) == ["conv2", "conv3"]
    assert [r["trainable"] for r in layer_table(loaded)] == [r["trainable"] for r in layer_table(classifier)]


def test_nested_base_is_walked_into_and_trains():
    """A base that wraps a network (as a Keras Applications base does): the inner layers are found and thawed."""
    keras.utils.set_random_seed(5)
    inner = model.build_conv_base(IMAGE, FILTERS)
    inner.name = "network"
    inputs = keras.Input((IMAGE, IMAGE, 3), name="pixels")
    x = keras.layers.Rescaling(2.0, -1.0, name="to_application_range")(inputs)
    base = keras.Model(inputs, inner(x, training=False), name=model.BASE_NAME)
    freeze(base)
    classifier = model.assemble(base, model.build_head((4, 4, 8), CLASSES, 8, 0.0))

    assert [layer.name for layer in thawable_layers(base)] == ["conv1", "conv2", "conv3"]
    assert unfreeze_top_layers(classifier, 1) == ["conv3"]
    assert inner.trainable
    model.compile_classifier(classifier, 0.05)
    kernels = {i: np.array(inner.get_layer(f"conv{i}").kernel.numpy()) for i in (1, 2, 3)}
    mean = np.array(inner.get_layer("bn3").moving_mean.numpy())
    classifier.fit(*_data(), batch_size=8, epochs=1, verbose=0)
    assert np.array_equal(kernels[1], inner.get_layer("conv1").kernel.numpy())
    assert np.array_equal(kernels[2], inner.get_layer("conv2").kernel.numpy())
    assert not np.array_equal(kernels[3], inner.get_layer("conv3").kernel.numpy())
    assert np.array_equal(mean, inner.get_layer("bn3").moving_mean.numpy())


# thawing a saved model, as the unfreeze stage does (no TensorFlow needed) ----------------------------------------


def _thaw_saved(classifier: keras.Model, n: int, tmp_path: Path) -> tuple[keras.Model, list[str], list[dict]]:
    """Save `classifier` (base frozen) and thaw its top `n` base layers the way the unfreeze stage does."""
    model.save_model(classifier, tmp_path / "model.keras")
    frozen = layer_table(classifier)
    thawed, table = thaw_table(frozen, n)
    weighted = [row["layer"] for row in frozen if row["part"] == model.BASE_NAME]
    thaw_saved_model(tmp_path / "model.keras", tmp_path / "unfrozen.keras", weighted, thawed)
    return model.load_keras_model(tmp_path / "unfrozen.keras", compile=False), thawed, table


def test_thawing_the_saved_model_matches_thawing_the_live_one(tmp_path: Path):
    loaded, thawed, table = _thaw_saved(_classifier(), 2, tmp_path)
    assert thawed == ["conv2", "conv3"]
    assert layer_table(loaded) == table  # the table unfreeze writes is what Keras loads
    reference = _classifier()
    unfreeze_top_layers(reference, 2)
    assert layer_table(reference) == table  # and what thawing the live model gives
    assert [w.path for w in loaded.trainable_weights] == [w.path for w in reference.trainable_weights]
    for ours, theirs in zip(loaded.get_weights(), _classifier().get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)  # weights copied unchanged
    assert table_summary(table) == {
        "trainable_layers": 4,  # conv2, conv3, and the head's two dense layers
        "frozen_layers": 4,  # conv1 and the three BatchNorms
        "trainable_params": 3 * 3 * 4 * 8 + 3 * 3 * 8 * 8 + (2 * 2 * 8 * 8 + 8) + (8 * CLASSES + CLASSES),
        "total_params": loaded.count_params(),
    }


def test_thawing_zero_keeps_the_base_frozen_and_the_bytes_are_deterministic(tmp_path: Path):
    classifier = _classifier()
    loaded, thawed, _ = _thaw_saved(classifier, 0, tmp_path)
    assert thawed == []
    assert [w.path for w in loaded.trainable_weights] == [w.path for w in classifier.trainable_weights]
    first = (tmp_path / "unfrozen.keras").read_bytes()
    weighted = [row["layer"] for row in layer_table(classifier) if row["part"] == model.BASE_NAME]
    thaw_saved_model(tmp_path / "model.keras", tmp_path / "again.keras", weighted, thawed)
    assert (tmp_path / "again.keras").read_bytes() == first


def test_thaw_table_refuses_a_depth_beyond_the_base_with_the_names():
    with pytest.raises(ValueError, match=r"unfreeze\.layers = 7.*conv1, conv2, conv3"):
        thaw_table(layer_table(_classifier()), 7)


def test_thaw_saved_model_rejects_a_file_without_a_base(tmp_path: Path):
    path = tmp_path / "head.keras"
    model.save_model(model.build_head((4, 4, 8), CLASSES, 8, 0.0), path)
    with pytest.raises(ValueError, match=r"head\.keras: expected one layer named 'base'"):
        thaw_saved_model(path, tmp_path / "out.keras", [], [])
    assert not (tmp_path / "out.keras").exists()
