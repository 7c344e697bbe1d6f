"""What each stage costs on the default data, on this machine: wall time split into process start + imports
versus work, peak memory, the whole pipeline from a clean cache, a no-op `dvc repro`, and one head epoch on
the cached features versus the same head trained through the frozen base (why extract-frozen exists).

    python benchmarks/stage_costs.py
    python benchmarks/stage_costs.py --smoke     # tiny params: seconds, for CI

Runs in a fresh copy of the project (a temporary git + DVC repo) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak resident memory (MiB) of one command, from GNU time."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    seconds, kib = proc.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(kib) // 1024


def module_tree(module: str, root: Path) -> ast.Module:
    """The parsed source of a stage module (`stages.finetune`) in the project at `root`."""
    return ast.parse((root / (module.replace(".", "/") + ".py")).read_text())


def stage_imports(module: str, root: Path) -> list[str]:
    """The stage module and every module it imports, at its top or inside `main` (the training stages import
    TensorFlow there, once their config is checked): `from thaw import model` names `thaw.model`."""
    tree = module_tree(module, root)
    names = [module]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
            names += [f"{node.module}.{alias.name}" if node.module == "thaw" else node.module for alias in node.names]
    return sorted(set(names))


def calls_import_tensorflow(module: str, root: Path) -> bool:
    """Whether the stage imports TensorFlow through `imports.import_tensorflow()` (the training stages do)."""
    tree = module_tree(module, root)
    return any(isinstance(node, ast.Attribute) and node.attr == "import_tensorflow" for node in ast.walk(tree))


def import_seconds(module: str, root: Path, env: dict[str, str], repeats: int = 3) -> float:
    """Process start + importing the stage module and what its `main` imports, the way it does (what a stage
    pays before any work), best of `repeats`.

    Library modules that import a library lazily (`thaw.tracking` imports MLflow inside its functions) pay
    that in "work".
    """
    code = "import " + ", ".join(stage_imports(module, root))
    if calls_import_tensorflow(module, root):
        code = f"from thaw import imports; imports.import_tensorflow(); {code}"
    return min(timed([sys.executable, "-c", code], root, env)[0] for _ in range(repeats))


def head_epoch_seconds(root: Path) -> dict[str, tuple[float, float]]:
    """Median seconds of one head epoch on cached features, and through the frozen base, two ways:

    - `epoch`: timed by a Keras callback from epoch begin to epoch end (the training work of an epoch);
    - `fit call`: a whole `fit(epochs=1)` call, set-up included, as the stages' per-epoch loop makes them.

    Both compile as the pipeline does (runtime.steps_per_execution from params.yaml); the first epoch traces
    the graph and is left out.
    """
    import keras

    from thaw import config, model, shards, training
    from thaw.datasources import TRAIN
    from thaw.freezing import freeze

    params = config.load(root / "params.yaml")
    steps = params.runtime.steps_per_execution
    features = shards.open_dataset(root / "data/features")
    pixels = shards.open_dataset(root / "data/normalized")
    train = features.split == TRAIN
    base = model.load_keras_model(root / "models/base.keras")
    freeze(base)

    class EpochTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    def epoch(net, x, y) -> tuple[float, float]:
        model.compile_classifier(net, 1e-3, steps)
        timer = EpochTimer()
        net.fit(training.dataset(x, y, 32), epochs=8, verbose=0, callbacks=[timer])
        calls = []
        for _ in range(5):
            start = time.perf_counter()
            net.fit(training.dataset(x, y, 32), epochs=1, verbose=0)
            calls.append(time.perf_counter() - start)
        return statistics.median(timer.seconds[1:]), statistics.median(calls)

    p = params.train_head
    shape = features.array.shape[1:]
    head = model.build_head(shape, len(features.class_names), p.units, p.dropout, p.pool)
    cached = epoch(head, features.array[train], features.labels[train])
    through = model.assemble(base, model.build_head(shape, len(features.class_names), p.units, p.dropout, p.pool))
    slow = epoch(through, pixels.array[train], pixels.labels[train])
    return {"epoch": (cached[0], slow[0]), "fit call": (cached[1], slow[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny params (for CI): checks the script, not the costs")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))  # the project copier is shared with the end-to-end tests
    from tiny_project import TINY_CONF, make_tiny_project, stage_commands

    root = Path(tempfile.mkdtemp(prefix="thaw-stage-bench-"))
    env = make_tiny_project(root, conf_updates=TINY_CONF if args.smoke else {})

    cold, _ = timed(["dvc", "repro"], root, env)
    repeats = 1 if args.smoke else 3
    noop = statistics.median(timed(["dvc", "repro"], root, env)[0] for _ in range(repeats))

    rows = []
    for name, cmd in stage_commands(root).items():  # not the `input@<name>` stages: the default reads no file
        module = cmd[cmd.index("-m") + 1]
        startup = import_seconds(module, root, env, repeats)
        wall, peak = timed([sys.executable, *cmd[1:]], root, env)  # the stage's own command, outside DVC
        rows.append((name, wall, startup, peak))
    # Run again outside DVC, each stage must write the same bytes the cached run did.
    if "Data and pipelines are up to date" not in run(["dvc", "status"], root, env):
        raise SystemExit("the stages' outputs changed when they ran again: see `dvc status`")

    print("| stage | wall (s) | start + imports (s) | work (s) | peak memory (MiB) |")
    print("|---|---|---|---|---|")
    for name, wall, startup, peak in rows:
        print(f"| {name} | {wall:.1f} | {startup:.1f} | {max(0.0, wall - startup):.1f} | {peak} |")
    total = sum(r[1] for r in rows)
    imports = sum(r[2] for r in rows)
    print(f"\ncold `dvc repro` from a clean cache: {cold:.1f} s; no-op `dvc repro`: {noop:.2f} s")
    print(f"start + imports: {imports:.1f} s of {total:.1f} s of stage time ({100 * imports / total:.0f} %)")
    for way, (cached, through) in head_epoch_seconds(root).items():
        print(f"one head epoch ({way}): {cached * 1000:.0f} ms on cached features, {through * 1000:.0f} ms "
              f"through the frozen base ({through / cached:.1f} x)")  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


if __name__ == "__main__":
    main()
