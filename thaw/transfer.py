"""The three trainings of transfer learning, as plain functions of arrays, models and one params section:
the base (built, loaded, or pretrained on the source task), the head on the frozen base's cached features,
and fine-tuning of the thawed model on the images. Stages and benchmarks call these; they read no files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from thaw import model, shards, training
from thaw.config import BaseParams, FinetuneParams, PretrainParams, TrainHeadParams
from thaw.datasources import TRAIN, VAL
from thaw.errors import ConfigError
from thaw.freezing import top_thawable_layers
from thaw.glyphs import render_glyphs


def pretrain_on_glyphs(
    base: keras.Model,
    pretrain: PretrainParams,
    image_size: int,
    seed: int,
    checkpoint: training.Checkpoint | None = None,
    steps_per_execution: int = 1,
    shuffled_labels: bool = False,
) -> list[dict[str, Any]]:
    """Train `base` (plus a throw-away softmax over the letters) on rendered letters; return the history.

    `shuffled_labels` trains on the same images with their labels permuted: the ablation's control for
    whether the source task matters, or only the training.
    """
    glyphs = render_glyphs(pretrain.classes, pretrain.per_class, image_size, seed)
    pixels = glyphs.images.astype(np.float32) / np.float32(255.0)
    labels = np.random.default_rng(seed).permutation(glyphs.labels) if shuffled_labels else glyphs.labels
    n_val = max(pretrain.classes, len(pixels) // 10)
    source_model = keras.Sequential(
        [
            base,
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(pretrain.classes, activation="softmax", name="letters"),
        ],
        name="pretraining",
    )
    model.compile_classifier(source_model, pretrain.lr, steps_per_execution)
    return training.fit(
        source_model,
        (pixels[n_val:], labels[n_val:]),
        (pixels[:n_val], labels[:n_val]),
        pretrain.epochs,
        pretrain.batch_size,
        seed,
        phase="pretrain",
        checkpoint=checkpoint,
    )


def prepare_base(
    params: BaseParams,
    image_size: int,
    seed: int,
    checkpoint: training.Checkpoint | None = None,
    unfreeze_layers: int | None = None,
    steps_per_execution: int = 1,
) -> tuple[keras.Model, list[dict[str, Any]]]:
    """Build, load or pretrain the base as `params.kind` says; return it with its pretraining history.

    With `unfreeze_layers`, a depth this base cannot unfreeze is rejected before any pretraining.
    """
    training.make_deterministic(seed)
    if params.kind == "file":
        if not Path(str(params.path)).is_file():
            raise ConfigError(f"base.path = {params.path!r}: no such model file (base=file needs a saved .keras model)")
        loaded = model.load_keras_model(str(params.path))
        if tuple(loaded.input_shape[1:]) != (image_size, image_size, 3):
            raise ConfigError(
                f"base.path = {params.path!r}: the model takes inputs of shape {loaded.input_shape[1:]}, "
                f"but data.image_size = {image_size} gives ({image_size}, {image_size}, 3)"
            )
        base = keras.Model(loaded.inputs, loaded.outputs, name=model.BASE_NAME)
    elif params.kind == "keras_app":
        base = model.build_application_base(str(params.application), str(params.path), image_size)
    else:
        base = model.build_conv_base(image_size, params.filters)
    if unfreeze_layers is not None:
        check_unfreeze_depth(base, unfreeze_layers)
    if params.kind != "glyphs":
        return base, []
    return base, pretrain_on_glyphs(base, params.pretrain, image_size, seed, checkpoint, steps_per_execution)


def check_unfreeze_depth(base: keras.Model, layers: int) -> None:
    """Reject an `unfreeze.layers` deeper than this base now, not after the head has trained.

    Not a DVC param of this stage (it does not change the base): the check only fails early.
    """
    try:
        top_thawable_layers(base, layers)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def train_head(
    features: Any,
    labels: np.ndarray,
    split: np.ndarray,
    num_classes: int,
    params: TrainHeadParams,
    seed: int,
    checkpoint: training.Checkpoint | None = None,
    steps_per_execution: int = 1,
) -> tuple[keras.Model, list[dict[str, Any]]]:
    """Fit a fresh head on the train split of the features, validating on the val split."""
    training.make_deterministic(seed)
    head = model.build_head(features.shape[1:], num_classes, params.units, params.dropout, params.pool)
    model.compile_classifier(head, params.lr, steps_per_execution)
    history = training.fit(
        head,
        (shards.rows(features, split == TRAIN), labels[split == TRAIN]),
        (shards.rows(features, split == VAL), labels[split == VAL]),
        params.epochs,
        params.batch_size,
        seed,
        phase="head",
        checkpoint=checkpoint,
    )
    return head, history


def finetune(
    classifier: keras.Model,
    pixels: Any,
    labels: np.ndarray,
    split: np.ndarray,
    params: FinetuneParams,
    first_epoch: int,
    seed: int,
    checkpoint: training.Checkpoint | None = None,
    steps_per_execution: int = 1,
) -> list[dict[str, Any]]:
    """Recompile at `params.lr` and train on the train split, validating on the val split."""
    training.make_deterministic(seed)
    model.compile_classifier(classifier, params.lr, steps_per_execution)
    return training.fit(
        classifier,
        (shards.rows(pixels, split == TRAIN), labels[split == TRAIN]),
        (shards.rows(pixels, split == VAL), labels[split == VAL]),
        params.epochs,
        params.batch_size,
        seed,
        phase="finetune",
        first_epoch=first_epoch,
        checkpoint=checkpoint,
    )
