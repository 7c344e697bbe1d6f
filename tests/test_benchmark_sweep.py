"""`benchmarks/sweep.py --smoke` (one sweep four ways: the floor, a dvc exp loop, an in-process Hydra multirun,
thaw sweep) runs on tiny data in CI, so the figures the docs quote from it cannot silently rot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tiny_project import TINY_CONF, benchmark_smoke

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from sweep import conf_for


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
