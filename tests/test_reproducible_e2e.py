"""End to end: the committed dvc.lock is what the default pipeline produces. A cold `dvc repro` in a fresh copy
of the project (as a clone would be) writes byte-identical outputs to the run that wrote the committed lock in
another checkout: the same dvc.lock, and a clean `git status`. This is the full default pipeline (about 1.5
minutes). One cold run against the committed lock is two independent reproductions already.

Trained weights are byte-identical on one kind of machine (thaw/commands/machine.py), and the committed lock names its
kind in tests/lock_machine.json. On a machine of another kind the code, params, inputs and data stages must
still match the lock exactly, and a second cold run must reproduce the first to the bit: then only the machine
differs, never the promise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from quality import guard_bounds, refusals
from tiny_project import REPO, make_tiny_project, run

from thaw.commands import machine
from thaw.commands.lockcheck import differing, machine_dependent

pytestmark = pytest.mark.slow


LOCK_MACHINE = REPO / "tests/lock_machine.json"  # the kind of machine that wrote the committed dvc.lock


def cold_repro(root: Path) -> tuple[Path, dict[str, str]]:
    env = make_tiny_project(root, conf_updates={})  # the default params, as committed
    run(["dvc", "repro"], root, env, timeout=1200)
    return root, env


@pytest.fixture(scope="module")
def reproduction(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return cold_repro(tmp_path_factory.mktemp("cold"))


def recorded_kind() -> dict:
    """The kind of machine that wrote the committed dvc.lock."""
    return json.loads(LOCK_MACHINE.read_text())


def test_a_cold_reproduction_writes_the_committed_dvc_lock(reproduction, tmp_path_factory) -> None:
    root, _ = reproduction
    committed, produced = (REPO / "dvc.lock").read_text(), (root / "dvc.lock").read_text()
    if produced == committed:
        return
    differ = differing(committed, produced)
    recorded, here = recorded_kind(), machine.kind()
    if here == recorded:
        pytest.fail(f"a cold `dvc repro` disagrees with the committed dvc.lock at {differ} on the kind of machine "
                    "that wrote it: either an output is not byte-reproducible, or dvc.lock is stale (run `make "
                    "repro`, commit dvc.lock; if it was written on another kind of machine, record that kind with "
                    "`python -m thaw.commands.machine > tests/lock_machine.json`)")  # fmt: skip
    code_or_data = sorted(set(differ) - set(machine_dependent(differ, yaml.safe_load(committed))))
    assert not code_or_data, (f"dvc.lock is stale at {code_or_data}: code, params, inputs or data stages differ, "
                              "whatever the machine (run `make repro` and commit dvc.lock)")  # fmt: skip
    # Another kind of machine (say which: the report shows it): its trained files may differ from the
    # committed ones, but a second cold run here must write exactly what the first wrote.
    again, _ = cold_repro(tmp_path_factory.mktemp("cold-again"))
    twice = differing(produced, (again / "dvc.lock").read_text())
    assert not twice, f"two cold `dvc repro`s on this machine disagree at {twice}: not byte-reproducible"
    kinds = {key: (recorded.get(key), here.get(key)) for key in here.keys() | recorded.keys()
             if recorded.get(key) != here.get(key)}  # fmt: skip
    print(f"dvc.lock was written on another kind of machine ({kinds}); two cold runs here agree byte for byte")


def test_a_reproduction_leaves_git_status_clean(reproduction) -> None:
    """Every output is DVC's or git-ignored; only dvc.lock may change, on another kind of machine (checked
    entry by entry above)."""
    root, env = reproduction
    changed = [line[3:] for line in run(["git", "status", "--porcelain"], root, env).splitlines()]
    other_kind = machine.kind() != recorded_kind()
    assert changed == (["dvc.lock"] if other_kind and changed else []), changed


def test_the_default_stays_inside_the_quality_guard(reproduction) -> None:
    """Quality cannot regress silently, on any machine: the head's and the fine-tuned model's test accuracy lie
    in the band that every machine kind seen lands in, widened by the spread over seeds (tests/quality.py,
    docs/reproducibility.md#what-the-default-trains-to). benchmarks/quality_guard.py shows it refuses a base
    without its pretrained weights, unnormalized pixels and a head trained on misaligned labels."""
    root, _ = reproduction
    accuracy = {stage: json.loads((root / f"metrics/{stage}.json").read_text())["test_accuracy"]
                for stage in ("train_head", "finetune")}  # fmt: skip
    refused = refusals(accuracy, guard_bounds())
    assert not refused, (f"{refused} on {machine.kind()['cpu']}: a regression, or a new machine kind's draw "
                         "outside every kind seen (if the pipeline is unchanged, add this kind's row to "
                         "docs/reproducibility.md's table)")  # fmt: skip


def test_lockcheck_says_why_dvc_lock_changed_after_the_run(reproduction) -> None:
    """`make repro`'s last line: the committed lock byte for byte on its own kind; on another kind, only
    trained files changed and the run is correct. Either way, here it must not report a stale lock."""
    root, env = reproduction
    line = run(["thaw", "lockcheck", "--strict", "--recorded", str(LOCK_MACHINE)], root, env).strip()
    if machine.kind() == recorded_kind():
        assert line == "thaw: dvc.lock is the committed one, byte for byte"
    else:
        assert line.startswith("thaw: dvc.lock ") and ("byte for byte" in line or "the run is correct" in line), line
