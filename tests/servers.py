"""Real servers for the past-one-machine tests, started on loopback and stopped after: a throw-away PostgreSQL
cluster and an MLflow tracking server (imported by the end-to-end tests)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(ready, what: str, timeout: float, log: Path | None = None) -> None:
    """Poll `ready()` until it is true; fail the test with `log`'s tail when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"{what} did not come up within {timeout:.0f} s\n{tail}")


def postgres_bindir() -> Path | None:
    """The PostgreSQL server binaries (initdb, pg_ctl): on PATH, or Debian's /usr/lib/postgresql/N/bin."""
    if shutil.which("initdb") and shutil.which("pg_ctl"):
        return Path(shutil.which("initdb")).resolve().parent  # Debian links a few of them into /usr/local/bin
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A fresh PostgreSQL cluster in a new temporary folder, listening on a free loopback port, with an empty
    `mlflow` database; yields its SQLAlchemy URL and removes it all after. Skips (saying why) where the server
    binaries are missing.

    PostgreSQL refuses to run as root, so as root the cluster is owned by and run as the `postgres` user (in
    a folder of its own: pytest's temporary folders are closed to other users).
    """
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server not installed (Debian package `postgresql`; .ci/run installs it)")
    as_user: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("running as root without `runuser`: cannot start PostgreSQL as an unprivileged user")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="thaw-postgres-"))
    data, log = folder / "data", folder / "postgres.log"
    if as_user:
        shutil.chown(folder, "postgres", "postgres")
        folder.chmod(0o700)
    port = free_port()

    def pg(*cmd: str) -> None:
        proc = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        if proc.returncode:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}{tail}")

    pg(str(bindir / "initdb"), "-D", str(data), "-U", "thaw", "--auth=trust", "-E", "UTF8", "--no-sync")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
    pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
    try:
        pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "thaw", "mlflow")
        yield f"postgresql://thaw@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(
    backend_uri: str, artifacts: Path, log: Path, env: dict[str, str], extra: tuple[str, ...] = ()
) -> Iterator[str]:
    """`mlflow server` on a free loopback port with `backend_uri` as its store and `artifacts` as the shared
    artifact root (clients upload and download through the server), plus `extra` options (with `{port}`
    filled in); yields its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
           "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           *(arg.format(port=port) for arg in extra)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until(lambda: _answers(f"{url}/health") or server.poll() is not None, "mlflow server", 180, log)
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}\n{log.read_text()[-3000:]}")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, 15)
        server.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
