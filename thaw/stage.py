"""The shell every DVC stage entry point shares: named path arguments, the config read once, logging, and
clean failures (a bad input or config is one clear line and exit status 2, never a traceback)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from thaw.artifacts import write_json
from thaw.config import Params, load
from thaw.errors import USER_ERRORS

log = logging.getLogger("thaw")


def parse(argv: Sequence[str] | None, doc: str | None, *names: str) -> tuple[argparse.Namespace, Params]:
    """Parse `--params` plus one required `--<name> PATH` option per name (dashes for underscores); read and
    validate the whole params file once and return it typed.

    Every stage checks the whole file, not only its own sections: a bad value anywhere fails at the first
    stage that runs, before any training (it costs milliseconds, and no TensorFlow).
    """
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    parser.add_argument("--params", default="params.yaml", help="the composed params file (default: %(default)s)")
    for name in names:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, metavar="PATH")
    args = parser.parse_args(argv)
    return args, load(args.params)


# TensorFlow's C++ start-up notices (oneDNN, absl, a harmless tf.data attribute mismatch logged as an error
# by this TensorFlow build) would bury the per-epoch lines, and MLflow's download bars the tracking line.
# Level 3 keeps them out (the few logged before TensorFlow's filter is set up, by `import_tensorflow`); Python
# errors, and the stage's own log, still show. It must be set before TensorFlow is imported, hence here, and
# the stages import TensorFlow only inside `main`, after `parse` has checked the config. A value set outside
# wins.
QUIET_TENSORFLOW = {"TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


# Keras 3 imports these at start-up whenever they are installed, for integrations no stage uses (pandas
# inputs, scikit-learn wrappers, matplotlib image galleries), each behind `except ImportError`. They are in
# the environment for other stages (report draws with matplotlib, MLflow needs pandas, the default data comes
# from scikit-learn), and cost a training stage about 2.2 of its 8-9 s TensorFlow import on 2 cores
# (`python -X importtime`; benchmarks/stage_costs.py). No Keras setting turns them off, hence hiding them.
KERAS_EXTRAS = ("sklearn", "pandas", "matplotlib")


def import_tensorflow() -> None:
    """Import TensorFlow and Keras for a training stage without Keras' optional integrations (KERAS_EXTRAS),
    and without the C++ notices TF_CPP_MIN_LOG_LEVEL asks to leave out (`quiet_native_stderr`).

    They are hidden only while Keras loads and stay importable afterwards (Keras then treats them as absent:
    no `keras.wrappers.SKLearnClassifier`, no DataFrame inputs). A module already imported is left alone.
    """
    hidden = [name for name in KERAS_EXTRAS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # `import name` raises ImportError, the path Keras guards
    try:
        with quiet_native_stderr(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")):
            import keras  # noqa: F401  (imports TensorFlow, its backend)
            import tensorflow  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


# An absl log line ("I0000 00:00:1796171620.938124    2356 port.cc:153] ..."): severity, date, time (before
# absl is set up, the clock reads as seconds since the epoch), thread, file:line
ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ ]+:\d+\] ")
ABSL_PREINIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


@contextlib.contextmanager
def quiet_native_stderr(min_level: str) -> Iterator[None]:
    """Leave out of stderr, while the block runs, the absl log lines below `min_level` (TF_CPP_MIN_LOG_LEVEL:
    0 keeps all, 1 drops INFO, 2 also WARNING, 3 also ERROR) and absl's banner about them; pass on the rest.

    TensorFlow logs some notices through absl before its own filter is set up (the oneDNN line on CPUs where
    oneDNN is on by default: AVX512-VNNI, BF16, AMX), so TF_CPP_MIN_LOG_LEVEL alone does not hide them. They
    are written by C++ to file descriptor 2, hence the descriptor is captured here, not `sys.stderr`.
    """
    level = int(min_level) if min_level.isdigit() else 0
    if level == 0:
        yield
        return
    dropped = "IWE"[:level]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                absl = ABSL_LINE.match(line)
                if not (line.startswith(ABSL_PREINIT) or (absl and absl[1] in dropped)):
                    sys.stderr.write(line)
            sys.stderr.flush()


def run(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> None:
    """Run a stage's main; bad input or config exits with status 2 and a one-line message, no traceback."""
    for key, value in QUIET_TENSORFLOW.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    start = time.time()
    try:
        main(argv)
    except USER_ERRORS as exc:
        log.error("%s", exc)
        sys.exit(2)
    # Run as `python -m stages.<name>`, main's module is "__main__"; its real name is in its spec.
    spec = getattr(sys.modules.get(main.__module__), "__spec__", None)
    module = spec.name if spec else main.__module__
    record_timing(module, start, time.time())


# When each stage ran, for `track` to give the MLflow run its real start, end and per-stage seconds. Not a
# DVC output: a clock reading must not make outputs differ between two runs (git-ignored, like the run id).
TIMINGS = Path("reports/timings")


def record_timing(module: str, start: float, end: float, folder: Path = TIMINGS) -> None:
    name = module.rsplit(".", 1)[-1].replace("_", "-")
    if name in ("input", "track", "__main__"):
        return
    write_json(folder / f"{name}.json", {"stage": name, "start": start, "end": end})
