"""Input transforms applied to every query before the model sees it."""

import io

import numpy as np
from PIL import Image, ImageFilter

from ..images import from_pil as _back
from ..images import map_images as _per_image
from ..images import to_pil as _pil
from .common import AttackReport, Timer, measure

DEFAULT_SETTINGS = (
    ("jpeg", 90), ("jpeg", 75), ("jpeg", 50),
    ("noise", 2.0), ("noise", 8.0), ("noise", 16.0),
    ("bits", 6), ("bits", 4), ("bits", 3),
    ("median", 3),
)


def jpeg(images, quality):
    def encode(image):
        buffer = io.BytesIO()
        _pil(image).save(buffer, format="JPEG", quality=int(quality))
        return _back(Image.open(buffer), image)

    return _per_image(images, encode)


def gaussian_noise(images, sigma, seed=0):
    noise = np.random.default_rng(seed).normal(0, sigma, images.shape)
    return np.clip(np.round(images + noise), 0, 255).astype(np.uint8)


def bit_depth(images, bits):
    step = 2 ** (8 - int(bits))
    return ((images // step) * step + step // 2).astype(np.uint8)


def median(images, size):
    return _per_image(images, lambda image: _back(_pil(image).filter(ImageFilter.MedianFilter(int(size))), image))


TRANSFORMS = {"jpeg": jpeg, "noise": gaussian_noise, "bits": bit_depth, "median": median}
PARAMETER_NAMES = {"jpeg": "quality", "noise": "sigma", "bits": "bits", "median": "size"}


def transform(threat, model, settings=DEFAULT_SETTINGS):
    """Measures the model behind each transformed query path; returns an `AttackReport`."""
    results = []
    with Timer() as total:
        baseline = measure(threat, model, {"transform": "none"})
        for name, value in settings:
            function = TRANSFORMS[name]
            results.append(measure(threat, model, {"transform": name, PARAMETER_NAMES[name]: value},
                                   transform_images=lambda images, f=function, v=value: f(images, v)))
    return AttackReport("transform", threat.to_dict(), baseline.to_dict(), results, total.seconds, notes=[
        "every query (test images, keys, identity images) passes through the transform before the model",
        "any re-encoding destroys the LSB payload, so identity_auth_rate falls while watermark_accuracy may survive",
    ])
