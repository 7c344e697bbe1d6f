"""The command-line shell shared by every stage: named path arguments, logging, and clean failures."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from stages.datasources import DataError
from stages.keras_archive import ArchiveError
from stages.params import ConfigError, check_params_file

log = logging.getLogger("stages")

# Errors that mean "the input or the config is wrong": reported as one clear line, exit status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataError, ArchiveError, FileNotFoundError)


def parse(argv: Sequence[str] | None, doc: str | None, *names: str) -> argparse.Namespace:
    """Parse `--params` plus one required `--<name> PATH` option per name (dashes for underscores)."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    parser.add_argument("--params", default="params.yaml", help="the composed params file (default: %(default)s)")
    for name in names:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, metavar="PATH")
    args = parser.parse_args(argv)
    # Every stage checks the whole file, not only its own sections: a bad value anywhere fails at the first
    # stage that runs, before any training (it costs milliseconds). Stages that read no params need no file.
    if Path(args.params).is_file():
        check_params_file(args.params)
    return args


def run(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> None:
    """Run a stage's main; bad input or config exits with status 2 and a one-line message, no traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        main(argv)
    except USER_ERRORS as exc:
        log.error("%s", exc)
        sys.exit(2)
