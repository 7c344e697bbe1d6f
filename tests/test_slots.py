"""Compute slots: separate processes holding slots never train more at once than there are slots, a killed
holder frees its slot, and outside a sweep nothing waits."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thaw.slots import ENV, compute_slot, make_slots, sweep_slot

HOLD = """
import json, os, sys, time
from thaw.slots import compute_slot
if len(sys.argv) > 3:  # start together: wait for the go file
    print("ready", flush=True)
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.01)
with compute_slot(sys.argv[1]):
    start = time.time()
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    end = time.time()
print(json.dumps([start, end]))
"""


def hold_in_processes(folder: Path, count: int, seconds: float = 1.0) -> list[tuple[float, float]]:
    """Start `count` processes that, all at once, each hold a slot of `folder` for `seconds`; their (start,
    end) times."""
    go = folder.parent / "go"
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds), str(go)],
                              stdout=subprocess.PIPE, text=True) for _ in range(count)]  # fmt: skip
    assert all(p.stdout.readline().strip() == "ready" for p in procs)  # imports done, slow or not
    go.touch()
    return [tuple(json.loads(p.communicate(timeout=60)[0].splitlines()[-1])) for p in procs]


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / ".dvc").mkdir()
    return tmp_path


@pytest.mark.parametrize("slots", [1, 2])
def test_processes_take_turns_at_the_slots(project, slots):
    spans = hold_in_processes(make_slots(project, slots), count=4)
    assert most_at_once(spans) == slots
    assert max(end for _, end in spans) - min(start for start, _ in spans) >= 4 / slots * 1.0 - 0.05


def test_a_killed_holder_frees_its_slot(project):
    folder = make_slots(project, 1)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), "600"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    start = time.perf_counter()
    with compute_slot(folder) as waited:
        assert waited < 5
    assert time.perf_counter() - start < 5


def test_outside_a_sweep_nothing_waits(tmp_path):
    assert ENV not in os.environ
    with compute_slot(None) as waited, sweep_slot() as waited_too:
        assert waited == waited_too == 0.0


def test_in_a_sweeps_point_the_stage_holds_the_slot_the_environment_names(project, monkeypatch):
    folder = make_slots(project, 1)
    monkeypatch.setenv(ENV, str(folder))
    # another open of the lock file, as another process would: flock refuses it while the stage holds the slot
    with sweep_slot(), open(folder / "0.lock", "a+b") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(folder / "0.lock", "a+b") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the block


def test_the_release_is_logged_before_the_next_holder_can_take_the_slot(project, caplog):
    # Logged after the unlock, a waiting process's "training in" line could be stamped before the holder's
    # "released" line, and a sweep's logs would read as two points training at once (seen in CI).
    folder = make_slots(project, 1)

    def still_held() -> bool:
        with open(folder / "0.lock", "a+b") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(other, fcntl.LOCK_UN)
            return False

    held_at_release: list[bool] = []

    class Probe(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("released compute slot"):
                held_at_release.append(still_held())

    probe = Probe()
    logging.getLogger("thaw.slots").addHandler(probe)
    try:
        with caplog.at_level(logging.INFO, logger="thaw.slots"), compute_slot(folder):
            pass
    finally:
        logging.getLogger("thaw.slots").removeHandler(probe)
    assert held_at_release == [True]
    assert not still_held()


def test_slots_are_made_per_project_and_count(project):
    one, two = make_slots(project, 1), make_slots(project, 2)
    assert one.parent == two.parent == project / ".dvc" / "tmp"
    assert sorted(p.name for p in two.iterdir()) == ["0.lock", "1.lock"]
    assert make_slots(project, 2) == two  # again: the same slots


def test_no_slots_outside_a_dvc_project_and_no_dvc_folder_made(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a DVC project"):
        make_slots(tmp_path, 1)
    assert not (tmp_path / ".dvc").exists()


@pytest.mark.parametrize("count", [0, -1, 1.5, "2", True])
def test_bad_slot_counts_name_the_key(project, count):
    with pytest.raises(ValueError, match=r"sweep\.compute_slots: .* is not a positive number of slots"):
        make_slots(project, count)


def test_a_folder_without_slots_is_an_error_that_names_the_variable(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{ENV}=.*no slot lock files"), compute_slot(tmp_path):
        pass
