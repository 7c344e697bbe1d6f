"""How the stages import their heavy libraries: TensorFlow and Keras without the integrations no stage uses
and without the C++ start-up notices; shared by the stages (thaw/stage.py) and the warm-start servers that
import them once for a sweep (thaw/warmstart.py)."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# TensorFlow's C++ start-up notices (oneDNN, absl, a harmless tf.data attribute mismatch logged as an error
# by this TensorFlow build) would bury the per-epoch lines, and MLflow's download bars the tracking line.
# Level 3 keeps them out (the few logged before TensorFlow's filter is set up, by `import_tensorflow`); Python
# errors, and the stage's own log, still show. It must be set before TensorFlow is imported (stage.run sets it), and
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
