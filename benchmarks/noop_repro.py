"""What an up-to-date `dvc repro` costs: the time DVC takes to find that nothing changed, on the default and
with `data=folder` on a folder of images (whose every file DVC must check, as an `input@data` dependency).

    python benchmarks/noop_repro.py [--images 10000] [--repeats 5]
    python benchmarks/noop_repro.py --smoke     # tiny params, 200 images: seconds, for CI

Runs in fresh copies of the project (temporary git + DVC repos): a cold `dvc repro` first, then the no-op
ones, timed. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the project copier is shared with the end-to-end tests
from tiny_project import TINY_CONF, make_tiny_project  # noqa: E402


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return time.perf_counter() - start


def write_folder(root: Path, images: int, classes: int = 10) -> None:
    """`images` distinct 32x32 PNGs in `classes` class folders (offline, deterministic)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")


def noop_seconds(root: Path, env: dict[str, str], repeats: int) -> tuple[float, float]:
    """Cold `dvc repro` seconds, and the median of `repeats` no-op ones (each must run no stage)."""
    cold = sh(["dvc", "repro"], root, env)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, check=True).stdout
        times.append(time.perf_counter() - start)
        if "Running stage" in out:
            raise SystemExit(f"a no-op `dvc repro` ran a stage:\n{out[-2000:]}")
    return cold, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="images in the data=folder case")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny params and 200 images (for CI)")
    args = parser.parse_args()
    conf = TINY_CONF if args.smoke else {}
    repeats = 1 if args.smoke else args.repeats
    images = 200 if args.smoke else args.images

    base = Path(tempfile.mkdtemp(prefix="thaw-noop-bench-"))
    try:
        rows = []
        default = base / "default"
        default.mkdir()
        env = make_tiny_project(default, conf_updates=conf)
        rows.append(("default (embedded digits)", *noop_seconds(default, env, repeats)))

        folder_project, folder = base / "folder", base / "images"
        folder_project.mkdir()
        write_folder(folder, images)
        env = make_tiny_project(folder_project, conf_updates=conf)
        subprocess.run([sys.executable, "-m", "thaw.commands.compose", "data=folder", f"data.path={folder}"],
                       cwd=folder_project, env=env, check=True)  # fmt: skip
        rows.append((f"data=folder, {images} images", *noop_seconds(folder_project, env, repeats)))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"| variant | cold `dvc repro` (s) | no-op `dvc repro` (s, median of {repeats}) |")
    print("|---|---|---|")
    for name, cold, noop in rows:
        print(f"| {name} | {cold:.1f} | {noop:.2f} |")


if __name__ == "__main__":
    main()
