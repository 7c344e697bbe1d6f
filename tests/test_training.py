"""thaw.training: reproducibility from the seed, the per-epoch history rows, evaluation, the resumable
checkpoint, the training-stage skeleton, and the runtime (strategies, thread pools): MirroredStrategy over two
logical CPU devices (what several GPUs look like to the code), through the real train-head stage."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import yaml

from thaw import model, shards, training
from thaw.config import Params

CLASSES = 3


def _features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Data independent of the training seed, so only the seed varies between runs."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4, 4, 8)).astype(np.float32), rng.integers(0, CLASSES, n)


def _train(seed: int, epochs: int = 2, steps_per_execution: int = 1) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    training.make_deterministic(seed)
    head = model.build_head((4, 4, 8), CLASSES, units=8, dropout=0.3)
    model.compile_classifier(head, 0.01, steps_per_execution)
    history = training.fit(head, _features(40, 0), _features(12, 1), epochs, batch_size=8, seed=seed, phase="head")
    return history, head.get_weights()


@pytest.fixture(scope="module")
def seed_11_run() -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    return _train(seed=11)


def test_same_seed_gives_identical_history_and_weights(seed_11_run):
    history_a, weights_a = seed_11_run
    history_b, weights_b = _train(seed=11)
    assert history_a == history_b
    assert len(weights_a) == len(weights_b)
    assert all(np.array_equal(a, b) for a, b in zip(weights_a, weights_b, strict=True))


def test_steps_per_execution_changes_speed_not_numbers(seed_11_run):
    history_a, weights_a = seed_11_run
    history_b, weights_b = _train(seed=11, steps_per_execution=3)  # 5 steps an epoch: calls of 3 and 2 steps
    assert history_a == history_b
    assert all(np.array_equal(a, b) for a, b in zip(weights_a, weights_b, strict=True))


def test_a_different_seed_gives_different_numbers(seed_11_run):
    history_a, weights_a = seed_11_run
    history_c, weights_c = _train(seed=12)
    assert history_a != history_c
    assert not all(np.array_equal(a, c) for a, c in zip(weights_a, weights_c, strict=True))


def test_fit_numbers_epochs_from_first_epoch_and_tags_the_phase():
    training.make_deterministic(0)
    head = model.build_head((4, 4, 8), CLASSES, units=8, dropout=0.0)
    model.compile_classifier(head, 0.01)
    rows = training.fit(
        head, _features(16, 0), _features(8, 1), epochs=3, batch_size=8, seed=0, phase="finetune", first_epoch=5
    )
    assert [row["epoch"] for row in rows] == [5, 6, 7]
    assert {row["phase"] for row in rows} == {"finetune"}
    for row in rows:
        assert list(row) == ["epoch", "phase", *training.HISTORY_KEYS]
        for key in training.HISTORY_KEYS:
            assert isinstance(row[key], float)
            assert np.isfinite(row[key])
            assert row[key] == round(row[key], 6)
        assert 0.0 <= row["accuracy"] <= 1.0
        assert 0.0 <= row["val_accuracy"] <= 1.0


def test_fit_defaults_to_epoch_one():
    training.make_deterministic(0)
    head = model.build_head((4, 4, 8), CLASSES, units=8, dropout=0.0)
    model.compile_classifier(head, 0.01)
    rows = training.fit(head, _features(16, 0), _features(8, 1), 2, 8, seed=0, phase="head")
    assert [(row["epoch"], row["phase"]) for row in rows] == [(1, "head"), (2, "head")]


def _train_logging(every_s: float) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    training.make_deterministic(11)
    head = model.build_head((4, 4, 8), CLASSES, units=8, dropout=0.3)
    model.compile_classifier(head, 0.01)
    history = training.fit(head, _features(40, 0), _features(12, 1), 2, 8, seed=11, phase="head",
                           progress_every_s=every_s)  # fmt: skip
    return history, head.get_weights()


def test_a_long_epoch_logs_its_progress_and_the_numbers_stay_the_same(seed_11_run, caplog):
    with caplog.at_level("INFO", logger="thaw.training"):
        history, weights = _train_logging(every_s=0.0)  # a line after every batch but the last
    lines = [r.getMessage() for r in caplog.records if ": batch " in r.getMessage()]
    assert lines[0].startswith("head epoch 1/2: batch 1/5 ") and lines[4].startswith("head epoch 2/2: batch 1/5 ")
    assert [line.split(" ")[4] for line in lines] == ["1/5", "2/5", "3/5", "4/5"] * 2, lines
    assert all(" loss=" in line and " accuracy=" in line for line in lines)
    history_a, weights_a = seed_11_run  # the default interval: no line within these short epochs
    assert history == history_a
    assert all(np.array_equal(a, b) for a, b in zip(weights, weights_a, strict=True))


def test_on_a_terminal_the_progress_is_keras_progress_bar(capsys):
    progress = training.EpochProgress("head epoch 1/1", batches=3, bar=True)
    for batch in range(3):
        progress.on_train_batch_end(batch, {"loss": 1.0 / (batch + 1), "accuracy": 0.5})
    out = capsys.readouterr().out
    assert "3/3" in out and "loss: 0.3333" in out and "accuracy: 0.5000" in out, out


def test_dataset_batches_every_row_in_order_and_epoch_order_is_reproducible():
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.arange(10)
    plain = [b[1].numpy().tolist() for b in training.dataset(x, y, batch_size=4)]
    assert plain == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]

    first = training.epoch_order(10, seed=1, epoch=0)
    assert sorted(first.tolist()) == list(range(10)) and first.tolist() != list(range(10))
    assert training.epoch_order(10, seed=1, epoch=0).tolist() == first.tolist()
    assert training.epoch_order(10, seed=1, epoch=1).tolist() != first.tolist()
    assert training.epoch_order(10, seed=2, epoch=0).tolist() != first.tolist()


def _resumable_head(seed: int) -> keras.Model:
    training.make_deterministic(seed)
    head = model.build_head((4, 4, 8), CLASSES, units=8, dropout=0.5)  # dropout: RNG state must resume too
    model.compile_classifier(head, 0.01)
    return head


def test_a_resumed_fit_ends_exactly_where_an_uninterrupted_one_does(tmp_path):
    train, val = _features(32, 0), _features(8, 1)
    whole = _resumable_head(3)
    whole_rows = training.fit(whole, train, val, 4, 8, seed=3, phase="head")

    checkpoint = training.Checkpoint(tmp_path / "ckpt")
    first = _resumable_head(3)
    training.fit(first, train, val, 2, 8, seed=3, phase="head", checkpoint=checkpoint)  # "killed" after epoch 2
    assert (checkpoint.directory / "latest").read_text() == "epoch-0002"

    resumed = _resumable_head(3)  # a new process builds the model again, then restores the checkpoint
    rows = training.fit(resumed, train, val, 4, 8, seed=3, phase="head", checkpoint=checkpoint)

    assert rows == whole_rows
    for a, b in zip(resumed.get_weights(), whole.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in checkpoint.directory.iterdir()) == ["epoch-0004", "latest"]
    checkpoint.clear()
    assert not checkpoint.directory.exists()


def test_checkpoint_key_changes_with_settings_and_input_content(tmp_path):
    data = tmp_path / "features.npz"
    data.write_bytes(b"one")
    a = training.checkpoint_for("train-head", {"lr": 0.1}, [data], tmp_path)
    assert a == training.checkpoint_for("train-head", {"lr": 0.1}, [data], tmp_path)
    assert a != training.checkpoint_for("train-head", {"lr": 0.2}, [data], tmp_path)
    data.write_bytes(b"two")
    assert a != training.checkpoint_for("train-head", {"lr": 0.1}, [data], tmp_path)
    assert a.directory.parent == tmp_path / ".thaw" / "checkpoints"


def test_evaluate_returns_loss_accuracy_and_predictions():
    # A softmax layer with fixed weights: the prediction for one-hot input i is class i, with known probabilities.
    inputs = keras.Input((CLASSES,))
    dense = keras.layers.Dense(CLASSES, activation="softmax")
    net = keras.Model(inputs, dense(inputs))
    dense.set_weights([np.eye(CLASSES, dtype=np.float32) * 2.0, np.zeros(CLASSES, np.float32)])
    x = np.eye(CLASSES, dtype=np.float32)[[0, 1, 2, 2]]
    y = np.array([0, 1, 2, 0])  # the last row is predicted 2 but labelled 0

    metrics, predicted = training.evaluate(net, x, y, batch_size=2)

    assert predicted.tolist() == [0, 1, 2, 2]
    assert metrics["accuracy"] == pytest.approx(0.75)
    p_right = np.exp(2.0) / (np.exp(2.0) + 2.0)
    p_wrong = 1.0 / (np.exp(2.0) + 2.0)
    expected_loss = (3 * -np.log(p_right) - np.log(p_wrong)) / 4
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert set(metrics) == {"loss", "accuracy"}
    assert all(isinstance(v, float) for v in metrics.values())


# runtime: strategies and thread pools -----------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import logging, sys
    import tensorflow as tf

    logging.basicConfig(level=logging.INFO)

    # Two logical devices must be configured before TensorFlow starts; a GPU machine needs none of this.
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from stages import train_head  # the real stage: its strategy, steps and threads come from runtime

    train_head.main(sys.argv[1:])
    """
)


def run_train_head(folder: Path, runtime: dict) -> tuple[str, list[list[float]]]:
    """Run the real train-head stage under `runtime` (with two logical CPUs); its log and its history."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["runtime"] = runtime
    params["train_head"].update({"epochs": 4, "batch_size": 8, "lr": 0.01, "dropout": 0.0})  # masks differ per replica
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    outs = ["--features", "../features", "--base", "../base.keras", "--head", "head.keras", "--model",
            "model.keras", "--layers", "layers.csv", "--history", "history.csv", "--metrics", "metrics.json", "--flow", "flow.json"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *outs], cwd=folder, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(",")[2:] for line in (folder / "history.csv").read_text().splitlines()[1:]]
    return proc.stderr, [[float(v) for v in row] for row in rows]


def test_mirrored_strategy_trains_the_head_on_two_devices_like_one(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    features = 0.1 * rng.random((60, 8, 8, 64), dtype=np.float32) + labels[:, None, None, None]
    shards.save(tmp_path / "features", "features", features, labels, np.tile(np.array([0, 0, 0, 1, 2], dtype=np.int8), 12),
                ["a", "b", "c"])  # fmt: skip
    save_base = (
        "from thaw.model import build_conv_base, save_model; save_model(build_conv_base(32, [8, 8, 64]), 'base.keras')"
    )
    subprocess.run([sys.executable, "-c", save_base], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()

    one_device = {"strategy": "default", "devices": None, "steps_per_execution": 1, "intra_op_threads": 1,
                  "inter_op_threads": 1}  # fmt: skip
    log_one, one = run_train_head(tmp_path / "one", one_device)
    log_two, two = run_train_head(
        tmp_path / "two",
        {**one_device, "strategy": "mirrored", "devices": ["/cpu:0", "/cpu:1"], "steps_per_execution": 32},
    )

    assert "default strategy: 1 replica(s)" in log_one
    assert "TensorFlow threads: intra-op 1, inter-op 1" in log_one
    assert "mirrored strategy: 2 replica(s)" in log_two  # what the stage itself trained with
    assert "training one step per call" in log_two  # the default steps_per_execution fails under Mirrored
    # Synchronous data parallelism: the same updates as on one device, up to float summation order.
    np.testing.assert_allclose(np.array(two), np.array(one), atol=1e-4)
    assert (tmp_path / "two" / "model.keras").is_file()


def test_thread_pools_cannot_change_once_tensorflow_runs():
    import tensorflow as tf

    from thaw import training

    tf.constant(1.0) + 1.0  # TensorFlow has started (with its own choice of threads)
    training.configure_threads(0, 0)  # the sizes already in force: nothing to do
    with pytest.raises(RuntimeError, match=r"runtime\.\*_op_threads must be set before TensorFlow starts"):
        training.configure_threads(1, 1)


# the training-stage skeleton ----------------------------------------------------------------------------------


def test_stage_run_clears_its_checkpoint_only_on_success(
    committed_params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    runtime = replace(committed_params.runtime, steps_per_execution=4)
    with pytest.raises(KeyError), training.stage_run("s", runtime, {"a": 1}, []) as run:
        assert run.steps_per_execution == 4
        run.checkpoint.directory.mkdir(parents=True)
        raise KeyError("killed mid-training")
    assert run.checkpoint.directory.is_dir()  # kept: the rerun resumes from it

    with training.stage_run("s", runtime, {"a": 2}, []) as other:
        assert other.checkpoint != run.checkpoint  # other settings: another checkpoint
    with training.stage_run("s", runtime, {"a": 1}, []) as again:
        assert again.checkpoint == run.checkpoint  # same settings and inputs: the same checkpoint
    assert not run.checkpoint.directory.exists()
