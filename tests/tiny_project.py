"""A fresh, clone-like copy of the project with tiny params, for the end-to-end tests (imported by them)."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# Small enough for CI, big enough that every class lands in every split.
TINY_CONF = {
    "conf/data/digits.yaml": {"rows": 60, "train_per_class": 4},  # 6 training rows per class, 4 labelled
    "conf/base/glyphs.yaml": {"pretrain": {"classes": 4, "per_class": 8, "epochs": 1, "batch_size": 16}},
    "conf/config.yaml": {"train_head": {"epochs": 2, "batch_size": 16}, "finetune": {"epochs": 1, "batch_size": 16}},
}


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict):
            _merge(into.setdefault(key, {}), value)
        else:
            into[key] = value


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    """Run a command; fail the test with its output if it fails."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-4000:]}"
    return output


def stages_run(output: str) -> list[str]:
    """The stages DVC ran, in order, from its output."""
    return re.findall(r"Running stage '([^']+)'", output)


def project_env() -> dict[str, str]:
    """The environment to run DVC, MLflow and the stages in a project copy with: this interpreter's tools
    first on PATH, and no MLFLOW_* or DVC_* setting leaking in from the caller's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def make_tiny_project(root: Path, conf_updates: dict[str, dict] = TINY_CONF) -> dict[str, str]:
    """Copy the project's files (as git would clone them) into `root`, apply `conf_updates` to conf/ (tiny by
    default), recompose params.yaml, commit; return the environment to run DVC, MLflow and the stages with."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for rel in listed:
        if (REPO / rel).is_file() and not rel.startswith("tests/"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    for rel, update in conf_updates.items():
        text = (root / rel).read_text()
        data = yaml.safe_load(text)
        _merge(data, update)
        # The leading comments stay: Hydra reads a config's package from its `# @package` header line.
        header = "".join(itertools.takewhile(lambda line: line.startswith("#"), text.splitlines(keepends=True)))
        (root / rel).write_text(header + yaml.safe_dump(data, sort_keys=False))
    env = project_env()
    run([sys.executable, "-m", "thaw.commands.compose"], root, env)
    git = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]
    run(["git", "init", "-q"], root, env)
    run([*git, "add", "-A"], root, env)
    run([*git, "commit", "-qm", "tiny"], root, env)
    return env


def stage_commands(root: Path) -> dict[str, list[str]]:
    """Each stage's command line from `root`'s dvc.yaml, `${paths.*}` filled in (the `foreach` stages left
    out): what the benchmarks run outside DVC, as DVC would run them."""
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))
    paths = {key: str(value) for entry in pipeline["vars"] for key, value in entry["paths"].items()}
    return {
        name: shlex.split(re.sub(r"\$\{paths\.([^}]+)\}", lambda m: paths[m.group(1)], stage["cmd"]))
        for name, stage in pipeline["stages"].items()
        if "cmd" in stage
    }


def benchmark_smoke(script: str) -> str:
    """Run `benchmarks/<script> --smoke` as CI does; check it printed a well-formed table; return its output.
    Each benchmark's smoke is its own test module, so the suite's workers share them out."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--smoke"], cwd=REPO,
                          env=project_env(), capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert len(table) >= 3, proc.stdout  # a header, its rule, at least one row of figures
    assert all(line.count("|") == table[0].count("|") for line in table), proc.stdout
    return proc.stdout
