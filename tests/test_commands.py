"""thaw.commands: the `thaw` console command lists its subcommands, refuses an unknown one by name, runs
`thaw compose` to the same text as compose_params, and `thaw compose` imports neither TensorFlow nor MLflow."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import thaw.commands
from thaw.commands import COMMANDS, usage
from thaw.commands.compose import compose_params

THAW = shutil.which("thaw")
needs_script = pytest.mark.skipif(THAW is None, reason="the `thaw` console script is not installed (pip install -e .)")


def run_thaw(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert THAW is not None
    return subprocess.run([THAW, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_names_a_module_and_its_entry_function(name: str) -> None:
    """Checked from the source, without importing the module (sweep and leaderboard pull in MLflow)."""
    module, function, help_ = COMMANDS[name]
    assert module == f"thaw.commands.{name}"
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    assert function in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}, (module, function)
    assert help_.strip()


def test_usage_lists_every_command() -> None:
    text = usage()
    assert text.startswith("usage: thaw COMMAND")
    for name, (_, _, help_) in COMMANDS.items():
        assert f"  {name}" in text
        assert help_ in text


@pytest.mark.parametrize("argv", [[], ["--help"], ["-h"]])
def test_main_without_a_command_prints_the_usage(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    thaw.commands.main(argv)
    assert capsys.readouterr().out == usage() + "\n"


def test_main_refuses_an_unknown_command() -> None:
    with pytest.raises(SystemExit) as info:
        thaw.commands.main(["frobnicate", "--out", "x"])
    assert "unknown command 'frobnicate'" in str(info.value.code)
    assert usage() in str(info.value.code)


@needs_script
def test_thaw_help_lists_the_commands(project_root: Path) -> None:
    done = run_thaw("--help", cwd=project_root)
    assert done.returncode == 0, done.stderr
    for name in COMMANDS:
        assert f"  {name} " in done.stdout


@needs_script
def test_thaw_unknown_command_exits_non_zero_naming_it(project_root: Path) -> None:
    done = run_thaw("frobnicate", cwd=project_root)
    assert done.returncode != 0
    assert "thaw: unknown command 'frobnicate'" in done.stderr
    assert "commands:" in done.stderr  # and what it knows


@needs_script
def test_thaw_compose_help(project_root: Path) -> None:
    done = run_thaw("compose", "--help", cwd=project_root)
    assert done.returncode == 0, done.stderr
    assert "--out" in done.stdout and "--config-dir" in done.stdout


@needs_script
def test_thaw_compose_writes_the_composed_params(project_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "params.yaml"
    done = run_thaw("compose", "--out", str(out), cwd=project_root)
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8") == compose_params(project_root / "conf")
    assert out.read_text(encoding="utf-8") == (project_root / "params.yaml").read_text(encoding="utf-8")


@needs_script
def test_thaw_compose_applies_overrides(project_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "params.yaml"
    overrides = ["base=random", "unfreeze.layers=4"]
    done = run_thaw("compose", *overrides, "--config-dir", str(project_root / "conf"), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8") == compose_params(project_root / "conf", overrides)


def test_thaw_compose_imports_neither_tensorflow_nor_mlflow(project_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "params.yaml"
    code = (
        "import sys, thaw.commands\n"
        f"thaw.commands.main(['compose', '--out', {str(out)!r}])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'mlflow'))\n"
        "assert not heavy, heavy[:10]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=project_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8") == (project_root / "params.yaml").read_text(encoding="utf-8")


def test_a_cluster_sweep_needs_the_ray_heads_address_given_explicitly() -> None:
    from thaw.commands.sweep import check_cluster_address

    check_cluster_address(["-m", "unfreeze.layers=0,1"])  # the local launcher: nothing to join
    check_cluster_address(["-m", "hydra/launcher=cluster", "hydra.launcher.ray.init.address=10.0.0.10:6379"])
    for args in (
        ["-m", "hydra/launcher=cluster"],
        ["-m", "hydra/launcher=cluster", "hydra.launcher.ray.init.address=auto"],
    ):
        with pytest.raises(SystemExit, match=r"hydra\.launcher\.ray\.init\.address=HOST:6379"):
            check_cluster_address(args)


@pytest.mark.parametrize("value", ["a,b", "", "../up", "with space", "-dash", "x/y", "choice(a,b)"])
def test_a_sweep_id_must_be_one_name(value: str) -> None:
    from thaw.commands.sweep import check_sweep_id

    with pytest.raises(SystemExit, match=r"sweep\.id=.* is not a sweep name.*sweep\.id=depth-lr"):
        check_sweep_id(["-m", "unfreeze.layers=0,1", f"sweep.id={value}"])


def test_a_sweep_id_that_is_one_name_passes() -> None:
    from thaw.commands.sweep import check_sweep_id

    for value in ("20261204-134500", "depth-lr", "bench", "v1.2_b"):
        check_sweep_id(["-m", f"sweep.id={value}"])


def test_a_point_gets_the_sweeps_thread_settings_back_not_its_workers_caps() -> None:
    """Hydra's joblib workers cap numerical thread pools for themselves; a point's `dvc exp run` gets the
    sweep's own settings back (a variable the sweep had unset stays unset), everything else as the worker has it."""
    from joblib._parallel_backends import ParallelBackendBase

    from thaw.commands.sweep import SWEEP_THREADS, THREAD_CAPS, point_environment, record_threads

    # joblib's own list: a name it adds in a later release must be added to THREAD_CAPS too.
    assert {*ParallelBackendBase.MAX_NUM_THREADS_VARS, ParallelBackendBase.TBB_ENABLE_IPC_VAR} <= set(THREAD_CAPS)
    sweep = {"OMP_NUM_THREADS": "4", "PATH": "/bin", "HOME": "/home/u"}
    record_threads(sweep)
    worker = {**sweep, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ENABLE_IPC": "1", "PATH": "/usr/bin"}
    assert point_environment(worker) == {"OMP_NUM_THREADS": "4", "PATH": "/usr/bin", "HOME": "/home/u"}
    assert SWEEP_THREADS not in point_environment(worker)
    cluster_worker = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin"}  # started by `ray start`: no record
    assert point_environment(cluster_worker) == cluster_worker
