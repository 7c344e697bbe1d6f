"""Training runs: determinism, tf.data input pipelines, and the per-epoch history every stage records."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from thaw.allocator import keep_freed_memory
from thaw.artifacts import HISTORY_KEYS, path_md5, read_json, write_json, write_text
from thaw.config import RuntimeParams
from thaw.shards import chunk_rows, prediction_batch

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0  # a long epoch's log line interval when stdout is not a terminal (dvc repro's log)


class EpochProgress(keras.callbacks.Callback):
    """Progress within one epoch: Keras' progress bar on a terminal, else a log line every `every_s` seconds
    (a 20,000-photo epoch on a CPU is minutes). It only reads the running loss and accuracy Keras passes to
    its hooks, so the numbers are the same with or without it. With `steps_per_execution` > 1 Keras calls
    the hook once per execution, so the bar moves that many batches at a time. Written here because Keras'
    own `verbose=1` would print "Epoch 1/1" and its own epoch summary beside the stage's line (`fit` runs one
    epoch per call) and has no timed-line mode for a log; its `Progbar` draws the bar."""

    def __init__(self, label: str, batches: int, every_s: float = PROGRESS_EVERY_S, bar: bool = False) -> None:
        super().__init__()
        self.label, self.batches, self.every_s = label, batches, every_s
        self.bar = keras.utils.Progbar(batches, stateful_metrics=["loss", "accuracy"]) if bar else None
        self.started = self.last = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        values = [(key, float(logs[key])) for key in ("loss", "accuracy") if logs and key in logs]
        if self.bar is not None:
            self.bar.update(batch + 1, values)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s and batch + 1 < self.batches:
            self.last = now
            log.info("%s: batch %d/%d %s (%.0f s)", self.label, batch + 1, self.batches,
                     " ".join(f"{key}={value:.4f}" for key, value in values), now - self.started)  # fmt: skip


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and turn on op determinism: same params + seed, same numbers."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def prepare_process(runtime: RuntimeParams) -> None:
    """Before a stage runs a network: size TensorFlow's thread pools (`runtime`) and keep freed memory for the
    next step (thaw/allocator.py)."""
    configure_threads(runtime.intra_op_threads, runtime.inter_op_threads)
    keep_freed_memory()


def prepare_runtime(runtime: RuntimeParams) -> tuple[tf.distribute.Strategy, int]:
    """Apply the `runtime` section before training (`prepare_process`), then return the strategy to build and
    train under and the steps per execution to compile with."""
    prepare_process(runtime)
    strategy = distribution_strategy(runtime.strategy, runtime.devices)
    return strategy, steps_per_execution(runtime.strategy, runtime.steps_per_execution)


def configure_threads(intra_op: int, inter_op: int) -> None:
    """Size TensorFlow's thread pools (0: TensorFlow's choice, one thread per core).

    TensorFlow fixes them when it runs its first op, so stages call this first. Asking again for the sizes
    already set is a no-op (several stages run in one process in tests); asking for others then is an error.
    """
    threading = tf.config.threading
    if (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()) == (
        intra_op, inter_op):  # fmt: skip
        return
    try:
        threading.set_intra_op_parallelism_threads(intra_op)
        threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError as exc:
        raise RuntimeError(f"runtime.*_op_threads must be set before TensorFlow starts: {exc}") from None
    log.info("TensorFlow threads: intra-op %s, inter-op %s", intra_op or "auto", inter_op or "auto")


def distribution_strategy(name: str, devices: list[str] | None) -> tf.distribute.Strategy:
    """`default`: TensorFlow's default (single-device) strategy; `mirrored`: synchronous data-parallel
    replicas on `devices` (every visible GPU when None, the CPU when there is none). Build, load and compile
    models inside its `scope()`."""
    strategy = tf.distribute.MirroredStrategy(devices=devices) if name == "mirrored" else tf.distribute.get_strategy()
    log.info("%s strategy: %d replica(s)", name, strategy.num_replicas_in_sync)
    return strategy


def steps_per_execution(strategy: str, requested: int) -> int:
    """The steps per graph call to compile with: `requested`, but 1 under MirroredStrategy, where Keras 3's
    multi-step loop fails to run ("You must feed a value for placeholder tensor", keras-team/keras#19246)."""
    if strategy == "mirrored" and requested > 1:
        log.warning("runtime.steps_per_execution = %d is not supported under MirroredStrategy by Keras "
                    "(keras-team/keras#19246); training one step per call", requested)  # fmt: skip
        return 1
    return requested


def dataset(x: Any, y: np.ndarray, batch_size: int, order: np.ndarray | None = None) -> tf.data.Dataset:
    """A tf.data pipeline of the rows of (x, y) in `order` (default: as given), batched and prefetched.

    `x` is an ndarray, a ShardedArray or a RowView of one: each batch is gathered when tf.data asks for it,
    so only a few batches are ever in memory, whatever the row count.
    """
    order = np.arange(len(x)) if order is None else np.asarray(order)
    steps = -(-len(order) // batch_size)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            yield np.asarray(x[rows]), y[rows]

    spec = (tf.TensorSpec((None, *x.shape[1:]), tf.as_dtype(x.dtype)), tf.TensorSpec((None,), tf.as_dtype(y.dtype)))
    pipeline = tf.data.Dataset.from_generator(batches, output_signature=spec)
    return pipeline.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(tf.data.AUTOTUNE)


def epoch_order(rows: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled row order of one epoch: a function of (seed, epoch) alone, so a resumed run sees the
    same batches as an uninterrupted one."""
    return np.random.default_rng([seed, epoch]).permutation(rows)


def reseed_layers(model: keras.Model, seed: int, epoch: int) -> None:
    """Set every layer's own random stream (dropout masks) to a function of (seed, epoch).

    Keras saves no SeedGenerator state with the weights, so without this a resumed epoch would draw other
    dropout masks than the uninterrupted run did.
    """
    pending: list[Any] = [model]
    while pending:
        layer = pending.pop()
        pending.extend(getattr(layer, "layers", []))
        for value in vars(layer).values():
            if isinstance(value, keras.random.SeedGenerator):
                value.state.assign(np.asarray([seed, epoch], dtype=value.state.dtype))


@dataclass(frozen=True)
class Checkpoint:
    """A stage's training state after its last finished epoch: weights (with optimizer and RNG state) and
    the history so far, so that a killed run resumes at the next epoch and ends where an uninterrupted one
    would. Keras' BackupAndRestore restores weights and the epoch but not the history, and its resumed
    epochs would see a different data order, hence this small class.

    Each save goes to a fresh folder and then an atomic rename of the `latest` pointer publishes it: a kill
    mid-save leaves the previous epoch's state intact.
    """

    directory: Path

    def restore(self, model: keras.Model) -> list[dict[str, Any]]:
        pointer = self.directory / "latest"
        if not pointer.is_file():
            return []
        epoch_dir = self.directory / pointer.read_text().strip()
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(epoch_dir / "state.weights.h5")
        # JSON keeps no key order; restore the column order every history row has.
        return [
            {key: row[key] for key in ("epoch", "phase", *HISTORY_KEYS)}
            for row in read_json(epoch_dir / "history.json")
        ]

    def save(self, model: keras.Model, history: list[dict[str, Any]]) -> None:
        name = f"epoch-{len(history):04d}"
        epoch_dir = self.directory / name
        shutil.rmtree(epoch_dir, ignore_errors=True)
        epoch_dir.mkdir(parents=True)
        model.save_weights(epoch_dir / "state.weights.h5")
        write_json(epoch_dir / "history.json", history)
        write_text(self.directory / "latest", name)
        for old in self.directory.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def checkpoint_for(stage: str, settings: Mapping[str, Any], inputs: Sequence[str | Path], root: Path) -> Checkpoint:
    """The checkpoint folder of one stage run, keyed by its settings and the content of its inputs, so a
    rerun with other params or inputs never resumes from a stale state."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in inputs:
        digest.update(path_md5(path).encode())
    return Checkpoint(root / ".thaw" / "checkpoints" / f"{stage}-{digest.hexdigest()[:16]}")


@dataclass(frozen=True)
class StageRun:
    """What a training stage builds and trains under: the strategy (build, load and compile in its scope),
    the steps per execution to compile with, and the stage's resumable checkpoint."""

    strategy: tf.distribute.Strategy
    steps_per_execution: int
    checkpoint: Checkpoint


@contextlib.contextmanager
def stage_run(
    stage: str,
    runtime: RuntimeParams,
    settings: Mapping[str, Any],
    inputs: Sequence[str | Path],
) -> Iterator[StageRun]:
    """The skeleton every training stage shares (pretrain-base, train-head, finetune).

    Before any training: size the thread pools and pick the strategy (`runtime`), and open the checkpoint
    keyed by `settings` and the content of `inputs`. When the block succeeds (its outputs written), the
    checkpoint is cleared; when it fails, the checkpoint stays for the rerun to resume from.
    """
    strategy, steps = prepare_runtime(runtime)
    run = StageRun(strategy, steps, checkpoint_for(stage, settings, inputs, Path.cwd()))
    yield run
    run.checkpoint.clear()


def fit(
    model: keras.Model,
    train: tuple[Any, np.ndarray],
    val: tuple[Any, np.ndarray],
    epochs: int,
    batch_size: int,
    seed: int,
    phase: str,
    first_epoch: int = 1,
    checkpoint: Checkpoint | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> list[dict[str, Any]]:
    """Train a compiled model one epoch at a time on (x, y) pairs (x an ndarray, a ShardedArray or a RowView);
    return one row per epoch numbered from `first_epoch`, tagged with `phase`. With a checkpoint, finished
    epochs are saved and a rerun resumes after them. Within an epoch, `EpochProgress` shows it moving."""
    history = checkpoint.restore(model) if checkpoint else []
    if history:
        log.info("%s: resuming after epoch %d of %d (%s)", phase, len(history), epochs, checkpoint.directory)
    x, y = train
    validation = dataset(*val, batch_size)
    for i in range(len(history), epochs):
        reseed_layers(model, seed, i)
        batches = dataset(x, y, batch_size, order=epoch_order(len(x), seed, i))
        progress = EpochProgress(f"{phase} epoch {i + 1}/{epochs}", int(batches.cardinality()),
                                 every_s=progress_every_s, bar=sys.stdout.isatty())  # fmt: skip
        result = model.fit(batches, validation_data=validation, epochs=1, shuffle=False, verbose=0,
                           callbacks=[progress])  # fmt: skip
        row: dict[str, Any] = {"epoch": first_epoch + i, "phase": phase}
        row.update({key: round(float(result.history[key][0]), 6) for key in HISTORY_KEYS})
        history.append(row)
        log.info("%s epoch %d/%d: %s", phase, i + 1, epochs, " ".join(f"{k}={row[k]:.4f}" for k in HISTORY_KEYS))
        if checkpoint:
            checkpoint.save(model, history)
    return history


def evaluate(
    model: keras.Model, x: Any, y: np.ndarray, batch_size: int | None = None
) -> tuple[dict[str, float], np.ndarray]:
    """Loss and accuracy on (x, y), and the predicted class of every row (one pass over the data, a bounded
    chunk of rows at a time when x is sharded)."""
    probabilities = predict(model, x, batch_size)
    loss = keras.losses.sparse_categorical_crossentropy(y, probabilities)
    predicted = probabilities.argmax(axis=1)
    metrics = {
        "loss": float(np.mean(keras.ops.convert_to_numpy(loss))),
        "accuracy": float(np.mean(predicted == y)),
    }
    return metrics, predicted


def predict(model: keras.Model, x: Any, batch_size: int | None = None) -> np.ndarray:
    """The model's outputs for every row of x: an ndarray in one call, anything else (sharded) in chunks of
    whole batches, so the batches, and the numbers, are the same either way. Batches are bounded in bytes
    (`prediction_batch`): large images go through in fewer rows at a time."""
    batch_size = batch_size or prediction_batch(x.shape[1:], x.dtype)
    if isinstance(x, np.ndarray):
        return model.predict(x, batch_size=batch_size, verbose=0)
    step = chunk_rows(x.shape[1:], x.dtype, batch_size)
    outputs = [model.predict(np.asarray(x[start : start + step]), batch_size=batch_size, verbose=0)
               for start in range(0, len(x), step)]  # fmt: skip
    return np.concatenate(outputs)


def last_epoch(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The last epoch's metrics (loss, accuracy, val_loss, val_accuracy) of a history."""
    return {key: history[-1][key] for key in HISTORY_KEYS}
