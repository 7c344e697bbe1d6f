"""Sweeps: the Optuna sweeper's search space, override filtering, the leaderboard, and MLflow under
parallel writers (4 processes at once into one fresh SQLite store)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from hydra_plugins.thaw_optuna_sweeper.optuna_sweeper import OptunaSweeper, to_distribution
from thaw import tracking
from thaw.commands.sweep import pipeline_overrides, run_point
from thaw.store import Store
from thaw.sweeps import runs


def history(epochs: int = 6, head_epochs: int = 3, best: float = 0.9) -> list[dict]:
    return [
        {"epoch": e, "phase": "head" if e <= head_epochs else "finetune", "loss": 1 / e, "accuracy": e / 10,
         "val_loss": 1 / e, "val_accuracy": best * e / epochs}
        for e in range(1, epochs + 1)
    ]  # fmt: skip


def log_point(
    uri: str,
    root: Path,
    i: int,
    layers: int,
    lr: float,
    best: float,
    sweep: str | None,
    seed: int = 42,
    rows: int | None = None,
) -> str:
    artifact = root / f"trace{i}.md"
    artifact.write_text(f"point {i}")
    final = {"test_accuracy": best - 0.01, "head_test_accuracy": 0.8}
    if rows:
        final.update(val_rows=rows, test_rows=rows)
    record = tracking.RunRecord(
        experiment="thaw",
        run_name=f"point-{i}",
        params={"unfreeze.layers": layers, "finetune.lr": lr, "tracking.sweep": sweep, "seed": seed},
        history=history(best=best),
        final_metrics=final,
        tags={},
        artifacts={"report": [artifact]},
    )
    return tracking.log_run(uri, record, f"variant-{i}", artifact_root=root / "mlartifacts", sweep=sweep)["run_id"]


def _parallel_point(args: tuple[str, str, int]) -> str:
    uri, root, i = args
    return log_point(uri, Path(root), i, layers=i % 3, lr=10.0 ** -(3 + i % 2), best=0.5 + i / 10, sweep="par")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("finetune.lr=tag(log, interval(1e-5, 1e-3))", optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)),
        ("finetune.lr=interval(0.1, 0.5)", optuna.distributions.FloatDistribution(0.1, 0.5)),
        ("unfreeze.layers=range(0, 5)", optuna.distributions.IntDistribution(0, 4)),
        ("unfreeze.layers=range(0, 5, 2)", optuna.distributions.IntDistribution(0, 4, step=2)),
        ("unfreeze.layers=choice(1, 3)", optuna.distributions.CategoricalDistribution([1, 3])),
    ],
)
def test_search_space_grammar_maps_to_optuna(line, expected):
    (override,) = OverridesParser.create().parse_overrides([line])
    assert to_distribution(override) == expected


def test_a_fixed_value_is_not_a_search_space():
    (override,) = OverridesParser.create().parse_overrides(["finetune.lr=0.1"])
    with pytest.raises(ValueError, match="not a search space"):
        to_distribution(override)


class ScriptedLauncher:
    """Stands in for Hydra's launcher: returns each job's objective, or fails the jobs named in `fail`."""

    def __init__(self, fail: set[int]) -> None:
        self.fail, self.launched = fail, []

    def launch(self, batch, initial_job_idx):
        returns = []
        for i, overrides in enumerate(batch, start=initial_job_idx):
            self.launched.append(overrides)
            ret = JobReturn(overrides=overrides, status=JobStatus.FAILED if i in self.fail else JobStatus.COMPLETED)
            ret._return_value = RuntimeError(f"job {i} broke") if i in self.fail else 0.1 * (i + 1)
            returns.append(ret)
        return returns


def optuna_sweeper(tmp_path: Path, fail: set[int], n_trials: int = 4) -> tuple[OptunaSweeper, ScriptedLauncher]:
    sweeper = OptunaSweeper("maximize", n_trials, 2, 0, None, None, {"unfreeze.layers": "range(0, 5)"})
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweeper.launcher = launcher = ScriptedLauncher(fail)
    sweeper.validate_batch_is_legal = lambda batch: None  # Hydra's check composes configs: no conf/ here
    return sweeper, launcher


def test_a_failed_trial_does_not_stop_the_search_but_fails_the_sweep_by_name(tmp_path):
    sweeper, launcher = optuna_sweeper(tmp_path, fail={1})
    with pytest.raises(
        RuntimeError, match=r"1 of 4 trials failed:\ntrial 1 \(seed=7 unfreeze\.layers=\d\): job 1 broke"
    ):
        sweeper.sweep(["seed=7"])
    assert len(launcher.launched) == 4 and all(o[0] == "seed=7" for o in launcher.launched)
    result = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert result.failed_trials == 1 and result.best_value == pytest.approx(0.4)  # the search's results are kept


def test_a_sweep_whose_trials_all_fail_says_so(tmp_path):
    sweeper, _ = optuna_sweeper(tmp_path, fail={0, 1}, n_trials=2)
    with pytest.raises(RuntimeError, match="all 2 trials failed"):
        sweeper.sweep([])
    assert not (tmp_path / "optimization_results.yaml").exists()


def test_a_points_failed_dvc_run_is_reported_with_its_log(tmp_path):
    """Not a DVC repository: `dvc exp run` fails, and the error quotes the log's last lines, so a failure in a
    machine's temp folder (or in CI) can be read without the log file."""
    log_file = tmp_path / "dvc-exp-run.log"
    with pytest.raises(RuntimeError, match=r"(?s)failed with status \d+; its last lines:\n.*not inside of a DVC"):
        run_point(
            tmp_path,
            ["unfreeze.layers=1"],
            "s",
            "s-0",
            "val_accuracy",
            "thaw",
            log_file,
            tracking=Store.from_environ({}, root=tmp_path),
            env=dict(os.environ),
        )
    assert "dvc --wait-for-lock exp run --temp" in log_file.read_text()


def test_only_pipeline_overrides_reach_dvc():
    task = ["hparams_search=optuna", "sweep.id=x", "unfreeze.layers=2", "finetune.lr=0.001", "base=random", "seed=3"]
    assert pipeline_overrides(task) == ["unfreeze.layers=2", "finetune.lr=0.001", "base=random", "seed=3"]


def test_four_parallel_writers_lose_no_run_and_no_metric(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # fresh: the writers also race to create the schema
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        run_ids = pool.map(_parallel_point, [(uri, str(tmp_path), i) for i in range(4)])
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("thaw")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    for run_id in run_ids:
        assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1, 2, 3, 4, 5, 6]
        assert [m.step for m in client.get_metric_history(run_id, "phase")] == [1, 2, 3, 4, 5, 6]
        assert {a.path for a in client.list_artifacts(run_id, "report")} == {f"report/trace{run_ids.index(run_id)}.md"}


def test_summary_nests_points_and_logs_best_leaderboard_and_heatmap(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = [(0, 1e-3, 0.70), (0, 1e-4, 0.75), (2, 1e-3, 0.90), (2, 1e-4, 0.80)]
    ids = [log_point(uri, tmp_path, i, layers, lr, best, sweep="grid") for i, (layers, lr, best) in enumerate(grid)]
    log_point(uri, tmp_path, 9, 4, 1e-3, 0.99, sweep=None)  # not in the sweep: must not be ranked

    rows = runs.summarize_sweep(uri, "thaw", "grid")

    assert [r["run"] for r in rows] == ["point-2", "point-3", "point-1", "point-0"]
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name("thaw").experiment_id
    parent_id = tracking.find_sweep_parent(client, experiment_id, "grid")
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["best.unfreeze.layers"] == "2"
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(0.90)
    assert parent.data.tags["thaw.best_run_id"] == ids[2]
    for run_id, (layers, lr, _) in zip(ids, grid, strict=True):
        tags = client.get_run(run_id).data.tags
        assert tags[tracking.PARENT_TAG] == parent_id
        assert tags["thaw.overrides"] == f"finetune.lr={lr} unfreeze.layers={layers}"
    summary = {a.path for a in client.list_artifacts(parent_id, "summary")}
    assert summary == {"summary/leaderboard.md", "summary/leaderboard.csv", "summary/heatmap.png"}
    heatmap = Path(client.download_artifacts(parent_id, "summary/heatmap.png", str(tmp_path / "dl")))
    assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and heatmap.stat().st_size > 5000

    # A point tracked after the parent exists is nested at once.
    late = log_point(uri, tmp_path, 5, 4, 1e-4, 0.6, sweep="grid")
    assert client.get_run(late).data.tags[tracking.PARENT_TAG] == parent_id


def test_leaderboard_cli_prints_the_sweep_ranked(tmp_path, capsys, monkeypatch):
    from thaw.commands import leaderboard

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for i, best in enumerate((0.6, 0.8)):
        log_point(uri, tmp_path, i, i, 1e-3, best, sweep="cli")
    leaderboard.main(["--sweep", "cli", "--tracking-uri", uri])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["rank", "run", "unfreeze.layers", "finetune.lr"]
    assert lines[2].split()[:2] == ["1", "point-1"] and lines[3].split()[:2] == ["2", "point-0"]
    with pytest.raises(SystemExit, match="no experiment 'other'"):
        leaderboard.main(["--experiment", "other", "--tracking-uri", uri])


def test_seeds_of_one_cell_are_grouped_with_intervals_and_the_near_best_marked(tmp_path):
    """Three seeds per (layers, lr) cell: ranked by the mean validation accuracy, each with its t-interval;
    cells whose interval overlaps the best's are marked; test accuracy never decides the rank."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cells = {(2, 1e-3): (0.90, 0.92, 0.94), (2, 1e-4): (0.89, 0.91, 0.93), (0, 1e-3): (0.60, 0.61, 0.62)}
    i = 0
    for (layers, lr), values in cells.items():
        for seed, best in zip((1, 2, 3), values, strict=True):
            log_point(uri, tmp_path, i, layers, lr, best, sweep="seeds", seed=seed)
            i += 1
    rows = runs.summarize_sweep(uri, "thaw", "seeds")
    assert [(r["unfreeze.layers"], r["finetune.lr"], r["seeds"]) for r in rows] == [
        ("2", "0.001", 3), ("2", "0.0001", 3), ("0", "0.001", 3)]  # fmt: skip
    assert rows[0]["val_accuracy"].startswith("0.920 [0.870, 0.970]")  # mean 0.92, t(2) = 4.303, sd 0.02
    assert [r["near_best"] for r in rows] == ["yes", "yes", ""]
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(tracking.find_sweep_parent(client, client.get_experiment_by_name("thaw").experiment_id,
                                                       "seeds"))  # fmt: skip
    assert parent.data.metrics["best_cell_val_accuracy_mean"] == pytest.approx(0.92)
    assert parent.data.metrics["best_cell_val_accuracy_low"] == pytest.approx(0.8703, abs=1e-3)
    assert parent.data.params["best.seeds"] == "3"
    assert parent.data.tags["thaw.indistinguishable_from_best"] == (
        "unfreeze.layers=2 finetune.lr=0.001; unfreeze.layers=2 finetune.lr=0.0001"
    )


def test_a_single_seed_gets_a_binomial_interval_and_lrs_read_well(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_point(uri, tmp_path, 0, 1, 7.50195444362012e-05, 0.95, sweep="one", rows=200)
    log_point(uri, tmp_path, 1, 2, 0.001, 0.70, sweep="one", rows=200)
    rows = runs.summarize_sweep(uri, "thaw", "one")
    assert rows[0]["finetune.lr"] == "7.5e-05"
    assert rows[0]["val_accuracy"] == "0.950 [0.910, 0.973]"  # Wilson on 200 validation rows
    assert [r["near_best"] for r in rows] == ["yes", ""]


def test_a_sweep_refuses_an_unreachable_store_before_its_warm_up_trains(monkeypatch: pytest.MonkeyPatch):
    """The store probe runs once per sweep, before `dvc repro train-head`: a wrong server fails in seconds."""
    import subprocess

    from omegaconf import OmegaConf

    from thaw.commands.sweep import SweepCallback
    from thaw.errors import ConfigError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a} despite the store"))
    cfg = OmegaConf.create({"sweep": {"id": "s", "warm_up": True, "share": False},
                            "tracking": {"experiment": "thaw"}, "hydra": {"overrides": {"task": []}}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1:9.*unreachable|unreachable.*127\.0\.0\.1:9"):
        SweepCallback().on_multirun_start(cfg)


def test_the_statistics_rank_plain_points_by_validation_never_by_test():
    """thaw.sweeps.stats takes plain points (no MLflow): cells over seeds, ranked by mean validation accuracy,
    the cells whose interval overlaps the best's marked, test accuracy shown but never ranked by."""
    from thaw.sweeps.stats import Point, cells, leaderboard_rows

    def point(run: str, layers: str, lr: str, val: float, test: float) -> Point:
        metrics = {"val_accuracy": val, "test_accuracy": test, "val_rows": 200, "test_rows": 200}
        return Point(run, run, "s", layers, lr, metrics, {"unfreeze.layers": layers, "finetune.lr": lr})

    ranked = [point("a1", "0", "0.001", 0.70, 0.99), point("a2", "0", "0.001", 0.71, 0.99),  # best test
              point("b1", "2", "0.0001", 0.95, 0.80), point("b2", "2", "0.0001", 0.96, 0.80),
              point("c1", "4", "0.0001", 0.945, 0.90)]  # fmt: skip
    found = cells(ranked)
    assert [(c.layers, len(c.points)) for c in found] == [("2", 2), ("4", 1), ("0", 2)]
    assert [c.near_best for c in found] == [True, True, False]  # 0.945 of 200 rows: within the best's interval
    rows = leaderboard_rows(found)
    assert [r["rank"] for r in rows] == [1, 2, 3] and rows[0]["seeds"] == 2 and rows[0]["finetune.lr"] == "0.0001"
