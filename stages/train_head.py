"""train-head: train the dense head on the cached features, then join it to the frozen base.

Writes the head, the base + head model (base frozen, head trained) and its layer table, the per-epoch history
and test metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from thaw import artifacts, config, dataflow, imports, shards, stage
from thaw.datasources import TEST
from thaw.freezing import freeze, layer_table

log = logging.getLogger(__name__)

# What this stage declares under `params:` in dvc.yaml (tests/test_stages.py holds the two equal): its
# checkpoint is keyed by exactly these values, so a resumed run never continues another configuration's epochs.
PARAMS = ("seed", "train_head", "runtime")


def main(argv: Sequence[str] | None = None) -> None:
    args, params = stage.parse(argv, __doc__, "features", "base", "head", "model", "layers", "history", "metrics",
                               "flow")  # fmt: skip
    imports.import_tensorflow()  # only once the config is known good
    from thaw import model, training, transfer

    head_params = params.train_head
    data = shards.open_dataset(args.features)
    features, labels, split = data.array, data.labels, data.split
    settings = config.declared(params, PARAMS)
    with training.stage_run("train-head", params.runtime, settings, [args.features]) as run:
        with run.strategy.scope():
            head, history = transfer.train_head(features, labels, split, len(data.class_names), head_params,
                                                params.seed, run.checkpoint, run.steps_per_execution)  # fmt: skip
        test, _ = training.evaluate(head, shards.rows(features, split == TEST), labels[split == TEST])
        base = model.load_keras_model(args.base)
        freeze(base)
        classifier = model.assemble(base, head)
        model.compile_classifier(classifier, head_params.lr)
        metrics = {"test_loss": test["loss"], "test_accuracy": test["accuracy"], **training.last_epoch(history)}
        log.info("head: val_accuracy %.3f, test_accuracy %.3f", metrics["val_accuracy"], test["accuracy"])
        model.save_model(head, args.head)
        model.save_model(classifier, args.model)
        artifacts.write_csv(args.layers, layer_table(classifier))  # what unfreeze thaws, without loading Keras
        artifacts.write_csv(args.history, history)
        artifacts.write_json(args.metrics, metrics)
        artifacts.write_json(args.flow, dataflow.head_row(features.shape, head.predict(features[:1], verbose=0)[0]))


if __name__ == "__main__":
    stage.run(main)
