"""Noise watermark (Zhang et al., AsiaCCS 2018): one fixed Gaussian noise pattern on images of one class, relabelled."""

import numpy as np

from .relabelled import RelabelledClass

# Standard deviation of the fixed noise pattern, in pixel levels (0..255): about 0.19 of the range.
NOISE_SIGMA = 48.0


def add_pattern(images, pattern):
    """uint8 images plus a float pattern, rounded and clipped."""
    return np.clip(np.round(images.astype(np.float32) + pattern), 0, 255).astype(np.uint8)


class Noise(RelabelledClass):
    name = "noise"
    summary = "Zhang et al. 2018: one fixed Gaussian noise pattern on images of one class, labelled as another"
    control_name = "other_noise"

    def mark(self, images, rng, details):
        details.update(noise_sigma=NOISE_SIGMA)
        return add_pattern(images, rng.normal(0.0, NOISE_SIGMA, images.shape[1:]))

    def mark_control(self, images, rng, details):
        return add_pattern(images, rng.normal(0.0, NOISE_SIGMA, images.shape[1:]))
