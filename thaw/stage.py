"""The shell every DVC stage entry point shares: named path arguments, the config read once, logging, and
clean failures (a bad input or config is one clear line and exit status 2, never a traceback)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from thaw.artifacts import write_json
from thaw.config import Params, load
from thaw.errors import USER_ERRORS
from thaw.imports import QUIET_TENSORFLOW

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


def run(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> None:
    """Run a stage's main; bad input or config exits with status 2 and a one-line message, no traceback."""
    for key, value in QUIET_TENSORFLOW.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Run as `python -m stages.<name>`, main's module is "__main__"; its real name is in its spec.
    spec = getattr(sys.modules.get(main.__module__), "__spec__", None)
    module = spec.name if spec else main.__module__
    start = time.time()
    try:
        main(argv)
    except USER_ERRORS as exc:
        log.error("%s", exc)
        sys.exit(2)
    record_timing(module, start, time.time())


# When each stage ran, for `track` to give the MLflow run its real start, end and per-stage seconds. Not a
# DVC output: a clock reading must not make outputs differ between two runs (git-ignored, like the run id).
TIMINGS = Path("reports/timings")


def record_timing(module: str, start: float, end: float, folder: Path = TIMINGS) -> None:
    name = module.rsplit(".", 1)[-1].replace("_", "-")
    if name in ("input", "track", "__main__"):
        return
    write_json(folder / f"{name}.json", {"stage": name, "start": start, "end": end})
