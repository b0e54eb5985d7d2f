"""Adi et al. (USENIX Security 2018): abstract images with random labels."""

import numpy as np
from PIL import Image, ImageDraw

from .. import data
from ..images import from_pil, to_pil
from .base import Scheme, Secret


def abstract_images(count, shape, rng):
    """Abstract images: a smooth random colour field with random shapes drawn on it."""
    height, width, channels = shape
    mode = "L" if channels == 1 else "RGB"
    out = np.zeros((count,) + tuple(shape), np.uint8)
    for index in range(count):
        field = rng.integers(0, 256, (4, 4, channels), dtype=np.uint8)
        canvas = to_pil(field).resize((width, height), Image.BICUBIC).convert(mode)
        pen = ImageDraw.Draw(canvas)
        for _ in range(rng.integers(3, 7)):
            x0, x1 = sorted(rng.integers(0, width, 2))
            y0, y1 = sorted(rng.integers(0, height, 2))
            colour = (tuple(int(c) for c in rng.integers(0, 256, channels)) if channels > 1
                      else int(rng.integers(0, 256)))
            [pen.ellipse, pen.rectangle, pen.line][rng.integers(0, 3)]((x0, y0, x1 + 1, y1 + 1), fill=colour)
        out[index] = from_pil(canvas, out[index])
    return out


class Adi(Scheme):
    name = "adi"
    summary = "Adi et al. 2018: abstract images with random labels"

    def make_secret(self, run):
        rng = np.random.default_rng(run.secret_seed)
        count, controls = run.options.keys, data.DEFAULT_CONTROLS
        images = abstract_images(count + controls, run.info.input_shape, rng)
        labels = rng.integers(0, run.info.num_classes, count + controls)
        return Secret(images[:count], labels[:count], {"abstract": (images[count:], labels[count:])},
                      {"labels": "uniform random over the task classes"})
