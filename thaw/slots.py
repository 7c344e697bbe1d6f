"""Compute slots: how many of one machine's sweep points may train at the same time.

A sweep runs its points 2 (`hydra.launcher.n_jobs`) at a time so that one point's overhead (starting DVC,
importing TensorFlow and MLflow, checking out, saving, tracking) hides behind another's work. But one training
stage already keeps every core busy (TensorFlow sizes its pools to the machine), so two of them training at
once only take turns at the cores, with extra switching. With a slot, the stages' training (each
`training.stage_run` block) waits for its turn and everything else still overlaps.

The sweep entry point makes the slots, one lock file each, in the project's `.dvc/tmp`, and names their folder
in the points' environment (`THAW_COMPUTE_SLOTS`); DVC passes it down to the stages. A stage run outside a
sweep (no variable) never waits. The locks are `flock`s: the kernel drops them when their process ends, so a
killed point never keeps a slot; they hold between processes of one machine, so each machine of a cluster gets
its own. No library does this across separate processes (joblib's and Ray's limits count jobs, not the
training inside them), hence this module.

Waiting does not change what is computed: only when.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

ENV = "THAW_COMPUTE_SLOTS"  # the folder of the slots' lock files, in the environment of a sweep's points
POLL_S = 0.05  # with more than one slot: how often a waiting stage tries them again


def make_slots(root: Path, count: int) -> Path:
    """Make `count` slots for the sweep points run in the project at `root`, and return their folder (the
    value of THAW_COMPUTE_SLOTS). Sweeps of one project with the same count share the slots."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"sweep.compute_slots: {count!r} is not a positive number of slots (0 turns them off)")
    if not (root / ".dvc").is_dir():  # never make a folder look like a DVC project
        raise FileNotFoundError(f"{root} is not a DVC project (no .dvc folder): no compute slots made there")
    folder = root / ".dvc" / "tmp" / f"compute-slots-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{i}.lock").touch()
    return folder


def sweep_slot() -> contextlib.AbstractContextManager[float]:
    """The slot a stage trains in: one of the sweep's (THAW_COMPUTE_SLOTS, set by `thaw sweep` for its points),
    or none outside a sweep. The variable is the contract between the sweep and the stages DVC runs for it."""
    return compute_slot(os.environ.get(ENV))


@contextlib.contextmanager
def compute_slot(folder: str | Path | None) -> Iterator[float]:
    """Hold one of the slots in `folder` for the block; yield the seconds waited for it. With no folder (a run
    outside a sweep), or where there are no `flock`s (Windows), hold nothing and wait for nothing."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the points train side by side, as without slots
        folder = None
    if not folder:
        yield 0.0
        return
    locks = sorted(Path(folder).glob("*.lock"))
    if not locks:
        raise FileNotFoundError(f"{ENV}={folder}: no slot lock files there; the sweep makes them (thaw sweep)")
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(path, "a+b")) for path in locks]
        if len(files) == 1:
            fcntl.flock(files[0], fcntl.LOCK_EX)  # one slot: the kernel queues the waiters
            held = files[0]
        else:
            while (held := _take_free(files)) is None:
                time.sleep(POLL_S)
        waited = time.perf_counter() - start
        log.info("training in compute slot %s of %d (waited %.1f s)", Path(held.name).stem, len(files), waited)
        try:
            yield waited
        finally:
            # Logged before the unlock, so that the next holder's "training in" line can never be stamped
            # earlier than this one (logged after, two processes raced: a sweep's log read as an overlap).
            log.info(
                "released compute slot %s after %.1f s", Path(held.name).stem, time.perf_counter() - start - waited
            )
            fcntl.flock(held, fcntl.LOCK_UN)


def _take_free(files: Sequence[BinaryIO]) -> BinaryIO | None:
    """Lock the first of `files` no other process holds, without waiting; None when all are held."""
    import fcntl

    for file in files:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        return file
    return None
