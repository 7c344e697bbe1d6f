"""unfreeze: make the top `unfreeze.layers` weighted layers of the base trainable.

Reads the classifier that train-head saved and its layer table (base frozen); writes the unfrozen model and
the layer table after thawing (part, layer, type, trainable, parameter counts). This stage trains nothing,
so it does not import TensorFlow: it edits the saved model's trainable flags (see `stages.freezing`).
`finetune` compiles the model with its own, lower learning rate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from stages import artifacts, cli
from stages.freezing import BASE_NAME, parse_table, table_with_flags, thaw_saved_model, thaw_table
from stages.params import ConfigError, load_section

log = logging.getLogger(__name__)


def unfreeze(frozen_table: list[dict[str, Any]], layers: int) -> tuple[list[str], list[dict[str, Any]]]:
    """The names of the base layers to thaw and the layer table after thawing them."""
    try:
        return thaw_table(frozen_table, layers)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def flow_row(feature_shape: Sequence[int], thawed: list[str], rows: int) -> dict[str, object]:
    shape = " x ".join(map(str, feature_shape))
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
    args = cli.parse(argv, __doc__, "model", "frozen_layers", "features", "out", "layers", "metrics", "flow")
    layers = load_section(args.params, "unfreeze").layers
    frozen = parse_table(artifacts.read_csv(args.frozen_layers))
    intended, _ = unfreeze(frozen, layers)
    weighted = [row["layer"] for row in frozen if row["part"] == BASE_NAME]
    # What is reported comes from the model as written (read back and checked), not from the intent.
    flags = thaw_saved_model(args.model, args.out, weighted, intended)
    table = table_with_flags(frozen, flags)
    thawed = [name for name in weighted if flags[name]]
    log.info("unfroze %d base layers: %s", len(thawed), ", ".join(thawed) or "(none)")
    features = artifacts.read_npz(args.features)["features"]
    artifacts.write_csv(args.layers, table)
    artifacts.write_json(args.metrics, summary(table))
    artifacts.write_json(args.flow, flow_row(features.shape[1:], thawed, len(features)))


if __name__ == "__main__":
    cli.run(main)
