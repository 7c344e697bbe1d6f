"""Warm starts: a sweep's stages run in processes forked from one that has already imported TensorFlow (or
MLflow), instead of importing it again in every stage.

Every DVC stage is a fresh `python -m stages.<name>` process, and a training stage spends about 3 s of its
life importing TensorFlow and Keras, `track` about 1.3 s importing MLflow: on small sweep points that is a
large share of a point's own processes' time (docs/performance.md). While a sweep runs, `thaw sweep` keeps
one server per kind (`tensorflow`, `mlflow`) that has imported those libraries once and forks a child for
each stage that asks. The process DVC started stays the stage for DVC: it hands the child its module,
arguments, working folder, environment and standard streams, forwards the signals it gets, and exits with
the child's status (or dies of the child's signal).

What a child takes from the server is only the imported third-party modules (TensorFlow, Keras, MLflow; the
server drops its own `thaw` modules before serving): the stage's and thaw's code are imported by the child
from the stage's `sys.path`, so a temporary workspace runs its own copy, and the child gets the stage's
environment. A stage whose import-time environment (IMPORT_ENV: TF_*, KERAS_*, OMP_*, ...) or Python differs
from the server's runs as it always did, in its own process; so does every stage when no server answers. The
outputs are the same either way (tests/test_warmstart.py compares them byte for byte): every stage seeds its
own random state, and TensorFlow's runtime (threads, devices) is first set up in the child.

Python's own fork server (`multiprocessing`'s `forkserver` with `set_forkserver_preload`) serves only the
process that started it; the stages here are started by DVC, in other processes, hence this module.
A server exits with the process that started it (the sweep), however that one ends.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import logging
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

ENV = "THAW_WARM_START"  # the folder of the servers' sockets, in the environment of a sweep's stages
KINDS = ("tensorflow", "mlflow")
# Variables a library reads when it is imported (or that shape the interpreter): a child forked from a server
# started with other values would not be what a fresh process of the stage would be.
IMPORT_ENV = re.compile(r"^(TF_|TF2_|KERAS_|XLA_|CUDA_|OMP_|KMP_|MKL_|ONEDNN_|DNNL_|MALLOC_|LD_|PYTHON|MLFLOW_|"
                        r"GLIBC_TUNABLES$)")  # fmt: skip
ENVIRONMENT = "environment.json"  # in the servers' folder: the import-time variables they were started with
READY_S = 120.0  # how long `wait_ready` waits for a server's imports (about 3 s for TensorFlow on 2 cores)


class Closable(Protocol):
    def close(self) -> None: ...


def import_env(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if IMPORT_ENV.match(key)}


def socket_path(folder: str | Path, kind: str) -> Path:
    return Path(folder) / f"{kind}.sock"


def starting_path(folder: str | Path, kind: str) -> Path:
    """A file `flock`ed while the `kind` server imports: by the sweep from before the server starts, then by the
    server alone until its socket accepts. The kernel drops the lock when the server ends, however it ends."""
    return Path(folder) / f"{kind}.starting"


def wait_for_server(folder: str | Path, kind: str, timeout: float = READY_S) -> bool:
    """Wait while the `kind` server of `folder` is still importing; True once its socket exists. A sweep starts
    its servers and its warm-up together, so the warm-up's first training stage may come before they are ready:
    it waits for the imports under way rather than paying for its own."""
    import fcntl

    deadline = time.monotonic() + timeout
    while not socket_path(folder, kind).exists():
        try:
            marker = open(starting_path(folder, kind), "rb")  # noqa: SIM115  (closed below, each round)
        except FileNotFoundError:
            return False  # no such server was started
        with marker:
            try:
                fcntl.flock(marker, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # held: the server is still importing
            else:
                return socket_path(folder, kind).exists()  # free: the server is ready, or it failed
        if time.monotonic() > deadline:
            log.info("warm start: the %s server was not ready in %.0f s", kind, timeout)
            return False
        time.sleep(0.05)
    return True


# --- the stage's side -------------------------------------------------------------------------------------


def delegate(folder: str | Path, kind: str, module: str, argv: Sequence[str]) -> int | None:
    """Run stage `module` with `argv` in a child of the `kind` server whose socket is in `folder`; return its
    exit status (negative: the signal that ended it), or None, having run nothing, where no server of that
    kind answers or it refuses this process (another Python, another import-time environment)."""
    path = socket_path(folder, kind)
    if not wait_for_server(folder, kind):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    request = {"module": module, "argv": list(argv), "cwd": os.getcwd(), "path": sys.path,
               "env": {k: v for k, v in os.environ.items() if k != ENV}, "executable": sys.executable}  # fmt: skip
    with sock:
        try:
            socket.send_fds(sock, [json.dumps(request).encode()], [0, 1, 2])
            reply = json.loads(sock.recv(1 << 16) or b"{}")
        except (OSError, ValueError) as exc:
            log.info("warm start: the %s server at %s did not answer (%s); running in this process", kind, path, exc)
            return None
        if "refused" in reply:
            log.info("warm start: %s; running in this process", reply["refused"])
            return None
        log.info("warm start: running in process %s, forked from the sweep's %s server", reply["pid"], kind)
        with forwarded_signals(sock):
            end = json.loads(sock.recv(1 << 16) or b"{}")
    if "exit" not in end:
        log.error("warm start: the %s server stopped before stage %s finished; rerun the stage", kind, module)
        return 1
    return int(end["exit"])


@contextlib.contextmanager
def forwarded_signals(sock: socket.socket) -> Iterator[None]:
    """While the block runs, pass SIGINT, SIGTERM and SIGHUP on to the child (through its server), so that
    stopping the stage (Ctrl-C, DVC, a killed sweep) stops the work."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            sock.send(json.dumps({"signal": signum}).encode())

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {s: signal.signal(s, forward) for s in forwarded}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def exit_like(status: int) -> None:
    """Exit as the child did: with its status, or killed by its signal."""
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.exit(status)


def point_environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment for a sweep point's DVC run, from its launcher worker's `environ`: with the servers of
    `environ[ENV]`, their import-time variables replace the worker's. Hydra's joblib workers cap the thread
    counts of numerical libraries for themselves (OMP_NUM_THREADS, MKL_NUM_THREADS, ...); passed on, they
    would keep every stage from the servers, and differ from what the same stage gets from `dvc exp run`."""
    folder = environ.get(ENV)
    try:
        recorded = json.loads((Path(folder) / ENVIRONMENT).read_text()) if folder else None
    except (OSError, ValueError):
        recorded = None
    if recorded is None:
        return dict(environ)
    return {**{k: v for k, v in environ.items() if not IMPORT_ENV.match(k)}, **recorded}


# --- the server's side ------------------------------------------------------------------------------------


def preload(kind: str) -> None:
    """Import what the `kind` stages import at their start, the way they import it; then forget thaw's own
    modules, so that each child imports them from its stage's folder."""
    from thaw import imports

    if kind == "tensorflow":
        imports.import_tensorflow()
    elif kind == "mlflow":
        import mlflow.entities
        import mlflow.pyfunc
        import mlflow.tracking  # noqa: F401
    else:
        raise ValueError(f"warm start: no server kind {kind!r}; the kinds are {', '.join(KINDS)}")
    for name in [n for n in sys.modules if n == "thaw" or n.startswith(("thaw.", "stages"))]:
        del sys.modules[name]


def serve(path: Path, kind: str, parent: int, starting: int | None = None) -> None:
    """Serve stages at socket `path` until process `parent` (the sweep) ends; close descriptor `starting` (the
    lock that says this server is importing) once the socket accepts."""
    before = dict(os.environ)
    preload(kind)
    # What the imports set in the environment (TensorFlow sets TF2_BEHAVIOR), as a fresh stage's would.
    imported = {k: v for k, v in os.environ.items() if before.get(k) != v}
    reference = import_env(before)
    gc.collect()
    gc.freeze()  # the children share the imports' pages; the collector would copy them by touching them
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    listener.bind(str(tmp))
    listener.listen(64)
    tmp.rename(path)  # the socket appears only once it accepts: its existence means ready
    if starting is not None:
        os.close(starting)  # the last holder of the starting lock: waiting stages go on to the socket
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that SIGCHLD writes to the wake-up socket
    signal.set_wakeup_fd(wake_w.fileno())
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    try:
        while os.getppid() == parent:
            for key, _ in selector.select(timeout=1.0):
                if key.fileobj is listener:
                    conn, _ = listener.accept()
                    pid = start_child(
                        conn, kind, reference, imported, [listener, wake_r, wake_w, selector, *children.values()]
                    )
                    if pid is None:
                        conn.close()
                    else:
                        children[pid] = conn
                        selector.register(conn, selectors.EVENT_READ, pid)
                elif key.fileobj is wake_r:
                    with contextlib.suppress(BlockingIOError):
                        wake_r.recv(4096)
                else:
                    relay(key.fileobj, key.data, selector)  # type: ignore[arg-type]
            reap(children, selector)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # The sweep ended without stopping its servers (killed, or failed before its end callback): nothing uses
    # their folder any more, and nobody else would remove it.
    shutil.rmtree(path.parent, ignore_errors=True)


def relay(conn: socket.socket, pid: int, selector: selectors.BaseSelector) -> None:
    """A message from a waiting stage: a signal to pass on, or its end (the stage was killed: so is its child)."""
    try:
        message = conn.recv(1 << 16)
    except OSError:
        message = b""
    if not message:
        selector.unregister(conn)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return
    with contextlib.suppress(ProcessLookupError, ValueError, KeyError):
        os.kill(pid, int(json.loads(message)["signal"]))


def reap(children: dict[int, socket.socket], selector: selectors.BaseSelector) -> None:
    """Tell each waiting stage whose child has ended how it ended."""
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            continue
        conn = children.pop(pid)
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(conn)
        with contextlib.suppress(OSError):
            conn.send(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode())
        conn.close()


def start_child(
    conn: socket.socket, kind: str, reference: dict[str, str], imported: dict[str, str], inherited: Iterable[Closable]
) -> int | None:
    """Read a stage's request and fork its child; None where the request is refused or unreadable."""
    conn.settimeout(10)
    fds: list[int] = []
    try:
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        request = json.loads(data)
        refused = refusal(request, kind, reference)
        if refused or len(fds) != 3:
            conn.send(json.dumps({"refused": refused or "no standard streams received"}).encode())
            return None
        pid = os.fork()
        if pid == 0:
            os._exit(run_child(request, imported, fds, [conn, *inherited]))
        conn.send(json.dumps({"pid": pid}).encode())
        return pid
    except (OSError, ValueError):
        return None
    finally:
        for fd in fds:
            os.close(fd)
        conn.settimeout(None)


def refusal(request: dict, kind: str, reference: dict[str, str]) -> str | None:
    """Why a child of this server would not be what a fresh process of the stage would be, if it would not."""
    if request.get("executable") != sys.executable:
        return f"the {kind} server runs {sys.executable}, the stage {request.get('executable')}"
    wanted = import_env(request.get("env", {}))
    differ = sorted(k for k in wanted.keys() | reference.keys() if wanted.get(k) != reference.get(k))
    if differ:
        return f"the {kind} server was started with other values of {', '.join(differ)}"
    return None


def run_child(request: dict, imported: dict[str, str], fds: Sequence[int], inherited: Iterable[Closable]) -> int:
    """In the forked child: become the stage's process (streams, folder, environment, path, argv) and run its
    module as `python -m` would; return its exit status (or die of SIGINT, as Python does on Ctrl-C)."""
    try:
        signal.set_wakeup_fd(-1)
        for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for held in inherited:  # the server's sockets: the child answers to no one
            held.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update({**request["env"], **imported})
        sys.path[:] = request["path"]
        sys.argv = [request["module"], *request["argv"]]
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=stream.isatty())
        import runpy

        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException as exc:  # what Python prints for an uncaught exception, and its status
        import traceback

        traceback.print_exc()
        code = -signal.SIGINT if isinstance(exc, KeyboardInterrupt) else 1
    atexit._run_exitfuncs()  # what a process's end runs (logging's flush among them); os._exit skips it
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if code < 0:  # Python ends an uncaught Ctrl-C by dying of SIGINT, so that its caller sees the interrupt
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


# --- the sweep's side -------------------------------------------------------------------------------------


class Servers:
    """The warm-start servers of one sweep: started together, ready when `wait_ready` returns, stopped by
    `stop` (or when the process that started them ends). Stages may ask before they are ready: each waits for
    its server's imports (`wait_for_server`)."""

    def __init__(self, kinds: Sequence[str] = KINDS, env: dict[str, str] | None = None) -> None:
        """Start a server of each kind in `env` (default: this process's environment), the environment its
        stages will have: a stage whose import-time variables differ is not served."""
        import fcntl

        self.folder = Path(tempfile.mkdtemp(prefix="thaw-warm-"))  # private (0700) and short: socket paths are
        (self.folder / ENVIRONMENT).write_text(json.dumps(import_env(dict(os.environ if env is None else env))))
        self.procs: dict[str, subprocess.Popen] = {}  # limited to about 100 characters
        for kind in kinds:
            # Locked before the server exists and handed to it, so that no stage finds the marker unlocked
            # (and the server not ready) in between: a stage waits from the first moment.
            with open(starting_path(self.folder, kind), "wb") as starting:
                fcntl.flock(starting, fcntl.LOCK_EX)
                self.procs[kind] = subprocess.Popen(
                    [sys.executable, "-m", "thaw.warmstart", "--socket", str(socket_path(self.folder, kind)),
                     "--kind", kind, "--parent", str(os.getpid()), "--starting-fd", str(starting.fileno())],
                    stdin=subprocess.DEVNULL, env=env, pass_fds=[starting.fileno()],
                )  # fmt: skip

    def wait_ready(self, timeout: float = READY_S) -> list[str]:
        """Wait until every server accepts stages, as a stage does (`wait_for_server`), all within `timeout`;
        return the kinds that do (a failed server is logged and left out: its stages run in their own
        processes)."""
        deadline = time.monotonic() + timeout
        ready = [kind for kind in self.procs
                 if wait_for_server(self.folder, kind, max(0.0, deadline - time.monotonic()))]  # fmt: skip
        for kind, proc in self.procs.items():
            if kind in ready:
                continue
            if proc.poll() is not None:
                log.warning("warm start: the %s server exited with status %s; its stages import it themselves",
                            kind, proc.returncode)  # fmt: skip
            else:
                log.warning("warm start: the %s server was not ready in %.0f s; its stages import it themselves",
                            kind, timeout)  # fmt: skip
        return ready

    def ready_at(self, kind: str) -> float:
        """When the `kind` server began to accept stages (the time.time() of its socket's appearance)."""
        return socket_path(self.folder, kind).stat().st_ctime  # the rename that publishes it sets the ctime

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for path in self.folder.iterdir():
            path.unlink()
        self.folder.rmdir()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A warm-start server for a sweep's stages (started by `thaw sweep`).")
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--parent", required=True, type=int, help="serve until this process ends")
    parser.add_argument("--starting-fd", type=int, help="a locked file's descriptor, closed once serving")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `stop`: leave through serve's cleanup
    from thaw.imports import QUIET_TENSORFLOW

    for key, value in QUIET_TENSORFLOW.items():  # what stage.run sets before a stage imports anything
        os.environ.setdefault(key, value)
    serve(args.socket, args.kind, args.parent, args.starting_fd)


if __name__ == "__main__":
    main()
