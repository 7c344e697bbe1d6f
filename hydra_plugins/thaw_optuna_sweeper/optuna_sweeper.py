"""The sweeper itself; see the package docstring for why it exists."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def to_distribution(override: Override) -> optuna.distributions.BaseDistribution:
    """An Optuna distribution from a Hydra sweep override."""
    value = override.value()
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int) and "float" not in value.tags:
            return optuna.distributions.IntDistribution(value.start, value.end, log=log_scale)
        return optuna.distributions.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(v, int) for v in (start, stop, step)):
            values = range(int(start), int(stop), int(step))
            return optuna.distributions.IntDistribution(values[0], values[-1], step=int(step))
        return optuna.distributions.CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(list(override.sweep_iterator()))
    raise ValueError(f"{override.input_line}: not a search space; use interval(), range() or choice()")


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        direction: str,
        n_trials: int,
        n_jobs: int,
        seed: int,
        study_name: str | None,
        storage: str | None,
        params: dict[str, Any],
    ) -> None:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction = {direction!r}: expected maximize or minimize")
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"hydra.sweeper.n_trials = {n_trials}, n_jobs = {n_jobs}: both must be >= 1")
        self.direction, self.n_trials, self.n_jobs, self.seed = direction, n_trials, n_jobs, seed
        self.study_name, self.storage = study_name, storage
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def search_space(self, arguments: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
        """Distributions for the swept keys, and the fixed overrides (command line wins over config)."""
        parser = OverridesParser.create()
        lines = [f"{key}={value}" for key, value in self.params.items()]
        overrides = {o.get_key_element(): o for o in parser.parse_overrides([*lines, *arguments])}
        space = {key: to_distribution(o) for key, o in overrides.items() if o.is_sweep_override()}
        fixed = [o.input_line for o in overrides.values() if not o.is_sweep_override()]
        return space, fixed

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        space, fixed = self.search_space(arguments)
        study = optuna.create_study(
            direction=self.direction,
            sampler=optuna.samplers.TPESampler(seed=self.seed),
            study_name=self.study_name,
            storage=self.storage,
            load_if_exists=True,
        )
        log.info("Optuna study %s: %d trials, %d at a time, over %s", study.study_name, self.n_trials, self.n_jobs,
                 {k: repr(v) for k, v in space.items()})  # fmt: skip
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        returns, failed, done = [], [], 0
        while done < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [[*fixed, *(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in t.params.items())]
                     for t in trials]  # fmt: skip
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=done)
            for trial, overrides, result in zip(trials, batch, results, strict=True):
                if result.status == JobStatus.COMPLETED:
                    study.tell(trial, float(result.return_value))
                else:  # the search goes on; the sweep still ends in an error that names this trial
                    log.warning("trial %d failed: %s", trial.number, result._return_value)
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    failed.append(f"trial {trial.number} ({' '.join(overrides)}): {result._return_value}")
            returns.append(results)
            done += len(trials)

        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not completed:
            raise RuntimeError(f"all {len(study.trials)} trials failed; see the job logs under {sweep_dir}")
        best = study.best_trial
        summary = {"name": "optuna", "best_params": best.params, "best_value": best.value, "trials": len(study.trials),
                   "failed_trials": len(failed)}  # fmt: skip
        OmegaConf.save(OmegaConf.create(summary), sweep_dir / "optimization_results.yaml")
        log.info("best: %s -> %s", best.params, best.value)
        if failed:  # like Hydra's own sweepers: a sweep with a failed job fails (here, after the search is done)
            raise RuntimeError(f"{len(failed)} of {len(study.trials)} trials failed:\n" + "\n".join(failed))
        return returns
