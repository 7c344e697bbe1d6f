"""Warm starts (thaw/warmstart.py): a stage forked from a server that imported its libraries once behaves as
the stage's own process would (folder, arguments, environment, streams, exit status, signals), leaves the
same outputs byte for byte, and falls back to its own process wherever a child would not be the same."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tiny_project import make_tiny_project, run, stage_commands

from thaw import warmstart

REPO = Path(__file__).resolve().parents[1]

# A stand-in for a stage module, run as `python -m probe ...` would run it.
PROBE = textwrap.dedent("""
    import json, os, sys, time
    mode = sys.argv[1]
    if mode == "report":
        print(json.dumps({"cwd": os.getcwd(), "argv": sys.argv[1:], "probe": os.environ.get("PROBE"),
                          "warm": os.environ.get("THAW_WARM_START"), "pid": os.getpid(),
                          "preloaded": "mlflow" in sys.modules, "main": __name__}))
        print("a line to stderr", file=sys.stderr)
        sys.exit(int(sys.argv[2]))
    if mode == "raise":
        raise RuntimeError("the probe failed")
    if mode == "sleep":
        with open(sys.argv[2], "w") as out:
            out.write(str(os.getpid()))
        time.sleep(120)
""")

# What a stage's own process does (stage.run): delegate, or run the module itself when no server takes it.
CLIENT = textwrap.dedent("""
    import logging, os, runpy, sys
    from thaw import warmstart
    from thaw.imports import QUIET_TENSORFLOW
    for key, value in QUIET_TENSORFLOW.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    status = warmstart.delegate(sys.argv[1], "mlflow", "probe", sys.argv[2:])
    if status is None:
        print("in its own process", file=sys.stderr)
        sys.argv = ["probe", *sys.argv[2:]]
        runpy.run_module("probe", run_name="__main__")
    else:
        warmstart.exit_like(status)
""")


@pytest.fixture(scope="module")
def servers():
    started = warmstart.Servers(kinds=("mlflow",))  # the lighter kind: the same server code as tensorflow's
    assert started.wait_ready() == ["mlflow"]
    yield started
    started.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "probe.py").write_text(PROBE)
    return tmp_path


def client(folder: Path | str, workdir: Path, *args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLIENT, str(folder), *args], cwd=workdir,
                            env={**os.environ, "PROBE": "from the stage", **(env or {})}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # fmt: skip


def sleeping_stage(servers: warmstart.Servers, workdir: Path) -> tuple[subprocess.Popen, int]:
    """A stage whose child sleeps, once the child is running: the stage's process and the child's pid."""
    pidfile = workdir / "child.pid"
    proc = client(servers.folder, workdir, "sleep", str(pidfile))
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc, int(pidfile.read_text())


def gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_the_child_is_the_stage_its_folder_arguments_environment_streams_and_status(servers, workdir):
    proc = client(servers.folder, workdir, "report", "3")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    seen = json.loads(out)
    assert seen["cwd"] == str(workdir) and seen["argv"] == ["report", "3"] and seen["main"] == "__main__"
    assert seen["probe"] == "from the stage"
    assert seen["warm"] is None  # a child never delegates again
    assert seen["pid"] != proc.pid
    assert seen["preloaded"]  # the probe imports no MLflow: the child has the server's
    assert "a line to stderr" in err and "forked from the sweep's mlflow server" in err
    assert "in its own process" not in err


def test_an_uncaught_exception_prints_its_traceback_and_exits_1(servers, workdir):
    proc = client(servers.folder, workdir, "raise")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "RuntimeError: the probe failed" in err and "Traceback" in err


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_stage_stops_its_child_and_the_stage_ends_as_it_did(servers, workdir, how):
    proc, child = sleeping_stage(servers, workdir)
    proc.send_signal(how)
    proc.communicate(timeout=60)
    assert gone(child)
    # The child dies of the signal (SIGINT through Python's KeyboardInterrupt, as a fresh Python process
    # does), and the stage dies of it too: its caller (DVC) sees what it would see without a warm start.
    assert proc.returncode == -how


def test_a_killed_stage_takes_its_child_with_it(servers, workdir):
    proc, child = sleeping_stage(servers, workdir)
    proc.kill()
    proc.wait(timeout=10)
    assert gone(child)


def test_another_import_environment_runs_in_its_own_process(servers, workdir):
    proc = client(servers.folder, workdir, "report", "0", env={"TF_ENABLE_ONEDNN_OPTS": "0", "OMP_NUM_THREADS": "1"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "other values of OMP_NUM_THREADS, TF_ENABLE_ONEDNN_OPTS" in err and "in its own process" in err
    assert json.loads(out)["pid"] == proc.pid


def test_no_server_means_its_own_process(workdir):
    proc = client(workdir / "no-such-folder", workdir, "report", "0")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "in its own process" in err
    assert json.loads(out)["pid"] == proc.pid


def test_a_stage_that_asks_before_the_server_is_ready_waits_for_its_imports(workdir):
    started = warmstart.Servers(kinds=("mlflow",))  # MLflow's import takes the server a second or more
    try:
        proc = client(started.folder, workdir, "report", "0")  # at once: the socket is not there yet
        assert not warmstart.socket_path(started.folder, "mlflow").exists()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "forked from the sweep's mlflow server" in err and json.loads(out)["pid"] != proc.pid
    finally:
        started.stop()


def test_a_server_that_dies_while_importing_leaves_its_stages_to_their_own_processes(workdir):
    started = warmstart.Servers(kinds=("mlflow",))
    try:
        started.procs["mlflow"].kill()  # SIGKILL mid-import: no cleanup runs, the kernel drops its lock
        proc = client(started.folder, workdir, "report", "0")
        out, err = proc.communicate(timeout=60)  # not READY_S: a dead server is not waited for
        assert proc.returncode == 0, err
        assert "in its own process" in err and json.loads(out)["pid"] == proc.pid
        assert started.wait_ready(timeout=5) == []
    finally:
        started.stop()


def test_the_servers_end_with_the_process_that_started_them(tmp_path):
    sweep = subprocess.Popen(
        [sys.executable, "-c", "from thaw import warmstart; import json, time; s = warmstart.Servers(('mlflow',)); "
         "s.wait_ready(); print(json.dumps([str(s.folder), s.procs['mlflow'].pid]), flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    folder, server = json.loads(sweep.stdout.readline())
    assert warmstart.socket_path(folder, "mlflow").exists()
    sweep.kill()  # no cleanup of its own: the server notices its parent is gone
    sweep.wait()
    assert gone(server)
    assert not Path(folder).exists()  # nor does its folder outlive it


@pytest.mark.slow
def test_a_forked_training_stage_writes_the_same_bytes_as_its_own_process(tmp_path):
    """train-head and finetune of a tiny project, each run in its own process and then forked from a
    TensorFlow server: every output file is the same, byte for byte."""
    root = tmp_path / "project"
    root.mkdir()
    env = make_tiny_project(root)
    run(["dvc", "repro", "finetune"], root, env)
    outputs = ["models/head.keras", "models/model.keras", "plots/train_head.csv", "metrics/train_head.json",
               "models/finetuned.keras", "plots/finetune.csv", "metrics/finetune.json", "plots/confusion.csv"]  # fmt: skip
    cold = {rel: (root / rel).read_bytes() for rel in outputs}
    started = warmstart.Servers(kinds=("tensorflow",), env=env)
    try:
        assert started.wait_ready() == ["tensorflow"]
        warm_env = {**env, warmstart.ENV: str(started.folder)}
        for name in ("train-head", "unfreeze", "finetune"):
            cmd = stage_commands(root)[name]
            out = run(cmd, root, warm_env)
            assert ("forked from the sweep's tensorflow server" in out) == (name != "unfreeze"), out
    finally:
        started.stop()
    assert {rel: (root / rel).read_bytes() for rel in outputs} == cold


def test_a_points_environment_has_the_servers_import_time_variables_not_the_workers(tmp_path):
    """Hydra's joblib workers cap OMP_NUM_THREADS and the like for themselves; a point's stages get the values
    the servers were started with (the sweep's), and every other variable of the worker."""
    started = warmstart.Servers(kinds=(), env={"OMP_NUM_THREADS": "4", "PATH": "/bin"})
    try:
        worker = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "KMP_INIT_AT_FORK": "false", "PATH": "/usr/bin",
                  "HOME": "/home/u", warmstart.ENV: str(started.folder)}  # fmt: skip
        assert warmstart.point_environment(worker) == {"OMP_NUM_THREADS": "4", "PATH": "/usr/bin", "HOME": "/home/u",
                                                       warmstart.ENV: str(started.folder)}  # fmt: skip
    finally:
        started.stop()
    worker = {"OMP_NUM_THREADS": "1", "HOME": "/home/u"}  # no warm start: the worker's environment as it is
    assert warmstart.point_environment(worker) == worker
