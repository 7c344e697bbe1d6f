"""Which CPU kernels decide the trained bits, and what pinning them would cost: the default pipeline run cold
under each of TensorFlow's and oneDNN's documented kernel switches, on this machine.

    python benchmarks/kernels.py              # the default data, every setting once (about 5 min on 2 cores)
    python benchmarks/kernels.py --repeats 2  # each setting twice (the timings' spread; the bits must repeat)
    python benchmarks/kernels.py --smoke      # tiny params, two settings: seconds, for CI

TensorFlow's x86 build computes convolutions and matrix products with oneDNN, which picks its kernels by the
CPU's instruction set at run time (AVX2, AVX-512, VNNI, BF16, AMX). Two switches change that:
`TF_ENABLE_ONEDNN_OPTS=0` turns TensorFlow's oneDNN graph rewrites off (Eigen's kernels instead, whose matrix
products still call oneDNN's sgemm), and `ONEDNN_MAX_CPU_ISA=AVX2` caps the instruction set oneDNN may use at
one that every current x86-64 CPU has. A setting that gave the same trained bits whatever the CPU would be a
candidate for byte-identical `dvc.lock`s across machine kinds; this script shows, on one machine, which
settings change the bits at all (an ISA cap that changes nothing here picks the same kernels here), what each
costs in wall time, and what each trains to (the accuracies are one more draw each for the quality guard's
band, docs/reproducibility.md). It cannot show that two *other* kinds agree: that needs the two machines.

Each setting runs a cold `dvc repro` in a fresh copy of the project (a temporary git + DVC repo) and prints
one Markdown row: wall time, the head's and the fine-tuned model's test accuracy, and how many trained
entries of its `dvc.lock` differ from the default setting's and from the committed `dvc.lock`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the fresh-copy helper the end-to-end tests use

from thaw.commands.lockcheck import differing  # noqa: E402

# name -> the environment it sets (every run sets both variables explicitly, so the caller's cannot leak in)
SETTINGS = {
    "default": {},
    "oneDNN capped at AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "oneDNN capped at AVX512_CORE": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "TF_ENABLE_ONEDNN_OPTS=0": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    "TF_ENABLE_ONEDNN_OPTS=0, capped at AVX2": {"TF_ENABLE_ONEDNN_OPTS": "0", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
SMOKE_SETTINGS = ("default", "TF_ENABLE_ONEDNN_OPTS=0")


def cold_repro(settings: dict[str, str], smoke: bool) -> tuple[float, dict[str, float], str]:
    """Wall seconds of a cold `dvc repro` under `settings`, the head's and fine-tuned model's test accuracy,
    and the dvc.lock it wrote."""
    from tiny_project import TINY_CONF, make_tiny_project, run

    root = Path(tempfile.mkdtemp(prefix="thaw-kernels-"))
    try:
        env = make_tiny_project(root, conf_updates=TINY_CONF if smoke else {})
        env = {k: v for k, v in env.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA")}
        env.update(settings)
        start = time.perf_counter()
        run(["dvc", "repro"], root, env, timeout=3600)
        seconds = time.perf_counter() - start
        accuracy = {
            stage: json.loads((root / f"metrics/{stage}.json").read_text())["test_accuracy"]
            for stage in ("train_head", "finetune")
        }
        return seconds, accuracy, (root / "dvc.lock").read_text()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="cold runs per setting")
    parser.add_argument("--smoke", action="store_true", help="tiny params and two settings (CI)")
    args = parser.parse_args()
    names = SMOKE_SETTINGS if args.smoke else tuple(SETTINGS)
    committed = (REPO / "dvc.lock").read_text()

    runs: dict[str, list[tuple[float, dict[str, float], str]]] = {}
    for _ in range(args.repeats):
        for name in names:  # interleaved, so a slow spell of the machine spreads over every setting
            runs.setdefault(name, []).append(cold_repro(SETTINGS[name], args.smoke))
            print(f"  {name}: {runs[name][-1][0]:.1f} s", file=sys.stderr, flush=True)

    reference = runs["default"][0][2]
    print("| setting | cold `dvc repro` (s) | head test acc | fine-tuned test acc "
          "| lock entries != default | != committed | repeats agree |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in names:
        seconds = [r[0] for r in runs[name]]
        first = runs[name][0]
        agree = all(r[2] == first[2] for r in runs[name])
        print(f"| {name} | {statistics.mean(seconds):.1f} ({', '.join(f'{s:.1f}' for s in seconds)}) "
              f"| {first[1]['train_head']:.3f} | {first[1]['finetune']:.3f} "
              f"| {len(differing(reference, first[2]))} | {len(differing(committed, first[2]))} "
              f"| {'yes' if agree else 'NO'} |")  # fmt: skip
    stages = {key.partition(": ")[0] for key in differing(committed, reference)}
    print(f"\nstages whose entries differ between the committed lock and this machine's default run: "
          f"{', '.join(sorted(stages)) or 'none'}")  # fmt: skip
    kind = yaml.safe_load(subprocess.run([sys.executable, "-m", "thaw.commands.machine"], capture_output=True,
                                         text=True, check=True).stdout)  # fmt: skip
    print(f"machine: {kind['cpu'].get('vendor_id')} family {kind['cpu'].get('cpu family')} model "
          f"{kind['cpu'].get('model')}, {kind['cores']} cores")  # fmt: skip


if __name__ == "__main__":
    main()
