"""`benchmarks/sweep.py --smoke` (one sweep four ways: the floor, a dvc exp loop, an in-process Hydra multirun
and thaw sweep) runs on tiny data in CI, so the figures the docs quote from it cannot silently rot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tiny_project import TINY_CONF, benchmark_smoke

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from sweep import WAYS, Outcome, conf_for, run_order, table_rows


@pytest.mark.slow
def test_sweep_benchmark_smoke_prints_its_table() -> None:
    benchmark_smoke("sweep.py")


def test_every_way_gets_the_same_finetune_epochs_and_data(tmp_path: Path) -> None:
    data = tmp_path / "x.npz"
    conf = conf_for(data, smoke=False, finetune_epochs=2)
    assert conf["conf/config.yaml"] == {"finetune": {"epochs": 2}, "defaults": [{"data": "npz"}, {"base": "glyphs"},
                                                                                 "_self_"]}  # fmt: skip
    assert conf["conf/data/npz.yaml"] == {"data": {"path": str(data)}}
    smoke = conf_for(None, smoke=True, finetune_epochs=3)
    assert smoke["conf/config.yaml"]["finetune"] == {"epochs": 3, "batch_size": 16}
    assert TINY_CONF["conf/config.yaml"]["finetune"]["epochs"] == 1  # the shared tiny config is not changed
    assert conf_for(None, smoke=False) == {}


def test_the_ways_order_rotates_so_none_always_runs_first() -> None:
    keys = ["floor", "loop", "thaw"]
    orders = [run_order(keys, repeat) for repeat in range(4)]
    assert orders[:3] == [["floor", "loop", "thaw"], ["loop", "thaw", "floor"], ["thaw", "floor", "loop"]]
    assert orders[3] == orders[0]


def test_repeats_give_means_intervals_and_paired_differences_to_thaw() -> None:
    same = [(2, 0.001, 0.5, 0.5, 1.0)]
    seconds = {"floor": [100.0, 110.0, 90.0], "loop": [130.0, 125.0, 112.0], "hydra": [150.0, 151.0, 149.0],
               "thaw": [120.0, 126.0, 102.0]}  # fmt: skip
    after = {"floor": [40.0, 50.0, 45.0], "loop": [70.0, 60.0, 65.0], "hydra": [None] * 3, "thaw": [55.0] * 3}
    outcomes = {key: [Outcome(s, same, 1, a) for s, a in zip(seconds[key], after[key], strict=True)] for key in seconds}
    rows = table_rows("50000", outcomes)
    cells = {row.split(" | ")[2]: row.strip("| ").split(" | ") for row in rows}
    floor, loop, hydra, thaw = (cells[WAYS[key][0]] for key in ("floor", "loop", "hydra", "thaw"))
    assert floor[3:6] == ["3", "100.0 [75.2, 124.8]", "1.00"]
    assert loop[5] == "1.22" and thaw[5] == "1.16"
    # loop minus thaw, run by run: 10, -1, 10 -> mean 6.3; thaw was faster in two of three
    assert loop[6].startswith("6.3 [") and loop[7] == "2 of 3"
    assert floor[6:8] == thaw[6:8] == ["-", "-"]
    # after the upstream was ready: mean and interval, none for a way that recomputes it for every point
    assert floor[8] == "45.0 [32.6, 57.4]" and thaw[8] == "55.0 [55.0, 55.0]" and hydra[8] == "-"
    assert all(row.endswith("| 1 | yes |") for row in rows)


def test_a_way_whose_results_differ_in_any_repeat_is_marked() -> None:
    same, other = [(2, 0.001, 0.5, 0.5, 1.0)], [(2, 0.001, 0.5, 0.5, 1.1)]
    outcomes = {"floor": [Outcome(1.0, same, 1, 0.5)] * 2,
                "thaw": [Outcome(2.0, same, 1, 1.0), Outcome(2.0, other, 1, 1.0)]}  # fmt: skip
    rows = table_rows("300", outcomes)
    assert rows[0].endswith("| yes |") and rows[1].endswith("| NO |")
