"""Does the quality guard catch a broken pipeline? The default pipeline and deliberately broken copies of it,
each run cold, their test accuracies set against the guard's bounds (tests/quality.py).

    python benchmarks/quality_guard.py           # the default data: the intact run and every mutant (about 6 min)
    python benchmarks/quality_guard.py --smoke   # tiny params, the intact run and one mutant: for CI

The guard (`tests/test_reproducible_e2e.py::test_the_default_stays_inside_the_quality_guard`) accepts the
seed-42 default on every machine kind seen and must refuse a real regression. Each mutant below is one bug a
change could plausibly bring, made in a fresh copy of the project (a temporary git + DVC repo); the table
says which ones the guard refuses, and by how much each missed or cleared its bounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the fresh-copy helper and the guard the end-to-end tests use


def edit(rel: str, old: str, new: str) -> Callable[[Path, dict[str, str]], None]:
    """A mutant made by replacing `old` with `new` in the copy's file `rel` (which must contain it once)."""

    def mutate(root: Path, env: dict[str, str]) -> None:
        text = (root / rel).read_text()
        if text.count(old) != 1:
            raise SystemExit(f"{rel}: the mutation's anchor {old!r} is not there once; update {__file__}")
        (root / rel).write_text(text.replace(old, new))

    return mutate


def compose(*overrides: str) -> Callable[[Path, dict[str, str]], None]:
    """A mutant made by recomposing the copy's params.yaml with Hydra overrides."""

    def mutate(root: Path, env: dict[str, str]) -> None:
        subprocess.run([sys.executable, "-m", "thaw.commands.compose", *overrides], cwd=root, env=env, check=True,
                       capture_output=True)  # fmt: skip

    return mutate


TRAIN_JOIN = "(shards.rows(features, split == TRAIN), labels[split == TRAIN])"
HIDDEN = 'keras.layers.Dense(units, activation="relu", name="dense")'
MUTANTS: dict[str, Callable[[Path, dict[str, str]], None] | None] = {
    "intact": None,
    # the base's pretrained weights never reach the model: the same architecture, randomly initialised
    "base without its pretrained weights": compose("base=random"),
    # the target's pixels reach the base unscaled (0..255), unlike the source it was pretrained on (0..1)
    "target pixels not normalized": edit(
        "stages/normalize.py", "pixels = datasources.normalize(chunk)", "pixels = chunk.astype(np.float32)"
    ),
    # the head learns from labels shifted by one row: a broken join of features and labels
    "head trained on misaligned labels": edit(
        "thaw/transfer.py",
        TRAIN_JOIN,
        TRAIN_JOIN.replace("labels[split == TRAIN]", "np.roll(labels[split == TRAIN], 1)"),
    ),
    # the head's hidden layer loses its nonlinearity: a linear classifier on the pooled features
    "head without its ReLU": edit("thaw/model.py", HIDDEN, HIDDEN.replace('activation="relu", ', "")),
}
SMOKE_MUTANTS = ("intact", "head trained on misaligned labels")


def run_variant(mutate: Callable[[Path, dict[str, str]], None] | None, smoke: bool) -> dict[str, float]:
    from tiny_project import TINY_CONF, make_tiny_project, run

    root = Path(tempfile.mkdtemp(prefix="thaw-guard-"))
    try:
        env = make_tiny_project(root, conf_updates=TINY_CONF if smoke else {})
        if mutate:
            mutate(root, env)
        run(["dvc", "repro", "finetune"], root, env, timeout=3600)
        return {stage: json.loads((root / f"metrics/{stage}.json").read_text())["test_accuracy"]
                for stage in ("train_head", "finetune")}  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


def check_mutants_apply() -> None:
    """Apply every mutant to one fresh copy (they touch different files): a mutant whose anchor the code no
    longer holds fails here, in the smoke run, instead of silently testing nothing."""
    from tiny_project import make_tiny_project

    root = Path(tempfile.mkdtemp(prefix="thaw-guard-"))
    try:
        env = make_tiny_project(root)
        for mutate in MUTANTS.values():
            if mutate:
                mutate(root, env)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny params, two variants (CI)")
    args = parser.parse_args()
    from quality import guard_bounds, refusals

    if args.smoke:
        check_mutants_apply()
    bounds = guard_bounds()
    print("guard: " + "; ".join(f"{stage} test accuracy in [{low:.3f}, {high:.3f}]"
                                for stage, (low, high) in bounds.items()))  # fmt: skip
    print("\n| variant | head test acc | fine-tuned test acc | guard |")
    print("|---|---|---|---|")
    for name in SMOKE_MUTANTS if args.smoke else tuple(MUTANTS):
        accuracy = run_variant(MUTANTS[name], args.smoke)
        refused = refusals(accuracy, bounds)
        print(f"| {name} | {accuracy['train_head']:.3f} | {accuracy['finetune']:.3f} "
              f"| {'refused: ' + '; '.join(refused) if refused else 'accepted'} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
