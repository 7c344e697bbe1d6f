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
  workspace, 2 at a time, each stage its own process as in `dvc repro`, nested MLflow runs, the summary
  and the champion).

Prints each way's wall time, its ratio to the floor, its time after the upstream was ready (the points phase:
the floor's, the loop's after its `dvc repro train-head`, thaw's after the sweep's warm-up; the floor's,
the loop's and thaw's warm-ups compute the same stages, so this is where the ways differ), how many times it
computed the upstream (train-head and what precedes it), and whether its points' val and test accuracies and
test loss (4 decimals) equal the floor's (the ways must compute the same thing). With `--repeats N`, every
way runs N times, in an order that rotates each repeat; the table then gives the mean and its 95 %
t-interval, and each peer's time minus thaw's, paired repeat by repeat (mean and interval, and in how many
repeats thaw was faster). The 10,000- and 50,000-row inputs are `np.savez` files of random 32x32 images in
10 classes, generated here (their accuracies are chance: what is measured is cost).

    python benchmarks/sweep.py                         # default (6 points; 16 min on 2 cores), 10000 (6), 50000 (2)
    python benchmarks/sweep.py --sizes default,10000   # some of them
    python benchmarks/sweep.py --sizes 50000 --finetune-epochs 2   # fewer epochs per point, every way alike
    python benchmarks/sweep.py --sizes 50000 --finetune-epochs 2 --ways floor,loop,thaw --repeats 3
    python benchmarks/sweep.py --smoke                 # tiny params, 1 point, 300 generated rows: for CI
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from thaw.intervals import t_interval

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


def sh_marked(cmd: list[str], cwd: Path, env: dict[str, str], marker: str) -> tuple[str, float]:
    """Run `cmd` like `sh`, reading its output as it comes: (the output, the seconds from the start until the
    first line containing `marker`)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, seen = [], None
    for line in proc.stdout:
        lines.append(line)
        if seen is None and marker in line:
            seen = time.perf_counter() - start
    output = "".join(lines)
    if proc.wait():
        raise SystemExit(f"{' '.join(cmd)} failed:\n{output[-3000:]}")
    if seen is None:
        raise SystemExit(f"{' '.join(cmd)} never printed {marker!r}:\n{output[-3000:]}")
    return output, seen


def stage_runs(outputs: list[str]) -> collections.Counter:
    return collections.Counter(s for out in outputs for s in re.findall(r"Running stage '([^']+)'", out))


RESULTS = ("val_accuracy", "test_accuracy", "test_loss")  # the test loss tells apart what chance accuracies do not


def point(layers: object, lr: object, metrics: Mapping[str, object]) -> tuple:
    """What a way computed at one point: (layers, lr, *RESULTS to 4 decimals)."""
    return int(layers), float(lr), *(round(float(metrics[key]), 4) for key in RESULTS)


class Outcome(NamedTuple):
    """What one way did: its wall time (its commands, not the benchmark's reading of their results), its
    points, how many times it computed the upstream, and the seconds it took after the upstream was ready (its
    points phase; None for a way that recomputes the upstream for every point)."""

    seconds: float
    points: list[tuple]
    upstream_runs: int
    points_seconds: float | None


def floor(root: Path, env: dict[str, str], grid: Grid) -> Outcome:
    start = time.perf_counter()
    out = sh([sys.executable, str(PEERS / "floor.py"), "--layers", ",".join(grid[0]), "--lr", ",".join(grid[1])],
             root, env)  # fmt: skip
    seconds = time.perf_counter() - start
    (result,) = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("FLOOR ")]
    return Outcome(seconds, [point(p["layers"], p["lr"], p) for p in result["points"]], 1, result["points_s"])


def dvc_exp_loop(root: Path, env: dict[str, str], grid: Grid) -> Outcome:
    start = time.perf_counter()
    outputs, points = [sh(["dvc", "repro", "train-head"], root, env)], []
    ready = time.perf_counter()
    for layers in grid[0]:
        for lr in grid[1]:
            outputs.append(sh(["dvc", "exp", "run", "-S", f"unfreeze.layers={layers}", "-S", f"finetune.lr={lr}",
                               "-S", "tracking.sweep=bench-loop"], root, env))  # fmt: skip
            metrics = json.loads((root / "metrics/finetune.json").read_text())
            points.append(point(layers, lr, metrics))
    end = time.perf_counter()
    return Outcome(end - start, points, stage_runs(outputs)["train-head"], end - ready)


def hydra_in_process(root: Path, env: dict[str, str], grid: Grid) -> Outcome:
    start = time.perf_counter()
    out = sh([sys.executable, str(PEERS / "hydra_multirun.py"), "-m", f"unfreeze.layers={','.join(grid[0])}",
              f"finetune.lr={','.join(grid[1])}"], root, env)  # fmt: skip
    found = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("PEER_POINT ")]
    return Outcome(time.perf_counter() - start, [point(p["layers"], p["lr"], p) for p in found], len(found), None)


def thaw_sweep(root: Path, env: dict[str, str], grid: Grid) -> Outcome:
    start = time.perf_counter()
    out, ready = sh_marked([sys.executable, "-m", "thaw.commands.sweep", "-m", f"unfreeze.layers={','.join(grid[0])}",
                            f"finetune.lr={','.join(grid[1])}", "sweep.id=bench"], root, env,
                           "warm-up: done in")  # fmt: skip
    seconds = time.perf_counter() - start  # before the MLflow import and queries below, which only read results
    logs = [p.read_text() for p in (root / "multirun/bench").glob("*/dvc-exp-run.log")]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("thaw")
    runs = client.search_runs([experiment.experiment_id], "tags.`thaw.sweep` = 'bench'")
    points = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return Outcome(seconds, [point(r.data.params["unfreeze.layers"], r.data.params["finetune.lr"], r.data.metrics)
                             for r in points], stage_runs([out, *logs])["train-head"], seconds - ready)  # fmt: skip


Way = Callable[[Path, dict[str, str], Grid], Outcome]
WAYS: dict[str, tuple[str, Way]] = {  # --ways key -> (the table's name, the way)
    "floor": ("floor (one process, upstream once)", floor),
    "loop": ("dvc exp loop (warm-up, then dvc exp run per point)", dvc_exp_loop),
    "hydra": ("hydra in-process multirun (no cache)", hydra_in_process),
    "thaw": ("thaw sweep (Hydra + DVC cache, 2 jobs)", thaw_sweep),
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


def run_way(base: Path, size: str, key: str, data: Path | None, grid: Grid, smoke: bool,
            finetune_epochs: int | None) -> Outcome:  # fmt: skip
    """One way, from scratch in a fresh copy of the project: what it did, its points sorted."""
    name, way = WAYS[key]
    root = base / f"{size}-{key}"
    root.mkdir()
    env = make_tiny_project(root, conf_for(data, smoke, finetune_epochs))
    outcome = way(root, env, grid)
    shutil.rmtree(root, ignore_errors=True)
    after = "" if outcome.points_seconds is None else f" ({outcome.points_seconds:.1f} s after the warm-up)"
    print(f"# {size}: {name}: {outcome.seconds:.1f} s{after}, points {sorted(outcome.points)}", flush=True)
    return outcome._replace(points=sorted(outcome.points))


def run_order(keys: list[str], repeat: int) -> list[str]:
    """The ways' order in repeat `repeat` (0-based): rotated one place each time, so that no way always runs
    first (or last) on a machine that warms up, or slows down, over a long benchmark."""
    shift = repeat % len(keys)
    return keys[shift:] + keys[:shift]


def spread(values: list[float]) -> str:
    """A mean, with its 95 % t-interval when there are two or more values."""
    if len(values) < 2:
        return f"{values[0]:.1f}"
    interval = t_interval(values)
    return f"{interval.mean:.1f} [{interval.low:.1f}, {interval.high:.1f}]"


def table_rows(size: str, outcomes: dict[str, list[Outcome]]) -> list[str]:
    """One row per way: its mean time (and interval), its ratio to the floor's mean, and, paired repeat by
    repeat with thaw's sweep, how much longer it took and in how many repeats thaw was faster; then its time
    after the upstream was ready (where the ways that cache it differ), how many times it computed the
    upstream, and whether its results equal the floor's in every repeat."""
    seconds = {key: [o.seconds for o in done] for key, done in outcomes.items()}
    floor_s = statistics.fmean(seconds["floor"])
    floor_points = outcomes["floor"][0].points
    rows = []
    for key, times in seconds.items():
        if key in ("floor", "thaw") or "thaw" not in seconds:
            minus_thaw = faster = "-"
        else:
            differences = [way - thaw for way, thaw in zip(times, seconds["thaw"], strict=True)]
            minus_thaw = spread(differences)
            faster = f"{sum(d > 0 for d in differences)} of {len(differences)}"
        after = [o.points_seconds for o in outcomes[key]]
        points_phase = "-" if None in after else spread(after)
        same = "yes" if all(o.points == floor_points for o in outcomes[key]) else "NO"
        rows.append(f"| {size} | {len(floor_points)} | {WAYS[key][0]} | {len(times)} | {spread(times)} | "
                    f"{statistics.fmean(times) / floor_s:.2f} | {minus_thaw} | {faster} | {points_phase} | "
                    f"{outcomes[key][-1].upstream_runs} | {same} |")  # fmt: skip
    return rows


def measure(base: Path, size: str, grid: Grid, smoke: bool, finetune_epochs: int | None, keys: list[str],
            repeats: int) -> list[str]:  # fmt: skip
    data = None
    if size != "default":
        data = base / f"x{size}.npz"
        write_npz(data, int(size))
    outcomes: dict[str, list[Outcome]] = {key: [] for key in keys}
    for repeat in range(repeats):
        for key in run_order(keys, repeat):
            outcomes[key].append(run_way(base, size, key, data, grid, smoke, finetune_epochs))
    return table_rows(size, outcomes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="default, 10000, 50000 (comma-separated)")
    parser.add_argument("--ways", default=",".join(WAYS), help=f"some of {', '.join(WAYS)} (the floor is a must)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each way, in rotating order (default: 1)")
    parser.add_argument("--smoke", action="store_true", help=f"tiny params, 1 point, {SMOKE_ROWS} rows (for CI)")
    parser.add_argument("--finetune-epochs", type=int, help="finetune.epochs for every way (default: the project's)")
    args = parser.parse_args()
    if args.finetune_epochs is not None and args.finetune_epochs < 1:
        raise SystemExit(f"--finetune-epochs: {args.finetune_epochs} is not a positive number of epochs")
    if args.repeats < 1:
        raise SystemExit(f"--repeats: {args.repeats} is not a positive number of runs")
    keys = args.ways.split(",")
    if set(keys) - set(WAYS) or "floor" not in keys or len(set(keys)) < len(keys):
        raise SystemExit(f"--ways: {args.ways!r}; give each of {', '.join(WAYS)} at most once, and the floor")
    sizes = [SMOKE_ROWS] if args.smoke else args.sizes.split(",")
    unknown = set(sizes) - set(SIZES) - {SMOKE_ROWS}
    if unknown:
        raise SystemExit(f"--sizes: unknown {sorted(unknown)}; choose among {', '.join(SIZES)}")

    base = Path(tempfile.mkdtemp(prefix="thaw-sweep-bench-"))
    try:
        rows = []
        for size in sizes:
            grid = GRIDS["1" if args.smoke else SIZES[size]]
            rows += measure(base, size, grid, args.smoke, args.finetune_epochs, keys, args.repeats)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        "\n| rows | points | way | runs | wall time (s), mean [95 % interval] | ratio to floor | its time minus "
        "thaw's (s), paired by run | thaw faster in | after the upstream was ready (s) | upstream computed (times) "
        "| same results as floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if any(row.endswith("| NO |") for row in rows):  # the ways must compute the same thing to be compared
        raise SystemExit("a way's results differ from the floor's: its timing compares different work")


if __name__ == "__main__":
    main()
