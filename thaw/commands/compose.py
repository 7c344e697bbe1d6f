"""Compose conf/ with Hydra into params.yaml, byte for byte as `dvc exp run` does (DVC's Hydra composition).

Run it after editing conf/ so that a plain `dvc repro` sees the change:
    thaw compose                      # the defaults
    thaw compose base=random          # any Hydra overrides
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from thaw.artifacts import write_text


def compose_params(config_dir: str | Path, overrides: Sequence[str] = (), config_name: str = "config") -> str:
    """The YAML text of the composed, resolved config."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(cfg)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="thaw compose", description=__doc__.strip().splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. unfreeze.layers=4")
    parser.add_argument("--config-dir", default="conf")
    parser.add_argument("--out", default="params.yaml")
    args = parser.parse_args(argv)
    write_text(args.out, compose_params(args.config_dir, args.overrides))


if __name__ == "__main__":
    main()
