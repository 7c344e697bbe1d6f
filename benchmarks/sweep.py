"""What a sweep costs: a 6-point sweep (unfreeze.layers 0,2,4 x finetune.lr 1e-3,1e-4) on the default data,
through each way in, against the naive loop that runs the whole pipeline once per point.

Each variant runs in its own fresh copy of the project (a temporary git + DVC repo), so no cache is shared
between them. Prints wall times, how many times each stage ran, and each way's ratio to the naive loop.

    python benchmarks/sweep.py [--jobs 2] [--keep]
    python benchmarks/sweep.py --smoke     # tiny params, 1 point: checks the script in CI, not the costs
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRID = {"full": ((0, 2, 4), ("1e-3", "1e-4")), "smoke": ((1,), ("1e-3",))}  # unfreeze.layers x finetune.lr
Grid = tuple[tuple[int, ...], tuple[str, ...]]
STAGES = (
    "ingest",
    "normalize",
    "pretrain-base",
    "extract-frozen",
    "train-head",
    "unfreeze",
    "finetune",
    "report",
    "track",
)


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout + proc.stderr


def count(outputs: list[str]) -> collections.Counter:
    return collections.Counter(s for out in outputs for s in re.findall(r"Running stage '([^']+)'", out))


def naive_loop(root: Path, env: dict[str, str], grid: Grid) -> tuple[float, collections.Counter]:
    """What a user writes without a sweep engine: recompose the params, rerun the whole pipeline."""
    outputs, start = [], time.perf_counter()
    for layers in grid[0]:
        for lr in grid[1]:
            overrides = [f"unfreeze.layers={layers}", f"finetune.lr={lr}"]
            sh([sys.executable, "-m", "thaw.commands.compose", *overrides], root, env)
            outputs.append(sh(["dvc", "repro", "--force"], root, env))
    return time.perf_counter() - start, count(outputs)


def dvc_queue(root: Path, env: dict[str, str], grid: Grid, jobs: int) -> tuple[float, collections.Counter]:
    """DVC's way: the warm-up (the shared upstream, once), the grid queued, `jobs` workers, then the summary."""
    start = time.perf_counter()
    outputs = [sh(["dvc", "repro", "train-head"], root, env)]
    layers, lrs = ",".join(map(str, grid[0])), ",".join(grid[1])
    queued = sh(["dvc", "exp", "run", "--queue", "-S", f"unfreeze.layers={layers}", "-S", f"finetune.lr={lrs}",
                 "-S", "tracking.sweep=bench-dvc"], root, env)  # fmt: skip
    names = re.findall(r"Queued experiment '([^']+)'", queued)
    sh(["dvc", "queue", "start", "-j", str(jobs)], root, env)
    while re.search(r"\b(Queued|Running)\b", sh(["dvc", "queue", "status"], root, env)):
        time.sleep(2)
    sh([sys.executable, "-m", "thaw.commands.leaderboard", "--sweep", "bench-dvc", "--summarize"], root, env)
    elapsed = time.perf_counter() - start
    outputs += [sh(["dvc", "queue", "logs", name], root, env) for name in names]
    return elapsed, count(outputs)


def hydra_multirun(root: Path, env: dict[str, str], grid: Grid, jobs: int) -> tuple[float, collections.Counter]:
    """Hydra's way: one multirun command; its callback warms the cache and writes the summary."""
    start = time.perf_counter()
    out = sh([sys.executable, "-m", "thaw.commands.sweep", "-m", f"unfreeze.layers={','.join(map(str, grid[0]))}",
              f"finetune.lr={','.join(grid[1])}", "sweep.id=bench-hydra", f"hydra.launcher.n_jobs={jobs}"], root, env)  # fmt: skip
    elapsed = time.perf_counter() - start
    logs = [p.read_text() for p in sorted((root / "multirun/bench-hydra").glob("*/dvc-exp-run.log"))]
    return elapsed, count([out, *logs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="parallel points for both sweep ways")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects")
    parser.add_argument("--smoke", action="store_true", help="tiny params and 1 point (for CI)")
    args = parser.parse_args()
    grid = GRID["smoke" if args.smoke else "full"]
    # The project copier is shared with the end-to-end tests.
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_project import TINY_CONF, make_tiny_project

    base = Path(tempfile.mkdtemp(prefix="thaw-sweep-bench-"))
    results = {}
    points = len(grid[0]) * len(grid[1])
    for name, run in ((f"naive loop ({points} x dvc repro --force)", lambda r, e: naive_loop(r, e, grid)),
                      (f"DVC queue (-j {args.jobs})", lambda r, e: dvc_queue(r, e, grid, args.jobs)),
                      (f"Hydra multirun (joblib n_jobs={args.jobs})",
                       lambda r, e: hydra_multirun(r, e, grid, args.jobs))):  # fmt: skip
        root = base / re.sub(r"\W+", "-", name)
        root.mkdir()
        env = make_tiny_project(root, conf_updates=TINY_CONF if args.smoke else {})
        results[name] = run(root, env)
        print(f"{name}: {results[name][0]:.0f} s", flush=True)

    naive = next(iter(results.values()))[0]
    print("\n| way | wall time (s) | ratio to naive | " + " | ".join(STAGES) + " |")
    print("|---|---|---|" + "---|" * len(STAGES))
    for name, (seconds, runs) in results.items():
        cells = " | ".join(str(runs.get(stage, 0)) for stage in STAGES)
        print(f"| {name} | {seconds:.0f} | {seconds / naive:.2f} | {cells} |")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
