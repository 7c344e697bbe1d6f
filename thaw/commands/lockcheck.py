"""`thaw lockcheck`: after `dvc repro`, one line on how the workspace's `dvc.lock` compares with the committed
one, and why. `make repro` ends with it.

A clone's `dvc repro` writes the committed `dvc.lock` byte for byte on the kind of machine that wrote it
(`tests/lock_machine.json`). A CPU of another kind trains to other last bits (TensorFlow's kernels are
picked by instruction set and cache size at run time; docs/reproducibility.md), so there the hashes of the
trained files change and nothing else may: code, params, inputs and the data stages (`ingest`, `normalize`)
must match exactly. This command tells those cases apart, so a modified `dvc.lock` reads as "another
machine, correct run" or as "stale lock / not reproducible", never as either. DVC compares a lock with the
workspace, not with another lock, hence these few lines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

MACHINE_FREE = ("ingest", "normalize")  # stages whose outputs no floating-point kernel computes


def lock_entries(lock: dict) -> dict[str, object]:
    """Every stage's command, params, and the md5 of each dependency and output in a dvc.lock, keyed
    "stage: path" ("stage: cmd" and "stage: params" for the first two)."""
    entries: dict[str, object] = {}
    for stage, body in (lock or {}).get("stages", {}).items():
        entries[f"{stage}: cmd"], entries[f"{stage}: params"] = body.get("cmd"), body.get("params")
        for entry in body.get("deps", []) + body.get("outs", []):
            entries[f"{stage}: {entry['path']}"] = entry.get("md5")
    return entries


def differing(a: str, b: str) -> list[str]:
    """The entries (`lock_entries` keys) in which two dvc.lock texts differ."""
    old, new = lock_entries(yaml.safe_load(a)), lock_entries(yaml.safe_load(b))
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def machine_dependent(keys: list[str], lock: dict) -> list[str]:
    """The lock entries among `keys` that are files some training stage computed (an output of a stage other
    than MACHINE_FREE's, a dependency on one, or a folder that holds one): the entries another kind of machine
    may write other bits to."""
    trained = {out["path"] for name, body in lock["stages"].items() if name not in MACHINE_FREE
               for out in body.get("outs", [])}  # fmt: skip
    return [key for key in keys if (path := key.partition(": ")[2]) in trained
            or any(path.startswith(f"{out}/") or out.startswith(f"{path}/") for out in trained)]  # fmt: skip


def describe(kind: dict) -> str:
    cpu = kind.get("cpu", {})
    return f"{cpu.get('vendor_id', '?')} family {cpu.get('cpu family', '?')} model {cpu.get('model', '?')}"


def verdict(committed: str, produced: str, recorded: dict, here: dict) -> tuple[bool, str]:
    """(ok, the line to print) for the committed and the produced dvc.lock texts and the kinds of machine
    that wrote them."""
    differ = differing(committed, produced)
    if not differ:
        return True, "thaw: dvc.lock is the committed one, byte for byte"
    other = sorted(set(differ) - set(machine_dependent(differ, yaml.safe_load(committed))))
    if other:
        stages = sorted({key.partition(": ")[0] for key in other})
        return False, (f"thaw: dvc.lock differs from the committed one in code, params, inputs or data "
                       f"({', '.join(other[:4])}{' ...' if len(other) > 4 else ''}): stages "
                       f"{', '.join(stages)} ran on other inputs than were committed; commit the new dvc.lock "
                       "if you changed them, or `git checkout dvc.lock conf/ params.yaml` and `dvc repro` to "
                       "return to the committed pipeline")  # fmt: skip
    if here == recorded:
        return False, (f"thaw: dvc.lock differs from the committed one in {len(differ)} trained files although "
                       f"this is the kind of machine that wrote it ({describe(here)}): an output is not "
                       "byte-reproducible, or dvc.lock was committed from another kind without updating "
                       "tests/lock_machine.json (`python -m thaw.commands.machine > tests/lock_machine.json`)")  # fmt: skip
    return True, (f"thaw: dvc.lock changed only in the hashes of {len(differ)} trained files: this CPU "
                  f"({describe(here)}) is another kind than the one that wrote the committed lock "
                  f"({describe(recorded)}) and trains to other last bits; code, params, inputs and data stages "
                  "match, so the run is correct (docs/reproducibility.md#byte-reproducible-outputs)")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="thaw lockcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=Path("dvc.lock"), help="the lock `dvc repro` wrote")
    parser.add_argument("--recorded", type=Path, default=Path("tests/lock_machine.json"),
                        help="the kind of machine that wrote the committed lock")  # fmt: skip
    parser.add_argument("--rev", default="HEAD", help="the git revision holding the committed lock")
    parser.add_argument("--strict", action="store_true", help="exit 1 unless the run is correct")
    args = parser.parse_args(argv)
    from thaw.commands import machine

    shown = subprocess.run(["git", "show", f"{args.rev}:{args.lock.as_posix()}"], capture_output=True, text=True)
    if shown.returncode:
        print(f"thaw: no committed {args.lock} at {args.rev} to compare with", file=sys.stderr)
        return
    recorded = json.loads(args.recorded.read_text()) if args.recorded.is_file() else {}
    ok, line = verdict(shown.stdout, args.lock.read_text(), recorded, machine.kind())
    print(line)
    if args.strict and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
