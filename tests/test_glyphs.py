"""thaw.glyphs: the offline pretraining task (rendered capital letters through the digits' 8x8 sensor)."""

from __future__ import annotations

import numpy as np
from datasets import validate

from thaw.datasources import load_digits
from thaw.glyphs import render_glyphs


def test_shape_dtype_and_labels() -> None:
    ds = render_glyphs(classes=4, per_class=3, image_size=32, seed=0)
    assert ds.images.shape == (12, 32, 32, 3)
    assert ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64
    assert ds.class_names == ("A", "B", "C", "D")
    assert np.bincount(ds.labels).tolist() == [3, 3, 3, 3]
    # Grayscale, replicated to three channels like the digits.
    assert np.array_equal(ds.images[..., 0], ds.images[..., 2])
    # Every image shows a letter: no blank renders.
    assert all(img.max() > 100 for img in ds.images)
    validate(ds, 32, "glyphs")


def test_image_size_and_class_count_follow_the_arguments() -> None:
    ds = render_glyphs(classes=26, per_class=2, image_size=16, seed=1)
    assert ds.images.shape == (52, 16, 16, 3)
    assert ds.class_names[-1] == "Z"
    assert np.bincount(ds.labels, minlength=26).tolist() == [2] * 26


def test_rows_are_shuffled() -> None:
    labels = render_glyphs(classes=5, per_class=4, image_size=16, seed=0).labels
    assert not np.all(np.diff(labels) >= 0)


def test_deterministic_for_a_seed() -> None:
    a = render_glyphs(classes=3, per_class=4, image_size=16, seed=7)
    b = render_glyphs(classes=3, per_class=4, image_size=16, seed=7)
    assert np.array_equal(a.images, b.images)
    assert np.array_equal(a.labels, b.labels)


def test_different_for_another_seed() -> None:
    a = render_glyphs(classes=3, per_class=4, image_size=16, seed=7)
    b = render_glyphs(classes=3, per_class=4, image_size=16, seed=8)
    assert not np.array_equal(a.images, b.images)


def test_letters_differ_from_each_other() -> None:
    """The task is learnable: the mean image of each letter is distinct."""
    ds = render_glyphs(classes=4, per_class=10, image_size=16, seed=0)
    means = [ds.images[ds.labels == c].astype(float).mean(axis=0) for c in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(means[i] - means[j]).mean() > 5, (i, j)


def test_grey_levels_match_the_digits_sensor() -> None:
    # At the sensor's own resolution there is no interpolation: the pixels are exactly the scanner's grey levels.
    glyph_levels = set(np.unique(render_glyphs(classes=26, per_class=10, image_size=8, seed=0).images).tolist())
    digit_levels = set(np.unique(load_digits(8).images).tolist())
    assert glyph_levels <= digit_levels
