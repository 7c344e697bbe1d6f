"""Reliability end to end: a real `dvc repro` whose finetune process is SIGKILLed mid-training resumes from
its last finished epoch and ends with exactly the numbers and weights of an uninterrupted run, while the
killed attempt leaves dvc.lock, the tracked runs and every committed output as they were."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from tiny_project import TINY_CONF, make_tiny_project, project_env, run

from thaw import store

pytestmark = pytest.mark.slow
# Enough epochs (and small batches) that each training stage is still running after its second epoch.
CONF = {
    **TINY_CONF,
    "conf/base/glyphs.yaml": {"pretrain": {"classes": 4, "per_class": 8, "epochs": 6, "batch_size": 4}},
    "conf/config.yaml": {"train_head": {"epochs": 8, "batch_size": 4}, "finetune": {"epochs": 6, "batch_size": 4}},
}
# The stage to kill, what must be built before it, its epoch count, and the records it leaves.
KILLED = {
    "pretrain-base": (None, 6, ["metrics/pretrain.json"]),
    "train-head": ("extract-frozen", 8, ["plots/train_head.csv", "metrics/train_head.json"]),
    "finetune": ("unfreeze", 6, ["plots/finetune.csv", "metrics/finetune.json", "plots/confusion.csv"]),
}
RECORDS = ["metrics/pretrain.json", "plots/train_head.csv", "metrics/train_head.json", "plots/finetune.csv",
           "metrics/finetune.json", "plots/confusion.csv"]  # fmt: skip


def weights(path: Path) -> list[np.ndarray]:
    from thaw.model import load_keras_model

    return load_keras_model(path, compile=False).get_weights()


def digest(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def start_and_kill(cmd: list[str], root: Path, env: dict[str, str], stage: str, after_epoch: int) -> int:
    """Start `cmd`, SIGKILL it (DVC and the stage process) once `stage` has saved epoch `after_epoch`;
    return the last epoch it had saved."""
    proc = subprocess.Popen(cmd, cwd=root, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    pattern = f"{stage}-*/latest"
    checkpoints = root / ".thaw" / "checkpoints"
    deadline = time.monotonic() + 300
    while not any(p.read_text().strip() >= f"epoch-{after_epoch:04d}" for p in checkpoints.glob(pattern)):
        assert proc.poll() is None, f"{stage} ended before it could be killed"
        assert time.monotonic() < deadline, f"no {stage} checkpoint after 300 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (latest,) = checkpoints.glob(pattern)
    return int(latest.read_text().removeprefix("epoch-"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    run(["dvc", "repro"], root, make_tiny_project(root, CONF))
    return root


@pytest.mark.parametrize("stage", list(KILLED))
def test_a_sigkilled_training_stage_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path_factory, stage):
    before, epochs, records = KILLED[stage]
    root = tmp_path_factory.mktemp(f"killed-{stage}")
    env = make_tiny_project(root, CONF)
    if before:
        run(["dvc", "repro", before], root, env)
    lock_before = (root / "dvc.lock").read_text() if (root / "dvc.lock").exists() else None

    killed_after = start_and_kill(["dvc", "repro", stage], root, env, stage, after_epoch=2)
    assert 2 <= killed_after < epochs

    # The killed attempt recorded nothing: dvc.lock as before, no half-written output, no MLflow run.
    assert ((root / "dvc.lock").read_text() if (root / "dvc.lock").exists() else None) == lock_before
    assert not any((root / rel).exists() for rel in records)
    assert not list(root.rglob(".*.tmp.*"))
    assert not (root / "mlflow.db").exists()

    output = run(["dvc", "repro"], root, env)
    assert f"resuming after epoch {killed_after} of {epochs}" in output
    assert not list((root / ".thaw" / "checkpoints").glob(f"{stage}-*")), "removed once the stage succeeded"

    # Same numbers and weights as the run that was never interrupted (determinism across processes too).
    for rel in RECORDS:
        assert (root / rel).read_text() == (uninterrupted / rel).read_text(), rel
    for rel in ("models/base.keras", "models/finetuned.keras"):
        for a, b in zip(weights(root / rel), weights(uninterrupted / rel), strict=True):
            np.testing.assert_array_equal(a, b)
    epochs_logged = [int(line.split(",")[0]) for line in (root / "plots/finetune.csv").read_text().splitlines()[1:]]
    assert epochs_logged == list(range(9, 15))  # continuous after train-head's 8, no epoch twice

    # One MLflow run for the variant, not one per attempt.
    client = MlflowClient(tracking_uri=store.tracking_uri(root, {}))
    runs = client.search_runs([client.get_experiment_by_name("thaw").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_a_killed_stage_loses_nothing_dvc_checkout_cannot_restore(uninterrupted):
    root = uninterrupted
    env = project_env()
    outputs = ["models/unfrozen.keras", "models/finetuned.keras", *RECORDS]
    before = {rel: digest(root / rel) for rel in outputs}
    lock_before = (root / "dvc.lock").read_text()
    start_and_kill(["dvc", "repro", "--force", "--single-item", "finetune"], root, env, "finetune", after_epoch=1)
    assert (root / "dvc.lock").read_text() == lock_before
    run(["dvc", "checkout"], root, env)
    assert {rel: digest(root / rel) for rel in outputs} == before
    assert "up to date" in run(["dvc", "status"], root, env).lower()
