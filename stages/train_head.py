"""train-head: train the dense head on the cached features, then join it to the frozen base.

Writes the head, the base + head model (base frozen, head trained) and its layer table, the per-epoch history
and test metrics.
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
from stages.freezing import freeze, layer_table
from stages.params import TrainHeadParams, load_section, load_seed

log = logging.getLogger(__name__)


def train_head(
    features: np.ndarray,
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
        (features[split == 0], labels[split == 0]),
        (features[split == 1], labels[split == 1]),
        params.epochs,
        params.batch_size,
        seed,
        phase="head",
        checkpoint=checkpoint,
    )
    return head, history


def flow_row(features: np.ndarray, probabilities: np.ndarray) -> dict[str, object]:
    return {
        "stage": "train-head",
        "title": "Train classifier layers",
        "input": f"{len(features)} rows x " + " x ".join(map(str, features.shape[1:])),
        "operation": "Train dense layers on extracted features",
        "output": f"{len(features)} rows x {probabilities.shape[1]} (class probabilities)",
        "example": format_probabilities(probabilities[0]),
    }


def format_probabilities(p: np.ndarray) -> str:
    """The seed's style: `[0.1, 0.7, 0.05, ..., 0.02]`."""
    shown = [f"{v:.2f}" for v in p]
    if len(shown) > 4:
        shown = [*shown[:3], "...", shown[-1]]
    return "[" + ", ".join(shown) + "]"


def main(argv: Sequence[str] | None = None) -> None:
    args = cli.parse(argv, __doc__, "features", "base", "head", "model", "layers", "history", "metrics", "flow")
    params = load_section(args.params, "train_head")
    data = artifacts.read_npz(args.features)
    features, labels, split = data["features"], data["labels"], data["split"]
    seed = load_seed(args.params)
    tracking.check_store(tracking.tracking_uri(tracking.project_root()))
    runtime = load_section(args.params, "runtime")
    strategy, steps = training.prepare_runtime(runtime)
    settings = {"train_head": dataclasses.asdict(params), "runtime": dataclasses.asdict(runtime), "seed": seed}
    checkpoint = training.checkpoint_for("train-head", settings, [args.features], Path.cwd())
    with strategy.scope():
        head, history = train_head(features, labels, split, len(data["class_names"]), params, seed, checkpoint, steps)
    test, _ = training.evaluate(head, features[split == 2], labels[split == 2])
    base = model.load_keras_model(args.base)
    freeze(base)
    classifier = model.assemble(base, head)
    model.compile_classifier(classifier, params.lr)
    metrics = {"test_loss": test["loss"], "test_accuracy": test["accuracy"], **_last(history)}
    log.info("head: val_accuracy %.3f, test_accuracy %.3f", metrics["val_accuracy"], test["accuracy"])
    model.save_model(head, args.head)
    model.save_model(classifier, args.model)
    artifacts.write_csv(args.layers, layer_table(classifier))  # what unfreeze thaws, without loading Keras
    artifacts.write_csv(args.history, history)
    artifacts.write_json(args.metrics, metrics)
    artifacts.write_json(args.flow, flow_row(features, head.predict(features[:1], verbose=0)))
    checkpoint.clear()


def _last(history: list[dict[str, Any]]) -> dict[str, float]:
    return {k: v for k, v in history[-1].items() if k not in ("epoch", "phase")}


if __name__ == "__main__":
    cli.run(main)
