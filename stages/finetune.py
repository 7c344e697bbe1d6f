"""finetune: train the unfrozen model end to end on the images at a low learning rate.

The epoch count continues from train-head's history; writes the fine-tuned model, the history, test metrics
and the test split's (actual, predicted) pairs for the confusion matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from thaw import artifacts, config, dataflow, imports, shards, stage
from thaw.datasources import TEST, VAL

log = logging.getLogger(__name__)

# What this stage declares under `params:` in dvc.yaml (tests/test_stages.py holds the two equal): its
# checkpoint is keyed by exactly these values, so a resumed run never continues another configuration's epochs.
PARAMS = ("seed", "train_head.lr", "finetune", "runtime")


def main(argv: Sequence[str] | None = None) -> None:
    args, params = stage.parse(argv, __doc__, "model", "normalized", "head_history", "out", "history", "metrics",
                               "confusion", "flow")  # fmt: skip
    imports.import_tensorflow()  # only once the config is known good
    from thaw import model, training, transfer

    finetune = params.finetune
    if finetune.lr >= params.train_head.lr:
        log.warning("finetune.lr = %g is not below train_head.lr = %g; fine-tuning usually wants a lower rate",
                    finetune.lr, params.train_head.lr)  # fmt: skip
    data = shards.open_dataset(args.normalized)
    pixels, labels, split, names = data.array, data.labels, data.split, data.class_names
    first_epoch = int(artifacts.read_csv(args.head_history)[-1]["epoch"]) + 1
    settings = config.declared(params, PARAMS)
    inputs = [args.model, args.normalized, args.head_history]
    with training.stage_run("finetune", params.runtime, settings, inputs) as run:
        with run.strategy.scope():
            classifier = model.load_keras_model(args.model, compile=False)
            history = transfer.finetune(classifier, pixels, labels, split, finetune, first_epoch, params.seed,
                                        run.checkpoint, run.steps_per_execution)  # fmt: skip
        test, predicted = training.evaluate(classifier, shards.rows(pixels, split == TEST), labels[split == TEST])
        # The row counts let a sweep put a binomial interval on a single seed's accuracies.
        metrics = {"test_loss": test["loss"], "test_accuracy": test["accuracy"],
                   "val_rows": int((split == VAL).sum()), "test_rows": int((split == TEST).sum()),
                   **training.last_epoch(history)}  # fmt: skip
        log.info("fine-tuned: val_accuracy %.3f, test_accuracy %.3f", metrics["val_accuracy"], test["accuracy"])
        confusion = [{"actual": str(names[a]), "predicted": str(names[p])}
                     for a, p in zip(labels[split == TEST], predicted, strict=True)]  # fmt: skip
        model.save_model(classifier, args.out)
        artifacts.write_csv(args.history, history)
        artifacts.write_json(args.metrics, metrics)
        artifacts.write_csv(args.confusion, confusion)
        artifacts.write_json(
            args.flow, dataflow.finetune_row(pixels.shape, classifier.predict(pixels[:1], verbose=0)[0])
        )


if __name__ == "__main__":
    stage.run(main)
