"""A sweep the lightning-hydra-template way: one Hydra multirun, each job run in this process (Hydra's basic
launcher), recomputing the whole pipeline from the data (nothing cached between jobs) with the stages' own
functions, and logging its params and metrics to MLflow as that template's MLflow logger does.

    cd PROJECT && python benchmarks/peers/hydra_multirun.py -m unfreeze.layers=0,2,4 finetune.lr=1e-3,1e-4

Composes the project's conf/ (the same config `thaw compose` and `dvc exp run` compose). Prints one JSON line
per job: its point, val and test accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from inprocess import POINT, UPSTREAM, Pipeline, use_project_code
from omegaconf import DictConfig, OmegaConf

ROOT = Path.cwd()
use_project_code(ROOT)


@hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="config")
def main(cfg: DictConfig) -> float:
    import mlflow
    from hydra.core.hydra_config import HydraConfig

    from thaw.config import flatten

    params_file = Path(HydraConfig.get().runtime.output_dir) / "params.yaml"
    params_file.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pipeline = Pipeline(ROOT)
    pipeline.inputs(params_file)
    pipeline.run(UPSTREAM + POINT, params_file)
    metrics = pipeline.metrics("finetune")

    mlflow.set_tracking_uri(f"sqlite:///{ROOT / 'peer-mlflow.db'}")
    mlflow.set_experiment("hydra-peer")
    with mlflow.start_run():
        mlflow.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
    point = {"layers": cfg.unfreeze.layers, "lr": cfg.finetune.lr, "val_accuracy": metrics["val_accuracy"],
             "test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"]}  # fmt: skip
    print("PEER_POINT " + json.dumps(point), flush=True)
    return float(metrics["val_accuracy"])


if __name__ == "__main__":
    main()
