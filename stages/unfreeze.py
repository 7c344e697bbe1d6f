"""unfreeze: make the top `unfreeze.layers` weighted layers of the base trainable.

Reads the classifier that train-head saved and its layer table (base frozen); writes the unfrozen model and
the layer table after thawing (part, layer, type, trainable, parameter counts). This stage trains nothing,
so it does not import TensorFlow: it edits the saved model's trainable flags (see `thaw.freezing`).
`finetune` compiles the model with its own, lower learning rate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from thaw import artifacts, dataflow, freezing, shards, stage
from thaw.errors import ConfigError

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    args, params = stage.parse(argv, __doc__, "model", "frozen_layers", "features", "out", "layers", "metrics",
                               "flow")  # fmt: skip
    frozen = freezing.parse_table(artifacts.read_csv(args.frozen_layers))
    try:
        intended, _ = freezing.thaw_table(frozen, params.unfreeze.layers)
    except ValueError as exc:  # deeper than the base: a config error, reported as one line
        raise ConfigError(str(exc)) from None
    weighted = [row["layer"] for row in frozen if row["part"] == freezing.BASE_NAME]
    # What is reported comes from the model as written (read back and checked), not from the intent.
    flags = freezing.thaw_saved_model(args.model, args.out, weighted, intended)
    table = freezing.table_with_flags(frozen, flags)
    thawed = [name for name in weighted if flags[name]]
    log.info("unfroze %d base layers: %s", len(thawed), ", ".join(thawed) or "(none)")
    features = shards.open_dataset(args.features).array  # only its shape is read
    artifacts.write_csv(args.layers, table)
    artifacts.write_json(args.metrics, freezing.table_summary(table))
    artifacts.write_json(args.flow, dataflow.unfreeze_row(features.shape[1:], thawed, len(features)))


if __name__ == "__main__":
    stage.run(main)
