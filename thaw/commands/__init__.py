"""The `thaw` console command: what users run besides `dvc repro` and `dvc exp run`.

    thaw sweep -m unfreeze.layers=0,2,4 finetune.lr=1e-3,1e-4   # a Hydra sweep (thaw.commands.sweep)
    thaw leaderboard --sweep depth-lr                           # rank a sweep's runs (thaw.commands.leaderboard)
    thaw compose base=random                                    # recompose params.yaml (thaw.commands.compose)
    thaw predict --model models:/thaw@champion --input photos/ --out predictions.csv
    thaw lockcheck                                              # dvc.lock against the committed one

Each subcommand is also `python -m thaw.commands.<name>`. Subcommands import their module only when run,
so `thaw compose` never pays for MLflow or TensorFlow.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, entry function, one-line help)
COMMANDS = {
    "sweep": ("thaw.commands.sweep", "cli", "run a Hydra sweep of the pipeline (grid, Optuna; local or Ray)"),
    "leaderboard": ("thaw.commands.leaderboard", "main", "rank runs by (unfreeze.layers, finetune.lr) with intervals"),
    "compose": ("thaw.commands.compose", "main", "compose conf/ into params.yaml (after editing conf/)"),
    "predict": ("thaw.commands.predict", "main", "classify images with a model (models:/thaw@champion, a run, a file)"),
    "lockcheck": ("thaw.commands.lockcheck", "main", "how dvc.lock compares with the committed one, and why"),
}


def usage() -> str:
    lines = ["usage: thaw COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`thaw COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return
    if args[0] not in COMMANDS:
        sys.exit(f"thaw: unknown command {args[0]!r}\n\n{usage()}")
    module, function, _ = COMMANDS[args[0]]
    getattr(importlib.import_module(module), function)(args[1:])
