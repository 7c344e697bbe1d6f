"""A Hydra sweeper on Optuna's ask-and-tell API (TPE by default).

Written here because the official hydra-optuna-sweeper pins optuna<3 (its 2021 API), while Optuna itself is
maintained at 4.x/5.x. It reads the search space in Hydra's override grammar, as the official one does:
`tag(log, interval(1e-5, 1e-3))` (float, log-uniform), `interval(a, b)` (float), `range(a, b)` (integer),
`choice(a, b, c)` (categorical); plain values are fixed. Trials run in batches of `n_jobs` through the
configured launcher (e.g. joblib), and each job's return value is the objective.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.thaw_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    direction: str = "maximize"
    n_trials: int = 8
    n_jobs: int = 2
    seed: int = 0
    study_name: str | None = None
    storage: str | None = None  # an Optuna storage URL to persist and resume the study; in memory if null
    params: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="thaw_optuna", node=OptunaSweeperConf, provider="thaw")
