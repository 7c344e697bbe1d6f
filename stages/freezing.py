"""Freezing and thawing: which layers of the base train, and a table that shows it."""

from __future__ import annotations

from typing import Any

import keras

from stages.model import BASE_NAME


def weighted_layers(base: keras.Model) -> list[keras.Layer]:
    """The base's layers that hold weights, bottom to top (nested models are walked into)."""
    found: list[keras.Layer] = []
    for layer in base.layers:
        if isinstance(layer, keras.Model):
            found.extend(weighted_layers(layer))
        elif layer.weights:
            found.append(layer)
    return found


def thawable_layers(base: keras.Model) -> list[keras.Layer]:
    """The weighted layers that unfreezing may make trainable: all but BatchNormalization.

    BatchNorm stays frozen because in Keras 3 a frozen BatchNorm is what runs in inference mode: the
    `training=False` of `base(inputs, training=False)` is overridden by fit's training=True
    (keras-team/keras#20285), so unfreezing it would let fine-tuning batches rewrite its statistics.
    """
    return [layer for layer in weighted_layers(base) if not isinstance(layer, keras.layers.BatchNormalization)]


def freeze(model: keras.Model) -> None:
    """Make every layer of `model` non-trainable."""
    model.trainable = False


def top_thawable_layers(base: keras.Model, n: int) -> list[keras.Layer]:
    """The top `n` thawable layers of `base`; ValueError, listing them, when `n` is out of range."""
    candidates = thawable_layers(base)
    if not 0 <= n <= len(candidates):
        names = ", ".join(layer.name for layer in candidates)
        raise ValueError(
            f"unfreeze.layers = {n} but the base has {len(candidates)} layers with weights that can be "
            f"unfrozen (bottom to top: {names}; BatchNorm stays frozen); choose 0..{len(candidates)}"
        )
    return candidates[len(candidates) - n :] if n else []


def unfreeze_top_layers(model: keras.Model, n: int) -> list[str]:
    """Make the top `n` thawable layers of the base trainable (the rest stay frozen); return their names.

    `n = 0` leaves the base frozen: only the head trains. BatchNorm layers always stay frozen.
    """
    base = model.get_layer(BASE_NAME)
    thawed = top_thawable_layers(base, n)
    # Trainable containers (the base and any nested model) are needed for an inner layer to train.
    base.trainable = True
    for layer in weighted_layers(base):
        layer.trainable = any(layer is t for t in thawed)
    return [layer.name for layer in thawed]


def layer_table(model: keras.Model) -> list[dict[str, Any]]:
    """One row per layer with weights (base, then head): its part, name, type, trainable, parameter count."""
    rows = []
    for part in (BASE_NAME, "head"):
        sub = model.get_layer(part)
        for layer in weighted_layers(sub):
            rows.append(
                {
                    "part": part,
                    "layer": layer.name,
                    "type": type(layer).__name__,
                    "trainable": bool(layer.trainable),
                    "params": int(sum(int(w.numpy().size) for w in layer.weights)),
                    "trainable_params": int(sum(int(w.numpy().size) for w in layer.trainable_weights)),
                }
            )
    return rows
