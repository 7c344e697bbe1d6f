"""Run the pipeline's stages inside one Python process, as a one-process script would: each stage's own `main`
with the arguments of its dvc.yaml command line, a params file of the caller's choice, no DVC and no
subprocess. The peers of thaw's sweep (`floor.py`, `hydra_multirun.py`) are built on it."""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

import yaml

UPSTREAM = ("ingest", "normalize", "pretrain-base", "extract-frozen", "train-head")
POINT = ("unfreeze", "finetune")


def use_project_code(root: Path) -> None:
    """Import `stages` and `thaw` from the project copy in `root`, not from wherever thaw is installed."""
    sys.path.insert(0, str(root))
    from thaw.imports import QUIET_TENSORFLOW

    for key, value in QUIET_TENSORFLOW.items():
        os.environ.setdefault(key, value)  # as `thaw.stage.run` sets them for a stage process


class Pipeline:
    """The stages of the project in `root` (the current directory), run in this process."""

    def __init__(self, root: Path) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # shared with the benchmarks
        from tiny_project import stage_commands

        self.root = root
        self.commands = stage_commands(root)

    def inputs(self, params_file: Path) -> None:
        """The `input@<name>` stages: fingerprint the external files the params name (none for the default)."""
        from stages import input as input_stage

        for name, path in (yaml.safe_load(params_file.read_text())["inputs"] or {}).items():
            input_stage.main(["--path", str(path), "--out", f"data/inputs/{name}.json"])

    def run(self, names: tuple[str, ...], params_file: Path) -> dict[str, float]:
        """Run `names` in order with `params_file`; return each stage's seconds."""
        seconds = {}
        for name in names:
            cmd = self.commands[name]
            module = importlib.import_module(cmd[cmd.index("-m") + 1])
            start = time.perf_counter()
            module.main([*cmd[cmd.index("-m") + 2 :], "--params", str(params_file)])
            seconds[name] = time.perf_counter() - start
        return seconds

    def metrics(self, name: str) -> dict:
        import json

        return json.loads((self.root / "metrics" / f"{name}.json").read_text())
