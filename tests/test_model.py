"""The networks: conv base, head, base + head, atomic save, safe loading, and Keras Applications bases."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from thaw import model


def _images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def test_build_conv_base_maps_32x32x3_to_8x8x64():
    base = model.build_conv_base(32, [32, 64, 64])
    assert base.name == model.BASE_NAME
    assert tuple(base.input_shape) == (None, 32, 32, 3)
    assert tuple(base.output_shape) == (None, 8, 8, 64)
    assert model.extract_features(base, _images(3)).shape == (3, 8, 8, 64)
    names = [layer.name for layer in base.layers]
    assert [n for n in names if n.startswith("conv")] == ["conv1", "conv2", "conv3"]
    assert [n for n in names if n.startswith("bn")] == ["bn1", "bn2", "bn3"]
    # Pooling after every block but the last: two halvings, 32 -> 8.
    assert [n for n in names if n.startswith("pool")] == ["pool1", "pool2"]
    assert [base.get_layer(f"conv{i}").filters for i in (1, 2, 3)] == [32, 64, 64]


def test_build_conv_base_with_the_default_four_blocks_also_gives_8x8x64():
    base = model.build_conv_base(32, [32, 64, 64, 64])
    assert tuple(base.output_shape) == (None, 8, 8, 64)
    assert [layer.name for layer in base.layers if layer.name.startswith("pool")] == ["pool1", "pool2"]


def test_build_conv_base_pooled_blocks():
    assert tuple(model.build_conv_base(16, [4, 8], pooled_blocks=0).output_shape) == (None, 16, 16, 8)
    assert tuple(model.build_conv_base(16, [4, 8], pooled_blocks=1).output_shape) == (None, 8, 8, 8)
    assert tuple(model.build_conv_base(16, [4, 8, 8], pooled_blocks=3).output_shape) == (None, 2, 2, 8)


def test_extract_features_is_float32_and_deterministic():
    base = model.build_conv_base(16, [4, 8, 8])
    images = _images(5, 16)
    first = model.extract_features(base, images, batch_size=2)
    assert first.dtype == np.float32
    assert first.shape == (5, 4, 4, 8)
    np.testing.assert_array_equal(first, model.extract_features(base, images, batch_size=2))
    # Another batch size may take another kernel path: equal up to float rounding, not bit for bit.
    np.testing.assert_allclose(first, model.extract_features(base, images, batch_size=4), rtol=1e-5, atol=1e-6)


def test_build_head_outputs_a_softmax_over_the_classes():
    head = model.build_head((8, 8, 64), num_classes=5, units=16, dropout=0.3)
    assert head.name == model.HEAD_NAME
    assert tuple(head.output_shape) == (None, 5)
    assert head.get_layer("probabilities").activation is keras.activations.softmax
    features = np.random.default_rng(1).normal(size=(4, 8, 8, 64)).astype(np.float32)
    probabilities = head.predict(features, verbose=0)
    assert probabilities.shape == (4, 5)
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_assemble_chains_base_and_head():
    base = model.build_conv_base(16, [4, 8, 8])
    head = model.build_head((4, 4, 8), num_classes=3, units=8, dropout=0.0)
    classifier = model.assemble(base, head)
    assert tuple(classifier.input_shape) == (None, 16, 16, 3)
    assert tuple(classifier.output_shape) == (None, 3)
    assert classifier.get_layer(model.BASE_NAME) is base
    assert classifier.get_layer(model.HEAD_NAME) is head
    images = _images(4, 16)
    expected = head.predict(base.predict(images, verbose=0), verbose=0)
    np.testing.assert_allclose(classifier.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_compile_classifier_uses_adam_at_the_given_rate():
    base = model.build_conv_base(16, [4])
    classifier = model.assemble(base, model.build_head(base.output_shape[1:], 3, 4, 0.0))
    model.compile_classifier(classifier, 0.0123)
    assert isinstance(classifier.optimizer, keras.optimizers.Adam)
    assert float(classifier.optimizer.learning_rate) == pytest.approx(0.0123)


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")  # compiled, never trained
def test_save_model_round_trips_through_load_keras_model(tmp_path: Path):
    base = model.build_conv_base(16, [4, 8, 8])
    classifier = model.assemble(base, model.build_head((4, 4, 8), 3, 8, 0.0))
    model.compile_classifier(classifier, 0.01)
    target = tmp_path / "nested" / "dir" / "classifier.keras"  # parent folders are created
    model.save_model(classifier, target)
    assert target.is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == ["classifier.keras"]  # no temporary left behind

    loaded = model.load_keras_model(target)
    assert loaded.name == "classifier"
    assert [w.shape for w in loaded.weights] == [w.shape for w in classifier.weights]
    for saved, restored in zip(classifier.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, restored)
    images = _images(3, 16)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), classifier.predict(images, verbose=0), rtol=1e-6)
    assert loaded.compiled
    assert not model.load_keras_model(target, compile=False).compiled


class _FailingSave:
    """A model whose save writes part of a file, then fails (a crash mid-write)."""

    def save(self, path: Path) -> None:
        Path(path).write_bytes(b"PK\x03\x04 truncated")
        raise OSError("disk full")


def test_save_model_is_atomic_when_the_write_fails(tmp_path: Path):
    target = tmp_path / "model.keras"
    good = model.build_conv_base(16, [4])
    model.save_model(good, target)
    before = target.read_bytes()

    with pytest.raises(OSError, match="disk full"):
        model.save_model(_FailingSave(), target)  # type: ignore[arg-type]
    assert target.read_bytes() == before  # the old, complete file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]  # and the partial temporary is gone
    model.load_keras_model(target)

    fresh = tmp_path / "never.keras"
    with pytest.raises(OSError):
        model.save_model(_FailingSave(), fresh)  # type: ignore[arg-type]
    assert not fresh.exists()


def test_load_keras_model_refuses_a_python_lambda(tmp_path: Path):
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2.0, name="doubler")(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    # The file itself is fine: Keras loads it when safe mode is off ...
    unsafe = keras.saving.load_model(path, safe_mode=False)
    np.testing.assert_allclose(unsafe.predict(np.ones((1, 4), np.float32), verbose=0), 2.0)
    # ... but our loader keeps safe mode on, so the lambda's code is never deserialized.
    with pytest.raises(ValueError, match="lambda"):
        model.load_keras_model(path)
    with pytest.raises(ValueError, match="lambda"):
        model.load_keras_model(path, compile=False)


def test_load_keras_model_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"missing\.keras"):
        model.load_keras_model(tmp_path / "missing.keras")
    with pytest.raises(FileNotFoundError):
        model.load_keras_model(tmp_path)  # a folder is not a model file


@pytest.fixture(scope="module")
def mobilenet_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """A MobileNetV3Small weights file made here (weights=None: nothing is downloaded), marked so that
    a fresh random initialisation cannot match it by accident."""
    network = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    weights = [w + np.float32(0.5) if i % 7 == 0 else w for i, w in enumerate(network.get_weights())]
    network.set_weights(weights)
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v3_small.weights.h5"
    network.save_weights(path)
    return path, weights


def test_build_application_base_loads_the_weights_file(mobilenet_weights):
    path, saved = mobilenet_weights
    base = model.build_application_base("MobileNetV3Small", str(path), 32)
    assert base.name == model.BASE_NAME
    assert tuple(base.input_shape) == (None, 32, 32, 3)
    assert tuple(base.output_shape) == (None, 1, 1, 576)
    rescaling = base.get_layer("to_application_range")
    assert (rescaling.scale, rescaling.offset) == model.APPLICATIONS["MobileNetV3Small"]
    networks = [layer for layer in base.layers if isinstance(layer, keras.Model)]
    assert len(networks) == 1
    loaded = networks[0].get_weights()
    assert len(loaded) == len(saved)
    for expected, actual in zip(saved, loaded, strict=True):
        assert np.array_equal(expected, actual)
    assert model.extract_features(base, _images(2)).shape == (2, 1, 1, 576)


def test_build_application_base_unknown_application(tmp_path: Path):
    with pytest.raises(ValueError, match=r"base\.application = 'ResNet9000'") as info:
        model.build_application_base("ResNet9000", str(tmp_path / "w.weights.h5"), 32)
    for name in model.APPLICATIONS:
        assert name in str(info.value)


def test_build_application_base_missing_weights_file(tmp_path: Path):
    missing = tmp_path / "absent.weights.h5"
    with pytest.raises(FileNotFoundError, match=r"absent\.weights\.h5.*not found"):
        model.build_application_base("MobileNetV3Small", str(missing), 32)


def test_head_pools_a_small_window_and_a_smaller_map_whole():
    head = model.build_head((8, 8, 64), num_classes=10, units=16, dropout=0.0, pool=2)
    assert tuple(head.get_layer("flatten").output.shape) == (None, 4 * 4 * 64)  # where features fired is kept
    whole = model.build_head((1, 1, 32), num_classes=10, units=16, dropout=0.0, pool=2)  # e.g. MobileNet at 32x32
    assert tuple(whole.get_layer("flatten").output.shape) == (None, 32)


def test_recalibrated_batchnorm_normalizes_its_inputs():
    keras.utils.set_random_seed(0)
    base = model.build_conv_base(16, [4, 8])
    images = np.random.default_rng(0).random((64, 16, 16, 3)).astype(np.float32)
    model.recalibrate_batchnorm(base, images)
    for i in (1, 2):
        probe = keras.Model(base.inputs, base.get_layer(f"bn{i}").output)
        out = probe.predict(images, verbose=0)
        gamma_beta_free = out.reshape(-1, out.shape[-1])
        np.testing.assert_allclose(gamma_beta_free.mean(axis=0), 0.0, atol=1e-2)  # gamma 1, beta 0 at init
        np.testing.assert_allclose(gamma_beta_free.std(axis=0), 1.0, atol=2e-2)
