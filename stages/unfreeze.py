"""unfreeze: make the top `unfreeze.layers` weighted layers of the base trainable and recompile.

Writes the unfrozen model and the layer table (part, layer, type, trainable, parameter counts).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import keras

from stages import artifacts, cli, model
from stages.freezing import layer_table, unfreeze_top_layers
from stages.params import ConfigError, load_section

log = logging.getLogger(__name__)


def unfreeze(classifier: keras.Model, layers: int, lr: float) -> list[str]:
    """Thaw the top `layers` of the base and recompile at `lr` (the head's rate, the model's current one).

    Keras only applies a change of `trainable` at compile time, so the saved model is recompiled here;
    `finetune` compiles again with its own, lower rate.
    """
    try:
        thawed = unfreeze_top_layers(classifier, layers)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    model.compile_classifier(classifier, lr)
    return thawed


def flow_row(classifier: keras.Model, thawed: list[str], rows: int) -> dict[str, object]:
    shape = " x ".join(map(str, classifier.get_layer(model.BASE_NAME).output_shape[1:]))
    return {
        "stage": "unfreeze",
        "title": "Unfreeze layers",
        "input": f"{rows} rows x {shape}",
        "operation": f"Unfreeze the top {len(thawed)} convolutional layers for fine-tuning",
        "output": f"{rows} rows x {shape}",
        "example": ("layers now trainable: " + ", ".join(thawed)) if thawed else "base stays frozen (head only)",
    }


def summary(table: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "trainable_layers": sum(row["trainable"] for row in table),
        "frozen_layers": sum(not row["trainable"] for row in table),
        "trainable_params": sum(row["trainable_params"] for row in table),
        "total_params": sum(row["params"] for row in table),
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = cli.parse(argv, __doc__, "model", "features", "out", "layers", "metrics", "flow")
    layers = load_section(args.params, "unfreeze").layers
    head_lr = load_section(args.params, "train_head").lr
    classifier = model.load_keras_model(args.model, compile=False)
    thawed = unfreeze(classifier, layers, head_lr)
    table = layer_table(classifier)
    log.info("unfroze %d base layers: %s", len(thawed), ", ".join(thawed) or "(none)")
    rows = len(artifacts.read_npz(args.features)["labels"])
    model.save_model(classifier, args.out)
    artifacts.write_csv(args.layers, table)
    artifacts.write_json(args.metrics, summary(table))
    artifacts.write_json(args.flow, flow_row(classifier, thawed, rows))


if __name__ == "__main__":
    cli.run(main)
