"""Past one machine: `dvc push` from one clone to a DVC remote (a local directory here; S3-compatible in the
README), then `dvc pull` and `dvc repro` on a second clone reproduce without training anything again."""

from __future__ import annotations

import pytest
from tiny_project import make_tiny_project, run, stages_run

pytestmark = pytest.mark.slow
TRAINING = ("pretrain-base", "extract-frozen", "train-head", "unfreeze", "finetune")


def test_push_on_one_clone_pull_and_repro_on_another_recomputes_nothing(tmp_path):
    first, remote, second = tmp_path / "first", tmp_path / "remote", tmp_path / "second"
    first.mkdir()
    env = make_tiny_project(first)
    run(["dvc", "remote", "add", "--default", "shared", str(remote)], first, env)
    run(["dvc", "repro"], first, env)
    run(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit", "-qam", "results"], first, env)
    run(["dvc", "push", "--run-cache"], first, env)

    run(["git", "clone", "-q", str(first), str(second)], tmp_path, env)
    run(["dvc", "pull", "--run-cache"], second, env)
    output = run(["dvc", "repro"], second, env)

    assert not set(stages_run(output)) & set(TRAINING), output[-2000:]
    assert (second / "models/finetuned.keras").read_bytes() == (first / "models/finetuned.keras").read_bytes()
    assert (second / "metrics/finetune.json").read_text() == (first / "metrics/finetune.json").read_text()
