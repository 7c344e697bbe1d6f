"""The networks: the convolutional base, the dense head, and the base + head model (Keras functional API).

Imported only by stages that train; it imports TensorFlow/Keras at module level for that reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np

from thaw import keras_archive
from thaw.artifacts import atomic_path
from thaw.freezing import BASE_NAME  # the base's layer name; defined in freezing, which runs without Keras
from thaw.shards import prediction_batch

log = logging.getLogger(__name__)

HEAD_NAME = "head"

# Keras Applications usable as a base, with the affine map from our [0, 1] pixels to the range each expects.
APPLICATIONS: dict[str, tuple[float, float]] = {
    "MobileNetV2": (2.0, -1.0),  # [-1, 1]
    "MobileNetV3Small": (255.0, 0.0),  # [0, 255]; the model rescales internally
    "MobileNetV3Large": (255.0, 0.0),
    "EfficientNetB0": (255.0, 0.0),
}


def build_conv_base(image_size: int, filters: list[int], pooled_blocks: int = 2) -> keras.Model:
    """Conv-BN-ReLU blocks, the first `pooled_blocks` followed by 2x2 max-pooling:
    32x32x3 -> 8x8x64 with the default [32, 64, 64, 64]."""
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = inputs
    for i, n in enumerate(filters, start=1):
        x = keras.layers.Conv2D(n, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if i <= pooled_blocks:
            x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    return keras.Model(inputs, x, name=BASE_NAME)


def build_application_base(application: str, weights_path: str, image_size: int) -> keras.Model:
    """A Keras Applications network without its top, weights read from a file already on disk."""
    if application not in APPLICATIONS:
        raise ValueError(f"base.application = {application!r}: expected one of {sorted(APPLICATIONS)}")
    if not Path(weights_path).is_file():
        raise FileNotFoundError(f"base.path = {weights_path!r}: weights file not found")
    scale, offset = APPLICATIONS[application]
    network = getattr(keras.applications, application)(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3)
    )
    network.load_weights(weights_path)
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = keras.layers.Rescaling(scale, offset, name="to_application_range")(inputs)
    outputs = network(x, training=False)
    return keras.Model(inputs, outputs, name=BASE_NAME)


def load_keras_model(path: str | Path, compile: bool = True) -> keras.Model:
    """Load a `.keras` file with safe mode on: no arbitrary code (lambdas) from a model file.

    Stages that recompile anyway load with compile=False, which also skips stale optimizer state.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    return keras.saving.load_model(path, compile=compile, safe_mode=True)


def save_model(model: keras.Model, path: str | Path) -> None:
    """Save atomically and byte-reproducibly: Keras writes a temporary `.keras` beside the target, whose
    save date and file times are then pinned (`keras_archive.pin`) into the final file."""
    with atomic_path(path) as tmp:
        model.save(tmp)
        keras_archive.pin(tmp, tmp)  # in place, before the rename publishes it


def build_head(
    feature_shape: tuple[int, ...], num_classes: int, units: int, dropout: float, pool: int = 2
) -> keras.Model:
    """`pool` x `pool` average pooling over the feature map (a smaller map is pooled whole), flattened, one
    hidden dense layer, dropout, softmax over the classes. Pooling over the whole map (global average pooling)
    would discard where a feature fired, much of what tells one digit's strokes from another's."""
    inputs = keras.Input(feature_shape, name="features")
    x = keras.layers.AveragePooling2D(min(pool, *feature_shape[:2]), name="pool")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(units, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(dropout, seed=0, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=HEAD_NAME)


def assemble(base: keras.Model, head: keras.Model) -> keras.Model:
    """Base + head, the base called with training=False as in the Keras transfer-learning guide.

    Keras 3 lets fit's training=True override that flag, so `freezing` also keeps BatchNorm frozen.
    """
    inputs = keras.Input(base.input_shape[1:], name="pixels")
    features = base(inputs, training=False)
    return keras.Model(inputs, head(features), name="classifier")


def compile_classifier(model: keras.Model, lr: float, steps_per_execution: int = 1) -> None:
    """Adam at `lr`, cross-entropy over integer labels. `steps_per_execution` runs that many training steps
    per call into the compiled graph: the same updates (tests/test_training.py checks the history), with
    Keras' per-step Python overhead paid once per call, which is most of an epoch on cached features."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )


def recalibrate_batchnorm(base: keras.Model, images: np.ndarray, batch_size: int = 256) -> None:
    """Set each BatchNorm's moving mean and variance to the statistics of its inputs over `images`, bottom
    to top (each layer sees the layers below it already recalibrated).

    A randomly initialised base keeps BatchNorm's initial statistics (mean 0, variance 1), which scale its
    features far from what its layers produce; a fair random-base control recalibrates them on the
    target's training images first (no labels used).
    """
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            probe = keras.Model(base.inputs, layer.input)
            x = np.asarray(probe.predict(images, batch_size=batch_size, verbose=0), dtype=np.float64)
            axes = tuple(range(x.ndim - 1))
            layer.moving_mean.assign(x.mean(axis=axes).astype(np.float32))
            layer.moving_variance.assign(x.var(axis=axes).astype(np.float32))


def extract_features(base: keras.Model, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Run the frozen base in inference mode over all images (batches bounded in bytes: `prediction_batch`)."""
    batch_size = batch_size or prediction_batch(images.shape[1:], np.float32)
    return np.asarray(base.predict(images, batch_size=batch_size, verbose=0), dtype=np.float32)
