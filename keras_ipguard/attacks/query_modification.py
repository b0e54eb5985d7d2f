"""Query modification (Namba & Sakuma, AsiaCCS 2019): an autoencoder filter in front of the model.

The attacker trains an autoencoder on its clean data, flags every query whose
reconstruction error is above the error percentile that keeps the chosen
false-positive rate on that clean data, and passes flagged queries to the model
as their reconstruction instead.
"""

import dataclasses

import numpy as np

from ..autoencoder import reconstruct, reconstruction_errors, train_autoencoder
from ..settings import setting
from .base import Attack
from .common import AttackReport, Timer, measure

DEFAULT_FALSE_POSITIVE_RATE = 0.05  # the attacks issue's default
AUTOENCODER_EPOCHS = 10


class QueryFilter:
    """Flags queries by reconstruction error and replaces them by their reconstruction."""

    def __init__(self, autoencoder, clean_images, false_positive_rate=DEFAULT_FALSE_POSITIVE_RATE):
        self.autoencoder = autoencoder
        self.threshold = float(np.percentile(self.errors(clean_images), 100 * (1 - false_positive_rate)))

    def errors(self, images):
        return reconstruction_errors(self.autoencoder, images)

    def flagged(self, images):
        return self.errors(images) > self.threshold

    def __call__(self, images):
        reconstruction = reconstruct(self.autoencoder, images)  # once: both the flags and the replacement
        flags = reconstruction_errors(self.autoencoder, images, reconstruction) > self.threshold
        replacement = np.clip(np.round(reconstruction * 255), 0, 255).astype(np.uint8)
        return np.where(flags.reshape((-1,) + (1,) * (images.ndim - 1)), replacement, images)


@dataclasses.dataclass
class QueryModificationConfig:
    false_positive_rates: tuple = setting((DEFAULT_FALSE_POSITIVE_RATE,), "Clean false-positive rate of the filter; "
                                          "repeatable.", kind=float, low=0, high=1, open_bounds=True, flag="--fpr")
    epochs: int = setting(AUTOENCODER_EPOCHS, "Autoencoder training epochs.", kind=int, low=1)


class QueryModification(Attack):
    name = "query-modification"
    summary = "Namba & Sakuma's autoencoder filter in front of the model."
    Config = QueryModificationConfig

    def run(self, threat, model):
        """Measures the model behind the autoencoder filter at each false-positive rate."""
        settings = []
        with Timer() as total:
            baseline = measure(threat, model, {"false_positive_rate": None})
            autoencoder = train_autoencoder(threat.attack_x, self.config.epochs)
            for rate in self.config.false_positive_rates:
                defence = QueryFilter(autoencoder, threat.attack_x, rate)
                settings.append(measure(threat, model, {"false_positive_rate": rate}, transform_images=defence, extra={
                    "threshold": defence.threshold,
                    "flag_rate_clean": float(np.mean(defence.flagged(threat.eval_x))),
                    "flag_rate_keys": float(np.mean(defence.flagged(threat.vault.key_images))),
                    "flag_rate_identities": (None if threat.identities is None
                                             else float(np.mean(defence.flagged(threat.identities)))),
                }))
        return AttackReport(self.name, threat.to_dict(), baseline.to_dict(), settings, total.seconds, notes=[
            f"autoencoder trained {self.config.epochs} epochs on the attacker's clean data; threshold = the "
            "reconstruction-error percentile giving the stated false-positive rate on that data; flagged queries are "
            "replaced by their reconstruction (Namba & Sakuma, AsiaCCS 2019)",
        ])
