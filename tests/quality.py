"""The default pipeline's quality guard: the band of test accuracies a correct seed-42 run lands in on any
machine kind, derived from what the project measures, never from one machine's draw.

- the spread over machine kinds: the seed-42 default's accuracies on each kind seen, docs/reproducibility.md's
  table "What the default trains to";
- the spread over seeds: the ablation's 95 % half-width of the pretrained rows at the default's 10 labels per
  class (docs/pipeline.md), turned back into one seed's standard deviation (5 seeds, Student's t).

A kind not seen yet is one more draw whose last bits differ, so the band is the kinds' range widened by
SEEDS_SD seed standard deviations on each side, rounded outwards to the 200-row test set's steps (0.005).
benchmarks/quality_guard.py runs broken pipelines against it (docs/reproducibility.md says what it refuses).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = {"train_head": "pretrained: head", "finetune": "pretrained: fine-tuned"}  # metrics file -> ablation row
SEEDS_SD = 2.0  # how far past the kinds seen a new kind may land, in seed standard deviations
ABLATION_SEEDS = 5  # seeds 42-46
T_975_4 = 2.7764451051977987  # Student's t, 97.5 % quantile, 4 degrees of freedom (scipy.stats.t.ppf(0.975, 4))
TEST_STEP = 0.005  # one of the default's 200 test images


def kinds_seen(text: str | None = None) -> dict[str, dict[str, float]]:
    """machine kind -> {"train_head": accuracy, "finetune": accuracy}, from docs/reproducibility.md."""
    text = text if text is not None else (REPO / "docs/reproducibility.md").read_text()
    section = text.partition("### What the default trains to")[2].partition("\n## ")[0]
    rows = re.findall(r"^\| ([^|]+?) \| (0\.\d+) \| (0\.\d+) \|", section, re.M)
    assert rows, "docs/reproducibility.md lost its table of the default's accuracies per machine kind"
    return {kind: {"train_head": float(head), "finetune": float(tuned)} for kind, head, tuned in rows}


def seed_sd(text: str | None = None) -> dict[str, float]:
    """One seed's standard deviation of each stage's test accuracy (a fraction), from the ablation's 95 %
    half-widths at 10 labels per class in docs/pipeline.md."""
    text = text if text is not None else (REPO / "docs/pipeline.md").read_text()
    table = text.partition("Training labels per class: 10\n")[2].partition("Training labels per class:")[0]
    sd = {}
    for stage, arm in STAGES.items():
        found = re.search(rf"^\| {re.escape(arm)} \| [0-9.]+ ± ([0-9.]+) \|", table, re.M)
        assert found, f"docs/pipeline.md's 10-label ablation table lost its row {arm!r}"
        sd[stage] = float(found[1]) / 100 * math.sqrt(ABLATION_SEEDS) / T_975_4
    return sd


def guard_bounds() -> dict[str, tuple[float, float]]:
    """stage -> (lowest, highest) test accuracy the guard accepts."""
    seen, sd = kinds_seen(), seed_sd()
    bounds = {}
    for stage in STAGES:
        values = [kind[stage] for kind in seen.values()]
        low = math.floor(round((min(values) - SEEDS_SD * sd[stage]) / TEST_STEP, 6)) * TEST_STEP
        high = math.ceil(round((max(values) + SEEDS_SD * sd[stage]) / TEST_STEP, 6)) * TEST_STEP
        bounds[stage] = (round(low, 3), round(min(high, 1.0), 3))
    return bounds


def refusals(accuracy: dict[str, float], bounds: dict[str, tuple[float, float]]) -> list[str]:
    """What the guard says against a run's test accuracies (empty: accepted)."""
    return [f"{stage} test accuracy {accuracy[stage]:.3f} outside [{low:.3f}, {high:.3f}]"
            for stage, (low, high) in bounds.items() if not low <= accuracy[stage] <= high]  # fmt: skip
