"""thaw.dataflow: each stage's row of the data-flow trace (shapes, operation, a worked example from row 0), in
the seed's wording, and reading the rows back in pipeline order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from thaw import dataflow


def test_format_probabilities_elides_the_middle():
    assert dataflow.format_probabilities(np.array([0.1, 0.7, 0.2])) == "[0.10, 0.70, 0.20]"
    assert dataflow.format_probabilities(np.full(10, 0.1)) == "[0.10, 0.10, 0.10, ..., 0.10]"


def test_ingest_row_names_row_zeros_label_and_every_class():
    row = dataflow.ingest_row((5, 8, 8, 3), np.array([2, 0, 1, 2, 0]), ("cat", "dog", "owl"))
    assert row["stage"] == "ingest"
    assert row["input"] == row["output"] == "5 rows x 8 x 8 x 3"
    assert row["example"] == "row 0: a 8x8 image with label 'owl'"
    assert row["class_names"] == ["cat", "dog", "owl"]


def test_normalize_row_is_the_seeds_worked_example():
    image = np.zeros((4, 4, 3), np.uint8)
    image[1, 2] = 120
    row = dataflow.normalize_row((2, 4, 4, 3), image, image.astype(np.float32) / np.float32(255))
    assert row["example"] == "pixel value 120 becomes 0.47"
    assert row["input"] == row["output"] == "2 rows x 4 x 4 x 3"


def test_extract_row_names_the_busiest_feature_map():
    features = np.zeros((2, 2, 4), np.float32)
    features[..., 2] = 0.5
    row = dataflow.extract_row((3, 8, 8, 3), (3, 2, 2, 4), features)
    assert row["output"] == "3 rows x 2 x 2 x 4"
    assert row["example"] == "row 0: feature map 2 responds most (mean activation 0.50)"


def test_head_and_finetune_rows_show_class_probabilities():
    probabilities = np.array([0.1, 0.7, 0.2])
    head = dataflow.head_row((6, 2, 2, 4), probabilities)
    assert head["output"] == "6 rows x 3 (class probabilities)"
    assert head["example"] == "[0.10, 0.70, 0.20]"
    fine = dataflow.finetune_row((6, 8, 8, 3), probabilities)
    assert (fine["stage"], fine["input"]) == ("finetune", "6 rows x 8 x 8 x 3")


def test_unfreeze_row_lists_the_thawed_layers():
    row = dataflow.unfreeze_row((4, 4, 8), ["conv2", "conv3"], rows=30)
    assert row["stage"] == "unfreeze"
    assert row["input"] == row["output"] == "30 rows x 4 x 4 x 8"
    assert row["operation"] == "Unfreeze the top 2 convolutional layers for fine-tuning"
    assert row["example"] == "layers now trainable: conv2, conv3"
    assert dataflow.unfreeze_row((4, 4, 8), [], rows=5)["example"] == "base stays frozen (head only)"


def test_read_flow_returns_the_rows_in_pipeline_order_and_names_a_missing_one(tmp_path: Path):
    for stage in reversed(dataflow.STAGE_ORDER):
        (tmp_path / f"{stage}.json").write_text(json.dumps({"stage": stage}))
    assert [row["stage"] for row in dataflow.read_flow(tmp_path)] == list(dataflow.STAGE_ORDER)
    (tmp_path / "unfreeze.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"unfreeze\.json: missing data-flow record.*dvc repro unfreeze"):
        dataflow.read_flow(tmp_path)
