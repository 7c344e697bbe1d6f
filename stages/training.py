"""Training runs: determinism, tf.data input pipelines, and the per-epoch history every stage records."""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and turn on op determinism: same params + seed, same numbers."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """A batched, prefetched tf.data pipeline; shuffled (reproducibly) when a seed is given."""
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def fit(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    epochs: int,
    batch_size: int,
    seed: int,
    phase: str,
    first_epoch: int = 1,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> list[dict[str, Any]]:
    """Train a compiled model; return one row per epoch numbered from `first_epoch`, tagged with `phase`."""
    history = model.fit(
        dataset(*train, batch_size, shuffle_seed=seed),
        validation_data=dataset(*val, batch_size),
        epochs=epochs,
        shuffle=False,  # the tf.data pipeline shuffles, reproducibly
        verbose=2,
        callbacks=callbacks or [],
    )
    rows = []
    for i in range(len(history.history["loss"])):
        row: dict[str, Any] = {"epoch": first_epoch + i, "phase": phase}
        row.update({key: round(float(history.history[key][i]), 6) for key in HISTORY_KEYS})
        rows.append(row)
    return rows


def evaluate(
    model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 256
) -> tuple[dict[str, float], np.ndarray]:
    """Loss and accuracy on (x, y), and the predicted class of every row (one pass over the data)."""
    probabilities = model.predict(x, batch_size=batch_size, verbose=0)
    loss = keras.losses.sparse_categorical_crossentropy(y, probabilities)
    predicted = probabilities.argmax(axis=1)
    metrics = {
        "loss": float(np.mean(keras.ops.convert_to_numpy(loss))),
        "accuracy": float(np.mean(predicted == y)),
    }
    return metrics, predicted
