"""The pretraining source task: printed letters rendered offline, seen through the same 8x8 sensor as the
target digits, so that the base learns stroke features on a different task (letters, not digits)."""

from __future__ import annotations

import string

import numpy as np

from thaw.datasources import ImageDataset, upscale_low_res

SENSOR = 8  # the digits are 8x8 scans; the letters are sampled at the same resolution
CANVAS = 64  # letters are drawn large, then reduced to the sensor grid


def render_glyphs(classes: int, per_class: int, image_size: int, seed: int) -> ImageDataset:
    """Render `per_class` jittered images (rotation, scale, shift, stroke width) of the first `classes`
    capital letters, deterministic in `seed`."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    letters = string.ascii_uppercase[:classes]
    low_res = np.empty((classes * per_class, SENSOR, SENSOR), dtype=np.uint8)
    labels = np.repeat(np.arange(classes, dtype=np.int64), per_class)
    for i, label in enumerate(labels):
        font = ImageFont.load_default(size=int(rng.integers(60, 80)))
        canvas = Image.new("L", (CANVAS, CANVAS), 0)
        draw = ImageDraw.Draw(canvas)
        centre = (CANVAS / 2 + rng.uniform(-4, 4), CANVAS / 2 + rng.uniform(-4, 4))
        draw.text(
            centre, letters[label], fill=255, font=font, anchor="mm", stroke_width=int(rng.integers(2, 6)),
            stroke_fill=255,
        )  # fmt: skip
        canvas = canvas.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR)
        sensor = canvas.resize((SENSOR, SENSOR), Image.Resampling.BOX)
        # 17 grey levels, like the digits' scanner.
        levels = np.round(np.asarray(sensor, dtype=np.float64) * 16 / 255)
        low_res[i] = np.round(levels * 255 / 16)
    order = rng.permutation(len(labels))
    return ImageDataset(upscale_low_res(low_res[order], image_size), labels[order], tuple(letters))
