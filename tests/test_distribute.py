"""Training under a tf.distribute strategy from the config: MirroredStrategy over two logical CPU devices
(what several GPUs look like to the code), through the real train-head stage, checkpoint included."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from thaw.config import ConfigError, RuntimeParams

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import logging, sys
    import tensorflow as tf

    logging.basicConfig(level=logging.INFO)

    # Two logical devices must be configured before TensorFlow starts; a GPU machine needs none of this.
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from stages import train_head

    train_head.main(sys.argv[1:])
    """
)


def run_train_head(folder: Path, runtime: dict) -> tuple[str, list[list[float]]]:
    """Run the real train-head stage under `runtime` (with two logical CPUs); its log and its history."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["runtime"] = runtime
    params["train_head"].update({"epochs": 4, "batch_size": 8, "lr": 0.01, "dropout": 0.0})  # masks differ per replica
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    outs = ["--features", "../features.npz", "--base", "../base.keras", "--head", "head.keras", "--model",
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
    np.savez(tmp_path / "features.npz", features=features, labels=labels,
             split=np.tile(np.array([0, 0, 0, 1, 2], dtype=np.int8), 12), class_names=np.array(["a", "b", "c"]))  # fmt: skip
    save_base = "from thaw.model import build_conv_base, save_model; save_model(build_conv_base(32, [8, 8, 64]), 'base.keras')"
    subprocess.run([sys.executable, "-c", save_base], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()

    one_device = {"strategy": "default", "devices": None, "steps_per_execution": 1, "intra_op_threads": 1,
                  "inter_op_threads": 1}  # fmt: skip
    log_one, one = run_train_head(tmp_path / "one", one_device)
    log_two, two = run_train_head(tmp_path / "two", {"strategy": "mirrored", "devices": ["/cpu:0", "/cpu:1"]})

    assert "default strategy: 1 replica(s)" in log_one
    assert "TensorFlow threads: intra-op 1, inter-op 1" in log_one
    assert "mirrored strategy: 2 replica(s)" in log_two  # what the stage itself trained with
    assert "training one step per call" in log_two  # the default steps_per_execution fails under Mirrored
    # Synchronous data parallelism: the same updates as on one device, up to float summation order.
    np.testing.assert_allclose(np.array(two), np.array(one), atol=1e-4)
    assert (tmp_path / "two" / "model.keras").is_file()


def test_runtime_params_are_checked():
    assert RuntimeParams().strategy == "default"
    with pytest.raises(ConfigError, match=r"runtime\.strategy = 'tpu'"):
        RuntimeParams(strategy="tpu")
    with pytest.raises(ConfigError, match=r"runtime\.devices .* null unless runtime\.strategy=mirrored"):
        RuntimeParams(devices=["/gpu:0"])
    with pytest.raises(ConfigError, match=r"runtime\.steps_per_execution = 0 .* an integer >= 1"):
        RuntimeParams(steps_per_execution=0)
    with pytest.raises(ConfigError, match=r"runtime\.inter_op_threads = -1 .* an integer >= 0"):
        RuntimeParams(inter_op_threads=-1)


def test_thread_pools_cannot_change_once_tensorflow_runs():
    import tensorflow as tf

    from thaw import training

    tf.constant(1.0) + 1.0  # TensorFlow has started (with its own choice of threads)
    training.configure_threads(0, 0)  # the sizes already in force: nothing to do
    with pytest.raises(RuntimeError, match=r"runtime\.\*_op_threads must be set before TensorFlow starts"):
        training.configure_threads(1, 1)
