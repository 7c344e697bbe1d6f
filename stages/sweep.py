"""sweep: Hydra's way into sweeps. Each job is one point run through the same cached DVC pipeline as
`dvc exp run` (a temporary-workspace experiment), tracked as an MLflow run nested under the sweep's parent;
the job returns the objective (default val_accuracy) to the sweeper.

    python -m stages.sweep -m unfreeze.layers=0,2,4 finetune.lr=1e-3,1e-4      # grid, 2 jobs at a time
    python -m stages.sweep -m hparams_search=optuna                           # Optuna TPE search
    python -m stages.sweep -m hydra.launcher.n_jobs=4 sweep.id=depth-lr ...   # name it, more workers
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from stages import params, tracking

log = logging.getLogger(__name__)

PIPELINE_KEYS = ("seed", *params.SECTIONS)


def pipeline_overrides(task_overrides: Sequence[str]) -> list[str]:
    """The overrides that address the pipeline's params (not the sweep's own settings or search configs)."""
    keep = []
    for line in task_overrides:
        key = line.split("=", 1)[0].lstrip("+~")
        if key.split(".", 1)[0].split("@", 1)[0] in PIPELINE_KEYS:
            keep.append(line)
    return keep


def check_pipeline_config(cfg: DictConfig) -> None:
    """Reject a bad point before it reaches DVC (same checks as the stages make)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for name, schema in params.SECTIONS.items():
        params.parse_section(name, container.get(name), schema)


def run_point(
    repo: Path, overrides: Sequence[str], sweep_id: str, name: str, objective: str, experiment: str, log_file: Path
) -> float:
    """Run one point as a DVC experiment in a temporary workspace and return its objective from MLflow."""
    cmd = ["dvc", "exp", "run", "--temp", "--name", name, "--set-param", f"tracking.sweep={sweep_id}"]
    for line in overrides:
        cmd += ["--set-param", line]
    log.info("%s: %s", name, " ".join(overrides) or "(baseline)")
    with open(log_file, "w", encoding="utf-8") as out:
        proc = subprocess.run(cmd, cwd=repo, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with status {proc.returncode}; see {log_file}")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.tracking_uri(repo))
    found = client.search_runs(
        [e.experiment_id for e in client.search_experiments(filter_string=f"name = '{experiment}'")],
        filter_string=f"tags.`dvc.experiment` = '{name}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    if not found or objective not in found[0].data.metrics:
        raise RuntimeError(f"experiment {name} finished but MLflow has no {objective!r} for it; see {log_file}")
    value = float(found[0].data.metrics[objective])
    log.info("%s: %s = %.4f", name, objective, value)
    return value


@hydra.main(version_base="1.3", config_path="../conf", config_name="sweep")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    check_pipeline_config(cfg)
    return run_point(
        repo=Path(hydra.utils.get_original_cwd()),
        overrides=pipeline_overrides(hydra_cfg.overrides.task),
        sweep_id=cfg.sweep.id,
        name=f"{cfg.sweep.id}-{hydra_cfg.job.num}",
        objective=cfg.sweep.objective,
        experiment=cfg.tracking.experiment,
        log_file=Path(hydra_cfg.runtime.output_dir) / "dvc-exp-run.log",
    )


def cli() -> None:
    # Every job must share one sweep id, so it is fixed here, once, before Hydra starts the jobs
    # (a `${now:}` interpolation would be resolved again in each launcher process).
    if not any(arg.startswith("sweep.id=") for arg in sys.argv[1:]):
        sys.argv.append(f"sweep.id={time.strftime('%Y%m%d-%H%M%S')}")
    main()


if __name__ == "__main__":
    cli()
