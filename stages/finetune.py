"""finetune: train the unfrozen model end to end on the images at a low learning rate.

The epoch count continues from train-head's history; writes the fine-tuned model, the history, test metrics
and the test split's (actual, predicted) pairs for the confusion matrix.
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
from stages.params import FinetuneParams, load_section, load_seed
from stages.train_head import format_probabilities

log = logging.getLogger(__name__)


def finetune(
    classifier: keras.Model,
    pixels: np.ndarray,
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
        (pixels[split == 0], labels[split == 0]),
        (pixels[split == 1], labels[split == 1]),
        params.epochs,
        params.batch_size,
        seed,
        phase="finetune",
        first_epoch=first_epoch,
        checkpoint=checkpoint,
    )


def flow_row(pixels: np.ndarray, probabilities: np.ndarray) -> dict[str, object]:
    return {
        "stage": "finetune",
        "title": "Fine-tune entire model",
        "input": f"{len(pixels)} rows x " + " x ".join(map(str, pixels.shape[1:])),
        "operation": "Train unfrozen layers and head with a lower learning rate",
        "output": f"{len(pixels)} rows x {probabilities.shape[1]} (class probabilities)",
        "example": format_probabilities(probabilities[0]),
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = cli.parse(
        argv, __doc__, "model", "normalized", "head_history", "out", "history", "metrics", "confusion", "flow"
    )
    params = load_section(args.params, "finetune")
    head_lr = load_section(args.params, "train_head").lr
    if params.lr >= head_lr:
        log.warning("finetune.lr = %g is not below train_head.lr = %g; fine-tuning usually wants a lower rate",
                    params.lr, head_lr)  # fmt: skip
    data = artifacts.read_npz(args.normalized)
    pixels, labels, split, names = data["pixels"], data["labels"], data["split"], data["class_names"]
    first_epoch = int(artifacts.read_csv(args.head_history)[-1]["epoch"]) + 1
    seed = load_seed(args.params)
    tracking.check_store(tracking.tracking_uri(tracking.project_root()))
    runtime = load_section(args.params, "runtime")
    strategy, steps = training.prepare_runtime(runtime)
    settings = {"finetune": dataclasses.asdict(params), "runtime": dataclasses.asdict(runtime), "seed": seed}
    checkpoint = training.checkpoint_for(
        "finetune", settings, [args.model, args.normalized, args.head_history], Path.cwd()
    )
    with strategy.scope():
        classifier = model.load_keras_model(args.model, compile=False)
        history = finetune(classifier, pixels, labels, split, params, first_epoch, seed, checkpoint, steps)
    test, predicted = training.evaluate(classifier, pixels[split == 2], labels[split == 2])
    # The row counts let a sweep put a binomial interval on a single seed's accuracies.
    metrics = {"test_loss": test["loss"], "test_accuracy": test["accuracy"],
               "val_rows": int((split == 1).sum()), "test_rows": int((split == 2).sum())}  # fmt: skip
    metrics.update({k: v for k, v in history[-1].items() if k not in ("epoch", "phase")})
    log.info("fine-tuned: val_accuracy %.3f, test_accuracy %.3f", metrics["val_accuracy"], test["accuracy"])
    confusion = [
        {"actual": str(names[a]), "predicted": str(names[p])}
        for a, p in zip(labels[split == 2], predicted, strict=True)
    ]
    model.save_model(classifier, args.out)
    artifacts.write_csv(args.history, history)
    artifacts.write_json(args.metrics, metrics)
    artifacts.write_csv(args.confusion, confusion)
    artifacts.write_json(args.flow, flow_row(pixels, classifier.predict(pixels[:1], verbose=0)))
    checkpoint.clear()


if __name__ == "__main__":
    cli.run(main)
