"""Fine-tuning attacks: FTLL, FTAL, RTLL, RTAL on the attacker's data with the N task labels only."""

import dataclasses

import numpy as np

from .. import batches
from ..schemes.extra_class import DEFAULT_KERNEL_SCALE
from ..settings import setting
from .base import Attack
from .common import AttackReport, Timer, measure

VARIANTS = ("FTLL", "FTAL", "RTLL", "RTAL")
OPTIMIZERS = ("sgd", "adam")
DEFAULT_EPOCHS = 10
# The attacks issue's defaults: SGD 0.01 with momentum 0.9; Adam 1e-3.
DEFAULT_LEARNING_RATES = {"sgd": 0.01, "adam": 1e-3}
_BATCH = 64


def attacker_copy(model, renormalize=False):
    """What a fine-tuning attacker starts from: a flat functional copy of `model` with weights of its own,
    with `renormalize` divided by embed's public default kernel scale (`renormalize_kernels`)."""
    from ..backend import keras_of
    from ..models import as_functional, renormalize_kernels

    functional = as_functional(model)
    clone = keras_of(functional).models.clone_model(functional)
    clone.set_weights(functional.get_weights())
    if renormalize:
        renormalize_kernels(clone, DEFAULT_KERNEL_SCALE)
    return clone


def finetune_model(model, variant, attack_x, attack_y, epochs=DEFAULT_EPOCHS, optimizer="sgd", learning_rate=None,
                   seed=0, renormalize=False):
    """A fine-tuned copy of `model`.

    FTLL / FTAL: fine-tune the last layer / all layers. RTLL / RTAL: re-initialise
    the last layer (the one holding the watermark unit), then train it / all layers.
    With `renormalize`, an informed attacker first divides every BatchNormalization-fed
    kernel by embedding's public default kernel scale (`renormalize_kernels`: same
    function), undoing the scaling before fine-tuning.
    """
    from ..backend import keras_of

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    clone = attacker_copy(model, renormalize)
    keras = keras_of(clone)
    last = clone.layers[-1]
    if variant.startswith("RT"):
        keras.utils.set_random_seed(seed)
        kernel, bias = last.get_weights()
        fresh = np.asarray(keras.initializers.GlorotUniform(seed=seed)(kernel.shape))
        last.set_weights([fresh, np.zeros_like(bias)])
    if variant.endswith("LL"):
        for layer in clone.layers[:-1]:
            layer.trainable = False
    rate = learning_rate or DEFAULT_LEARNING_RATES[optimizer]
    opt = keras.optimizers.SGD(rate, momentum=0.9) if optimizer == "sgd" else keras.optimizers.Adam(rate)
    clone.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    batches.fit(clone, attack_x, attack_y, _BATCH, epochs)
    return clone


@dataclasses.dataclass
class FineTuneConfig:
    variants: tuple = setting(VARIANTS, "FTLL, FTAL (fine-tune the last / all layers), RTLL, RTAL (re-initialise the "
                              "last layer, then train it / all layers); repeatable.", choices=VARIANTS,
                              flag="--variant")
    epochs: int = setting(DEFAULT_EPOCHS, "Fine-tuning epochs.", kind=int, low=1)
    optimizers: tuple = setting(("sgd",), "Repeatable.", choices=OPTIMIZERS, flag="--optimizer")
    learning_rate: float | None = setting(None, "Learning rate.", kind=float, low=0, open_bounds=True, flag="--lr",
                                          default_text="SGD 0.01 (momentum 0.9), Adam 1e-3")
    renormalize: bool = setting(False, "Also run every setting as an informed attacker who first undoes embed's "
                                "--kernel-scale.")


class FineTune(Attack):
    name = "finetune"
    summary = "Fine-tuning: FTLL, FTAL, RTLL, RTAL with the N task labels only."
    Config = FineTuneConfig

    def run(self, threat, model):
        """Runs each variant with each optimizer (twice with `renormalize`: as shipped, then renormalized)."""
        params, settings = self.config, []
        with Timer() as total:
            baseline = measure(threat, model, {"variant": "none"})
            for renormalized in (False, True) if params.renormalize else (False,):
                for optimizer in params.optimizers:
                    for variant in params.variants:
                        with Timer() as timer:
                            tuned = finetune_model(model, variant, threat.attack_x, threat.attack_y, params.epochs,
                                                   optimizer, params.learning_rate, renormalize=renormalized)
                        settings.append(measure(threat, tuned, {
                            "variant": variant, "optimizer": optimizer,
                            "kernels": "renormalized" if renormalized else None}, extra={
                            "epochs": params.epochs,
                            "learning_rate": params.learning_rate or DEFAULT_LEARNING_RATES[optimizer],
                            "seconds": round(timer.seconds, 2)}))
        notes = [("FTLL/FTAL: fine-tune the last layer / all layers; RTLL/RTAL: re-initialise the last layer (which "
                  "holds the watermark unit), then train it / all layers; attacker's data, N task labels only")]
        if params.renormalize:
            notes.append("kernels renormalized: the attacker first divided every BatchNormalization-fed kernel by "
                         "embed's default kernel scale (same function), undoing the scaling")
        return AttackReport(self.name, threat.to_dict(), baseline.to_dict(), settings, total.seconds, notes=notes)
