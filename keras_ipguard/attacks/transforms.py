"""Input transforms applied to every query before the model sees it."""

import dataclasses

import numpy as np
from PIL import ImageFilter

from ..errors import IPGuardError
from ..images import from_pil, jpeg, map_images, to_pil
from ..settings import setting
from .base import Attack
from .common import AttackReport, Timer, measure


def gaussian_noise(images, sigma, seed=0):
    noise = np.random.default_rng(seed).normal(0, sigma, images.shape)
    return np.clip(np.round(images + noise), 0, 255).astype(np.uint8)


def bit_depth(images, bits):
    step = 2 ** (8 - int(bits))
    return ((images // step) * step + step // 2).astype(np.uint8)


def median(images, size):
    return map_images(images, lambda image: from_pil(to_pil(image).filter(ImageFilter.MedianFilter(int(size))), image))


TRANSFORMS = {"jpeg": jpeg, "noise": gaussian_noise, "bits": bit_depth, "median": median}
PARAMETER_NAMES = {"jpeg": "quality", "noise": "sigma", "bits": "bits", "median": "size"}
DEFAULT_SETTINGS = ("jpeg:90", "jpeg:75", "jpeg:50", "noise:2", "noise:8", "noise:16", "bits:6", "bits:4", "bits:3",
                    "median:3")


def parse_setting(text):
    """'jpeg:75' -> ('jpeg', 75.0); an IPGuardError naming the transforms otherwise."""
    name, _, value = str(text).partition(":")
    try:
        if name.lower() in TRANSFORMS:
            return name.lower(), float(value)
    except ValueError:
        pass
    raise IPGuardError(f"a transform is NAME:VALUE with NAME one of {', '.join(TRANSFORMS)} (e.g. jpeg:75), "
                       f"got {text!r}")


@dataclasses.dataclass
class TransformConfig:
    settings: tuple = setting(DEFAULT_SETTINGS, "NAME:VALUE: jpeg:QUALITY, noise:SIGMA, bits:BITS or median:SIZE; "
                              "repeatable.", kind=str, flag="--transform")

    def __post_init__(self):
        for text in self.settings:
            parse_setting(text)


class Transform(Attack):
    name = "transform"
    summary = "JPEG, Gaussian noise, bit-depth reduction and median smoothing of every query."
    Config = TransformConfig

    def run(self, threat, model):
        """Measures the model behind each transformed query path."""
        results = []
        with Timer() as total:
            baseline = measure(threat, model, {"transform": "none"})
            for name, value in map(parse_setting, self.config.settings):
                value = int(value) if value.is_integer() and name != "noise" else value
                function = TRANSFORMS[name]
                results.append(measure(threat, model, {"transform": name, PARAMETER_NAMES[name]: value},
                                       transform_images=lambda images, f=function, v=value: f(images, v)))
        return AttackReport(self.name, threat.to_dict(), baseline.to_dict(), results, total.seconds, notes=[
            "every query (test images, keys, identity images) passes through the transform before the model",
            "any re-encoding destroys the LSB payload, so identity_auth_rate falls while watermark_accuracy may "
            "survive",
        ])
