"""sweep: Hydra's way into sweeps. Each job is one point run through the same cached DVC pipeline as
`dvc exp run` (a temporary-workspace experiment), tracked as an MLflow run nested under the sweep's parent;
the job returns the objective (default val_accuracy) to the sweeper.

    thaw sweep -m unfreeze.layers=0,2,4 finetune.lr=1e-3,1e-4      # grid, 2 jobs at a time
    thaw sweep -m hparams_search=optuna                           # Optuna TPE search
    thaw sweep -m hydra.launcher.n_jobs=4 sweep.id=depth-lr ...   # name it, more workers
    thaw sweep -m hydra/launcher=cluster sweep.share=true ...      # on a Ray cluster

The last one spreads the points over a Ray cluster (Hydra's Ray launcher). Each machine runs its points in its
own clone of the project (`THAW_REPO` in the environment of its `ray start`, else the submitting folder), with
a shared DVC remote and tracking server: see the README's "Sweeps across machines".
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from thaw import config, store, tracking
from thaw.sweeps import runs, stats

log = logging.getLogger(__name__)

PIPELINE_KEYS = ("seed", *config.SECTIONS)
REPO_ENV = "THAW_REPO"  # on a sweep worker: where this machine's clone of the project is

# Hydra's joblib launcher runs each point in a loky worker that caps the thread pools of numerical libraries
# for itself (joblib's MAX_NUM_THREADS_VARS and ENABLE_IPC; tests/test_commands.py holds the list to joblib's).
# Passed on to the point's `dvc exp run`, the caps would run its stages on other thread counts than the same
# stages get from `dvc repro` (one OpenMP thread for oneDNN: slower, and not the configuration `dvc repro`
# computed). So the entry point records the sweep's own values once (SWEEP_THREADS, before Hydra starts a
# worker) and each point gets them back.
THREAD_CAPS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS", "ENABLE_IPC")  # fmt: skip
SWEEP_THREADS = "THAW_SWEEP_THREADS"


def record_threads(environ: MutableMapping[str, str]) -> None:
    """Record in `environ` the sweep's own values of THREAD_CAPS (null: unset), for `point_environment`."""
    environ[SWEEP_THREADS] = json.dumps({key: environ.get(key) for key in THREAD_CAPS})


def point_environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment of a point's `dvc exp run`: its worker's, with the thread settings the sweep recorded
    in place of the worker's caps. Without a record (a cluster worker) the worker's own, unchanged."""
    recorded = environ.get(SWEEP_THREADS)
    if recorded is None:
        return dict(environ)
    env = {key: value for key, value in environ.items() if key not in (*THREAD_CAPS, SWEEP_THREADS)}
    env.update({key: value for key, value in json.loads(recorded).items() if value is not None})
    return env


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
    config.parse({key: container[key] for key in PIPELINE_KEYS if key in container}, "the sweep's point")


def run_point(
    repo: Path,
    overrides: Sequence[str],
    sweep_id: str,
    name: str,
    objective: str,
    experiment: str,
    log_file: Path,
    tracking: store.Store,
    env: Mapping[str, str],
    share_to: str | None = None,
) -> float:
    """Run one point as a DVC experiment in a temporary workspace, its commands in `env`, and return its
    objective from the `tracking` store.

    With `share_to` (a git remote; `sweep.share`), the point may run in any machine's clone: it first fetches
    the warm-up's run-cache from the DVC remote, so the upstream stages are restored rather than retrained,
    and afterwards pushes its experiment (git ref to `share_to`, outputs to the DVC remote) for the team.
    """
    uri = tracking.uri
    if share_to and not uri.startswith(("http://", "https://")):
        raise RuntimeError(
            f"sweep.share=true needs a tracking server that every machine reaches, but the store of {repo} is "
            f"{store.redact(uri)} (MLFLOW_TRACKING_URI unset or not a server): set it to http://HOST:PORT"
        )
    # --wait-for-lock: `exp run` holds the repo's lock while it stashes its params and again while it collects
    # its results; DVC's default is to give up after 3 s, which parallel points on busy cores can exceed.
    run = ["dvc", "--wait-for-lock", "exp", "run", "--temp", "--name", name,
           "--set-param", f"tracking.sweep={sweep_id}"]  # fmt: skip
    for line in overrides:
        run += ["--set-param", line]
    steps = [run]
    if share_to:
        # `fetch --run-cache` brings the run-cache's entries but not their outputs; `--pull` makes each stage
        # found there download its outputs. --wait-for-lock: points sharing a clone take turns at its lock.
        steps = [["dvc", "--wait-for-lock", "fetch", "--run-cache"], [*run, "--pull"],
                 ["dvc", "--wait-for-lock", "exp", "push", share_to, name]]  # fmt: skip
    log.info("%s: %s (in %s)", name, " ".join(overrides) or "(baseline)", repo)
    with open(log_file, "w", encoding="utf-8") as out:
        for cmd in steps:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            proc = subprocess.run(cmd, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(cmd)} failed with status {proc.returncode}; its last lines:\n"
                    f"{log_tail(log_file)}\n(the whole log: {log_file})"
                )

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
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


def log_tail(path: Path, lines: int = 15) -> str:
    """The last `lines` lines of a job's log, indented, for an error message that stands on its own."""
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(f"    {line}" for line in text[-lines:])


class SweepCallback(Callback):
    """Hydra callback of `thaw sweep`: before the jobs, check the tracking store, warm the cache and open the
    sweep's parent run; after them, log the summary."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        tracking_store = store.Store.from_environ()
        root, uri = tracking_store.root, tracking_store.uri
        # A wrong server or login fails here, in seconds, before the warm-up trains anything.
        store.check_store(tracking_store, config.tracking.experiment)
        if config.sweep.warm_up:
            # Computed once here, the shared upstream stages are restored from DVC's run-cache by every point.
            log.info("warm-up: dvc repro train-head")
            start_up = time.perf_counter()
            subprocess.run(["dvc", "repro", "train-head"], cwd=root, check=True)
            log.info("warm-up: done in %.1f s", time.perf_counter() - start_up)
        if config.sweep.share:  # for points on other machines: each fetches the run-cache before it runs
            log.info("dvc push --run-cache (to the DVC remote)")
            subprocess.run(["dvc", "push", "--run-cache"], cwd=root, check=True)
        with tracking.store_lock(uri):
            client = MlflowClient(tracking_uri=uri)
            experiment_id = tracking.ensure_experiment(client, config.tracking.experiment, tracking_store.artifact_root)
            parent = runs.ensure_sweep_parent(client, experiment_id, config.sweep.id, list(config.hydra.overrides.task))
        log.info("sweep %s: parent run %s in %s", config.sweep.id, parent, uri)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        rows = runs.summarize_sweep(store.Store.from_environ().uri, config.tracking.experiment, config.sweep.id,
                               config.sweep.objective, config.tracking.registered_model)  # fmt: skip
        print(stats.format_table(rows))


# An absolute path: a relative one is resolved against the calling module, which is not this file when the
# `thaw` console command imports it.
@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[2] / "conf"), config_name="sweep")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    check_pipeline_config(cfg)
    environ = dict(os.environ)  # read once, here: the library below takes values
    repo = Path(environ.get(REPO_ENV) or hydra.utils.get_original_cwd())
    return run_point(
        repo=repo,
        overrides=pipeline_overrides(hydra_cfg.overrides.task),
        sweep_id=cfg.sweep.id,
        name=f"{cfg.sweep.id}-{hydra_cfg.job.num}",
        objective=cfg.sweep.objective,
        experiment=cfg.tracking.experiment,
        log_file=Path(hydra_cfg.runtime.output_dir) / "dvc-exp-run.log",
        tracking=store.Store.from_environ(environ, root=repo),
        env=point_environment(environ),
        share_to=cfg.sweep.git_remote if cfg.sweep.share else None,
    )


def cli(argv: Sequence[str] | None = None) -> None:
    if argv is not None:  # from the `thaw sweep` console command: Hydra reads sys.argv itself
        sys.argv = [f"{Path(sys.argv[0]).name} sweep", *argv]
    # Every job must share one sweep id, so it is fixed here, once, before Hydra starts the jobs
    # (a `${now:}` interpolation would be resolved again in each launcher process).
    if not any(arg.startswith("sweep.id=") for arg in sys.argv[1:]):
        sys.argv.append(f"sweep.id={time.strftime('%Y%m%d-%H%M%S')}")
    check_sweep_id(sys.argv[1:])
    check_cluster_address(sys.argv[1:])
    record_threads(os.environ)
    main()


SWEEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_sweep_id(args: Sequence[str]) -> None:
    """One sweep has one id, a name fit for a folder (multirun/<id>), a Git ref (<id>-<n>, the points' DVC
    experiments) and an MLflow tag. Checked before Hydra parses it: `sweep.id=a,b` would be a sweep over two
    ids, and the sweep's own config would then have none (OmegaConf's bare MissingMandatoryValue)."""
    for arg in args:
        if arg.startswith("sweep.id="):
            value = arg.split("=", 1)[1]
            if not SWEEP_ID.fullmatch(value):
                raise SystemExit(
                    f"thaw sweep: sweep.id={value!r} is not a sweep name: one name of letters, digits, '.', '_' "
                    "and '-', starting with a letter or digit (e.g. sweep.id=depth-lr); to compare sweeps, run "
                    "one per id"
                )


def check_cluster_address(args: Sequence[str]) -> None:
    """A sweep joins a Ray cluster only at an address given on purpose: `ray.init(address="auto")` would join
    whatever cluster this machine happens to belong to, and send it the project's code and credentials."""
    if "hydra/launcher=cluster" not in args:
        return
    if any(arg.startswith("hydra.launcher.ray.init.address=") and arg.split("=", 1)[1] not in ("", "auto", "null")
           for arg in args):  # fmt: skip
        return
    raise SystemExit(
        "thaw sweep: hydra/launcher=cluster needs the Ray head's address, given explicitly: add "
        "hydra.launcher.ray.init.address=HOST:6379 (a head on your private network; see docs/scaling.md)"
    )


if __name__ == "__main__":
    cli()
