"""pretrain-base: produce the convolutional base that `extract-frozen` freezes.

`base=glyphs` (default) pretrains it here on a different task, rendered letters (no download);
`base=random` keeps it randomly initialised (the ablation's control); `base=file` loads a saved `.keras`
model; `base=keras_app` builds a Keras Applications network from a weights file already on disk.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from stages import artifacts, cli, model, tracking, training
from stages.glyphs import render_glyphs
from stages.input import check_fingerprint
from stages.params import BaseParams, ConfigError, PretrainParams, load_section, load_seed

log = logging.getLogger(__name__)


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
    from stages.freezing import top_thawable_layers

    try:
        top_thawable_layers(base, layers)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> None:
    args = cli.parse(argv, __doc__, "input", "out", "metrics")
    params = load_section(args.params, "base")
    check_fingerprint(artifacts.read_json(args.input), params.path, args.input)
    image_size = load_section(args.params, "data").image_size
    seed = load_seed(args.params)
    tracking.check_store(tracking.tracking_uri(tracking.project_root()))
    runtime = load_section(args.params, "runtime")
    strategy, steps = training.prepare_runtime(runtime)
    settings = {"base": dataclasses.asdict(params), "runtime": dataclasses.asdict(runtime), "image_size": image_size,
                "seed": seed}  # fmt: skip
    checkpoint = training.checkpoint_for("pretrain-base", settings, [], Path.cwd())
    layers = load_section(args.params, "unfreeze").layers
    with strategy.scope():
        base, history = prepare_base(params, image_size, seed, checkpoint, unfreeze_layers=layers,
                                     steps_per_execution=steps)  # fmt: skip
    metrics: dict[str, Any] = {"kind": params.kind, "params": int(base.count_params())}
    if history:
        metrics.update({f"source_{k}": v for k, v in history[-1].items() if k not in ("epoch", "phase")})
    log.info("base %s: output %s, %d parameters", params.kind, base.output_shape, base.count_params())
    model.save_model(base, args.out)
    artifacts.write_json(args.metrics, metrics)
    checkpoint.clear()


if __name__ == "__main__":
    cli.run(main)
