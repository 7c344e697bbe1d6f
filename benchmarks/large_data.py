"""Real-size data on one machine: per stage wall time, rows/s and peak resident memory, from 10 % to 100 % of
the rows, for two inputs generated here (offline, deterministic):

- `data=folder`: 20,000 PNG images at 160x160 in 10 class folders, with `base=keras_app
  base.application=MobileNetV2` (weights from a file saved here with `weights=None`);
- `data=npz`: 50,000 x 32x32x3 uint8 images in an `np.savez` file, with the default glyphs base.

    python benchmarks/large_data.py                   # both inputs, 10 %, 55 %, 100 % (over an hour on 2 cores)
    python benchmarks/large_data.py --only npz         # one of them
    python benchmarks/large_data.py --only folder --fractions 0.05,0.1,1.0   # cheaper steps, same growth column
    python benchmarks/large_data.py --smoke            # 200 images at 32x32, the folder + MobileNetV2 path (CI)

Each run is a fresh copy of the project (a temporary git + DVC repo), with one epoch per training stage
(cost per row is what is measured, not accuracy). Every stage runs as DVC would run it, from its dvc.yaml
command line, in its own process; its peak resident memory is that process's high-water mark (VmHWM).
Runs at 10 %, 55 % and 100 % of the rows (or `--fractions`) and prints one Markdown table per input. Linear
cost means each added row costs the same: the last column divides what a row added in the second step cost
by what one added in the first step cost (1.0: linear; "flat" where the stage's time does not depend on the
rows).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the project copier is shared with the end-to-end tests
from tiny_project import make_tiny_project, stage_commands  # noqa: E402

STAGES = ("ingest", "normalize", "pretrain-base", "extract-frozen", "train-head", "unfreeze", "finetune", "report",
          "track")  # fmt: skip
# Run one stage module in this process and report its own peak resident memory: VmHWM of /proc/self/status
# (KiB), which starts afresh at exec; ru_maxrss would carry over the RSS of the process that forked it.
MEASURE = (
    "import runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
    "print('THAW_MAXRSS_KB', hwm, file=sys.stderr)\n"
)
ONE_EPOCH = ["train_head.epochs=1", "finetune.epochs=1"]


def write_folder(root: Path, images: int, size: int, classes: int = 10) -> None:
    """`images` PNGs of `size`x`size`: a class-dependent colour gradient plus noise (compressible, distinct)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    for i in range(images):
        cls = i % classes
        folder = root / f"class{cls}"
        folder.mkdir(parents=True, exist_ok=True)
        hue = np.array([cls / classes, 1 - cls / classes, 0.5], dtype=np.float32)
        image = 200 * hue * ramp[:, None, None] * ramp[None, :, None] + rng.integers(0, 50, (size, size, 3))
        Image.fromarray(image.astype(np.uint8)).save(folder / f"{i:06d}.png", compress_level=1)


def write_npz(path: Path, rows: int, size: int = 32, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (rows, size, size, 3), dtype=np.uint8), y=np.arange(rows) % classes)


def write_mobilenet_weights(path: Path, size: int) -> None:
    import keras

    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(size, size, 3)).save_weights(path)


def run_pipeline(root: Path, env: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Every stage, in order, each its own process as DVC runs it: stage -> (seconds, peak resident MiB)."""
    inputs = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))["inputs"]
    for name, path in inputs.items():  # the `input@<name>` stages: fingerprint the external files
        subprocess.run([sys.executable, "-m", "stages.input", "--path", path, "--out", f"data/inputs/{name}.json"],
                       cwd=root, env=env, check=True, capture_output=True)  # fmt: skip
    commands = stage_commands(root)
    costs = {}
    for name in STAGES:
        cmd = commands[name]
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", MEASURE, *cmd[2:]], cwd=root, env=env, capture_output=True,
                              text=True)  # fmt: skip
        seconds = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        peak_kb = int(re.findall(r"THAW_MAXRSS_KB (\d+)", proc.stderr)[-1])
        costs[name] = (seconds, peak_kb / 1024)
    return costs


def project(base: Path, name: str, overrides: list[str]) -> tuple[Path, dict[str, str]]:
    root = base / name
    root.mkdir()
    env = make_tiny_project(root, conf_updates={})
    subprocess.run([sys.executable, "-m", "thaw.commands.compose", *overrides], cwd=root, env=env, check=True)
    return root, env


def measure(base: Path, name: str, overrides: list[str], rows: int, fractions: list[float]) -> list[dict]:
    results = []
    for fraction in fractions:
        n = max(20, round(rows * fraction))
        root, env = project(base, f"{name}-{n}", [*overrides, f"data.rows={n}", *ONE_EPOCH])
        costs = run_pipeline(root, env)
        results.append({"rows": n, "costs": costs})
        shutil.rmtree(root, ignore_errors=True)
        print(f"# {name}, {n} rows: " + json.dumps({k: [round(v[0], 1), round(v[1])] for k, v in costs.items()}),
              flush=True)  # fmt: skip
    return results


def growth(results: list[dict], stage: str) -> str:
    """What a row cost in the second step of rows over what it cost in the first (1.0: linear), from three
    runs: ((t3 - t2) / (n3 - n2)) / ((t2 - t1) / (n2 - n1)); differences cancel the fixed cost (start, imports,
    the pretraining that does not see these rows). "flat" where the stage's time hardly depends on the rows."""
    if len(results) != 3:
        return "-"
    (n1, t1), (n2, t2), (n3, t3) = ((r["rows"], r["costs"][stage][0]) for r in results)
    if t3 - t1 < 2.0 or t2 <= t1:
        return "flat"
    return f"{((t3 - t2) / (n3 - n2)) / ((t2 - t1) / (n2 - n1)):.2f}"


def table(name: str, results: list[dict]) -> str:
    header = " | ".join(f"{r['rows']:,} rows: s, rows/s, peak MiB" for r in results)
    lines = [f"**{name}**", "", f"| stage | {header} | a row's cost, 2nd step / 1st step |",
             "|---|" + "---|" * (len(results) + 1)]  # fmt: skip
    for stage in STAGES:
        cells = []
        for r in results:
            seconds, mib = r["costs"][stage]
            cells.append(f"{seconds:.1f} s, {r['rows'] / seconds:,.0f}/s, {mib:,.0f}")
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {growth(results, stage)} |")
    peak = max(c[1] for r in results for c in r["costs"].values())
    lines += ["", f"Peak resident memory of any stage: {peak:,.0f} MiB."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--only", choices=("folder", "npz"))
    parser.add_argument("--smoke", action="store_true", help="small inputs (for CI)")
    parser.add_argument("--fractions", help="fractions of the rows, three for the growth column (default "
                        "0.1,0.55,1.0; smoke: 0.5,1.0, so that every class reaches every split)")  # fmt: skip
    args = parser.parse_args()
    folder_rows, size, npz_rows = (200, 32, 2000) if args.smoke else (20_000, 160, 50_000)
    only = "folder" if args.smoke else args.only  # the smoke checks the large-data path, not the figures
    fractions = [float(f) for f in (args.fractions or ("0.5,1.0" if args.smoke else "0.1,0.55,1.0")).split(",")]

    base = Path(tempfile.mkdtemp(prefix="thaw-large-bench-"))
    try:
        out = []
        if only in (None, "folder"):
            images, weights = base / "images", base / "mobilenet_v2.weights.h5"
            write_folder(images, folder_rows, size)
            write_mobilenet_weights(weights, size)
            overrides = ["data=folder", f"data.path={images}", f"data.image_size={size}", "data.resize=none",
                         "base=keras_app", "base.application=MobileNetV2", f"base.path={weights}"]  # fmt: skip
            results = measure(base, "folder", overrides, folder_rows, fractions)
            out.append(table(f"data=folder, {folder_rows:,} images at {size}x{size}, base=keras_app MobileNetV2",
                             results))  # fmt: skip
        if only in (None, "npz"):
            path = base / "x.npz"
            write_npz(path, npz_rows)
            results = measure(base, "npz", ["data=npz", f"data.path={path}"], npz_rows, fractions)
            out.append(table(f"data=npz, {npz_rows:,} rows at 32x32, base=glyphs", results))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
