"""What a sweep costs: thaw's sweep against the ways a user would really sweep without it, side by side, at
the default size, at 10,000 and at 50,000 rows.

The ways, each from scratch in its own fresh copy of the project (a temporary git + DVC repo, empty caches):

- floor: one Python process, one TensorFlow import, the stages' own functions; the upstream once, then
  unfreeze + finetune per point; no DVC, no tracking (`benchmarks/peers/floor.py`);
- dvc exp loop: what a DVC user does without thaw's sweeps: `dvc repro train-head` (the warm-up), then one
  `dvc exp run -S ...` per point, one after the other (each a DVC experiment and an MLflow run);
- hydra in-process: a lightning-hydra-template-style Hydra multirun, each job in one process, recomputing the
  whole pipeline (no cache) and logging to MLflow (`benchmarks/peers/hydra_multirun.py`);
- thaw sweep: `thaw sweep -m ...` (the warm-up, then each point a cached DVC experiment in a temporary
  workspace, 2 at a time, nested MLflow runs, the summary and the champion).

Prints each way's wall time, its ratio to the floor, how many times it computed the upstream (train-head and
what precedes it), and whether its points' val and test accuracies and test loss (4 decimals) equal the
floor's (the ways must compute the same thing). The 10,000- and 50,000-row inputs are `np.savez` files of
random 32x32 images in 10 classes, generated here (their accuracies are chance: what is measured is cost).

    python benchmarks/sweep.py                         # default (6 points; 16 min on 2 cores), 10000 (6), 50000 (2)
    python benchmarks/sweep.py --sizes default,10000   # some of them
    python benchmarks/sweep.py --sizes 50000 --finetune-epochs 2   # fewer epochs per point, every way alike
    python benchmarks/sweep.py --smoke                 # tiny params, 1 point, 300 generated rows: for CI
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO / "benchmarks" / "peers"
sys.path.insert(0, str(REPO / "tests"))  # the project copier is shared with the end-to-end tests
from large_data import write_npz  # noqa: E402  (this folder: the same generated input)
from tiny_project import TINY_CONF, make_tiny_project  # noqa: E402

Grid = tuple[tuple[str, ...], tuple[str, ...]]  # unfreeze.layers x finetune.lr
GRIDS: dict[str, Grid] = {"6": (("0", "2", "4"), ("1e-3", "1e-4")), "2": (("2",), ("1e-3", "1e-4")),
                          "1": (("1",), ("1e-3",))}  # fmt: skip
SIZES = {"default": "6", "10000": "6", "50000": "2"}  # rows (or the embedded default) -> grid
SMOKE_ROWS = "300"  # the smoke's generated file: the path the 10,000- and 50,000-row runs take, in seconds


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout + proc.stderr


def stage_runs(outputs: list[str]) -> collections.Counter:
    return collections.Counter(s for out in outputs for s in re.findall(r"Running stage '([^']+)'", out))


RESULTS = ("val_accuracy", "test_accuracy", "test_loss")  # the test loss tells apart what chance accuracies do not


def point(layers: object, lr: object, metrics: Mapping[str, object]) -> tuple:
    """What a way computed at one point: (layers, lr, *RESULTS to 4 decimals)."""
    return int(layers), float(lr), *(round(float(metrics[key]), 4) for key in RESULTS)


def floor(root: Path, env: dict[str, str], grid: Grid) -> tuple[list[tuple], int]:
    out = sh([sys.executable, str(PEERS / "floor.py"), "--layers", ",".join(grid[0]), "--lr", ",".join(grid[1])],
             root, env)  # fmt: skip
    (result,) = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("FLOOR ")]
    return [point(p["layers"], p["lr"], p) for p in result["points"]], 1


def dvc_exp_loop(root: Path, env: dict[str, str], grid: Grid) -> tuple[list[tuple], int]:
    outputs, points = [sh(["dvc", "repro", "train-head"], root, env)], []
    for layers in grid[0]:
        for lr in grid[1]:
            outputs.append(sh(["dvc", "exp", "run", "-S", f"unfreeze.layers={layers}", "-S", f"finetune.lr={lr}",
                               "-S", "tracking.sweep=bench-loop"], root, env))  # fmt: skip
            metrics = json.loads((root / "metrics/finetune.json").read_text())
            points.append(point(layers, lr, metrics))
    return points, stage_runs(outputs)["train-head"]


def hydra_in_process(root: Path, env: dict[str, str], grid: Grid) -> tuple[list[tuple], int]:
    out = sh([sys.executable, str(PEERS / "hydra_multirun.py"), "-m", f"unfreeze.layers={','.join(grid[0])}",
              f"finetune.lr={','.join(grid[1])}"], root, env)  # fmt: skip
    found = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("PEER_POINT ")]
    return [point(p["layers"], p["lr"], p) for p in found], len(found)


def thaw_sweep(root: Path, env: dict[str, str], grid: Grid) -> tuple[list[tuple], int]:
    out = sh([sys.executable, "-m", "thaw.commands.sweep", "-m", f"unfreeze.layers={','.join(grid[0])}",
              f"finetune.lr={','.join(grid[1])}", "sweep.id=bench"], root, env)  # fmt: skip
    logs = [p.read_text() for p in (root / "multirun/bench").glob("*/dvc-exp-run.log")]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("thaw")
    runs = client.search_runs([experiment.experiment_id], "tags.`thaw.sweep` = 'bench'")
    points = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return [point(r.data.params["unfreeze.layers"], r.data.params["finetune.lr"], r.data.metrics)
            for r in points], stage_runs([out, *logs])["train-head"]  # fmt: skip


WAYS: dict[str, Callable[[Path, dict[str, str], Grid], tuple[list[tuple], int]]] = {
    "floor (one process, upstream once)": floor,
    "dvc exp loop (warm-up, then dvc exp run per point)": dvc_exp_loop,
    "hydra in-process multirun (no cache)": hydra_in_process,
    "thaw sweep (Hydra + DVC cache, 2 jobs)": thaw_sweep,
}


def conf_for(data: Path | None, smoke: bool, finetune_epochs: int | None = None) -> dict[str, dict]:
    """The project's conf/ updates: tiny training for the smoke; the generated file as `data=npz`, if any; the
    fine-tune epochs, if given (every way reads them from the same conf/)."""
    conf = copy.deepcopy(TINY_CONF) if smoke else {}
    if finetune_epochs is not None:
        conf.setdefault("conf/config.yaml", {}).setdefault("finetune", {})["epochs"] = finetune_epochs
    if data is not None:
        conf.setdefault("conf/config.yaml", {})["defaults"] = [{"data": "npz"}, {"base": "glyphs"}, "_self_"]
        conf["conf/data/npz.yaml"] = {"data": {"path": str(data)}}
    return conf


def measure(base: Path, size: str, grid: Grid, smoke: bool, finetune_epochs: int | None) -> list[str]:
    data = None
    if size != "default":
        data = base / f"x{size}.npz"
        write_npz(data, int(size))
    results = {}
    for name, way in WAYS.items():
        slug = re.sub(r"\W+", "-", name.split(" (")[0])
        root = base / f"{size}-{slug}"
        root.mkdir()
        env = make_tiny_project(root, conf_for(data, smoke, finetune_epochs))
        start = time.perf_counter()
        points, upstream_runs = way(root, env, grid)
        results[name] = (time.perf_counter() - start, sorted(points), upstream_runs)
        print(f"# {size}: {name}: {results[name][0]:.1f} s, points {sorted(points)}", flush=True)
        shutil.rmtree(root, ignore_errors=True)
    floor_s, floor_points, _ = next(iter(results.values()))
    rows = []
    for name, (seconds, points, upstream_runs) in results.items():
        same = "yes" if points == floor_points else "NO"
        rows.append(f"| {size} | {len(floor_points)} | {name} | {seconds:.1f} | {seconds / floor_s:.2f} | "
                    f"{upstream_runs} | {same} |")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="default, 10000, 50000 (comma-separated)")
    parser.add_argument("--smoke", action="store_true", help=f"tiny params, 1 point, {SMOKE_ROWS} rows (for CI)")
    parser.add_argument("--finetune-epochs", type=int, help="finetune.epochs for every way (default: the project's)")
    args = parser.parse_args()
    if args.finetune_epochs is not None and args.finetune_epochs < 1:
        raise SystemExit(f"--finetune-epochs: {args.finetune_epochs} is not a positive number of epochs")
    sizes = [SMOKE_ROWS] if args.smoke else args.sizes.split(",")
    unknown = set(sizes) - set(SIZES) - {SMOKE_ROWS}
    if unknown:
        raise SystemExit(f"--sizes: unknown {sorted(unknown)}; choose among {', '.join(SIZES)}")

    base = Path(tempfile.mkdtemp(prefix="thaw-sweep-bench-"))
    try:
        rows = []
        for size in sizes:
            rows += measure(base, size, GRIDS["1" if args.smoke else SIZES[size]], args.smoke, args.finetune_epochs)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        "\n| rows | points | way | wall time (s) | ratio to floor | upstream computed (times) | same results as floor |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if any(row.endswith("| NO |") for row in rows):  # the ways must compute the same thing to be compared
        raise SystemExit("a way's results differ from the floor's: its timing compares different work")


if __name__ == "__main__":
    main()
