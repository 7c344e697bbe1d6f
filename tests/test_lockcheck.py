"""`thaw lockcheck`: how a dvc.lock written by `dvc repro` compares with the committed one, in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from tiny_project import REPO

from thaw.commands import lockcheck

COMMITTED = (REPO / "dvc.lock").read_text()
AMD = {"cpu": {"vendor_id": "AuthenticAMD", "cpu family": "26", "model": "2"}}
INTEL = {"cpu": {"vendor_id": "GenuineIntel", "cpu family": "6", "model": "207"}}


def rewritten(change) -> str:
    lock = yaml.safe_load(COMMITTED)
    change(lock["stages"])
    return yaml.safe_dump(lock, sort_keys=False)


def set_md5(stage: str, path: str, md5: str = "0" * 32):
    def change(stages):
        for entry in stages[stage].get("deps", []) + stages[stage].get("outs", []):
            if entry["path"] == path:
                entry["md5"] = md5
                return
        raise AssertionError(f"{stage} has no {path}")

    return change


def test_the_committed_lock_is_the_committed_one():
    ok, line = lockcheck.verdict(COMMITTED, COMMITTED, AMD, INTEL)
    assert ok and line == "thaw: dvc.lock is the committed one, byte for byte"


def test_only_trained_files_changed_on_another_kind_is_a_correct_run():
    produced = rewritten(lambda s: (set_md5("finetune", "models/finetuned.keras")(s),
                                    set_md5("train-head", "models/head.keras")(s)))  # fmt: skip
    ok, line = lockcheck.verdict(COMMITTED, produced, AMD, INTEL)
    assert ok, line
    assert "only in the hashes of" in line and "GenuineIntel family 6 model 207" in line
    assert "AuthenticAMD family 26 model 2" in line and "the run is correct" in line


def test_trained_files_changed_on_the_recorded_kind_is_not_reproducible():
    produced = rewritten(set_md5("finetune", "models/finetuned.keras"))
    ok, line = lockcheck.verdict(COMMITTED, produced, INTEL, INTEL)
    assert not ok and "not byte-reproducible" in line and "tests/lock_machine.json" in line


@pytest.mark.parametrize("stage,path", [("ingest", "stages/ingest.py"), ("normalize", "data/normalized"),
                                        ("finetune", "thaw/transfer.py")])  # fmt: skip
def test_changed_code_or_data_is_named_whatever_the_machine(stage, path):
    produced = rewritten(set_md5(stage, path))
    ok, line = lockcheck.verdict(COMMITTED, produced, AMD, INTEL)
    assert not ok and f"{stage}: {path}" in line and "git checkout dvc.lock" in line


def test_changed_params_are_named():
    def change(stages):
        stages["finetune"]["params"]["params.yaml"]["finetune"]["lr"] = 0.5

    ok, line = lockcheck.verdict(COMMITTED, rewritten(change), AMD, INTEL)
    assert not ok and "finetune: params" in line


def test_the_command_prints_one_line_in_the_repository():
    proc = subprocess.run([sys.executable, "-m", "thaw.commands.lockcheck"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1 and proc.stdout.startswith("thaw: dvc.lock ")
