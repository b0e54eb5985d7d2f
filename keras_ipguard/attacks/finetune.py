"""Fine-tuning attacks: FTLL, FTAL, RTLL, RTAL on the attacker's data with the N task labels only."""

import numpy as np

from ..backend import keras as _keras
from ..models import renormalize_kernels
from .common import AttackReport, Timer, measure
from .prune import as_functional

VARIANTS = ("FTLL", "FTAL", "RTLL", "RTAL")
DEFAULT_EPOCHS = 10
# The attacks issue's defaults: SGD 0.01 with momentum 0.9; Adam 1e-3.
DEFAULT_LEARNING_RATES = {"sgd": 0.01, "adam": 1e-3}
_BATCH = 64


def attacker_copy(model, renormalize=False):
    """What a fine-tuning attacker starts from: a flat functional copy of `model` with weights of its own,
    with `renormalize` divided by embed's public default kernel scale (`renormalize_kernels`)."""
    functional = as_functional(model)
    clone = _keras().models.clone_model(functional)
    clone.set_weights(functional.get_weights())
    if renormalize:
        renormalize_kernels(clone)
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
    keras = _keras()
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    clone = attacker_copy(model, renormalize)
    last = clone.layers[-1]
    if variant.startswith("RT"):
        keras.utils.set_random_seed(seed)
        kernel, bias = last.get_weights()
        fresh = keras.initializers.GlorotUniform(seed=seed)(kernel.shape).numpy()
        last.set_weights([fresh, np.zeros_like(bias)])
    if variant.endswith("LL"):
        for layer in clone.layers[:-1]:
            layer.trainable = False
    rate = learning_rate or DEFAULT_LEARNING_RATES[optimizer]
    opt = keras.optimizers.SGD(rate, momentum=0.9) if optimizer == "sgd" else keras.optimizers.Adam(rate)
    clone.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    clone.fit(attack_x.astype(np.float32), attack_y, epochs=epochs, batch_size=_BATCH, shuffle=True, verbose=0)
    return clone


def finetune(threat, model, variants=VARIANTS, epochs=DEFAULT_EPOCHS, optimizers=("sgd",), learning_rate=None,
             renormalize=False):
    """Runs each variant with each optimizer and measures it; returns an `AttackReport`.

    With `renormalize`, every setting runs twice: on the model as shipped and
    after `renormalize_kernels` (an attacker who knows about the kernel scaling).
    """
    settings = []
    with Timer() as total:
        baseline = measure(threat, model, {"variant": "none"})
        for renormalized in (False, True) if renormalize else (False,):
            for optimizer in optimizers:
                for variant in variants:
                    with Timer() as timer:
                        tuned = finetune_model(model, variant, threat.attack_x, threat.attack_y, epochs, optimizer,
                                               learning_rate, renormalize=renormalized)
                    settings.append(measure(threat, tuned, {
                        "variant": variant, "optimizer": optimizer, "kernels": "renormalized" if renormalized else None}, extra={
                        "epochs": epochs, "learning_rate": learning_rate or DEFAULT_LEARNING_RATES[optimizer],
                        "seconds": round(timer.seconds, 2)}))
    notes = [("FTLL/FTAL: fine-tune the last layer / all layers; RTLL/RTAL: re-initialise the last layer (which "
              "holds the watermark unit), then train it / all layers; attacker's data, N task labels only")]
    if renormalize:
        notes.append("kernels renormalized: the attacker first divided every BatchNormalization-fed kernel by embed's "
                     "default kernel scale (same function), undoing the scaling")
    return AttackReport("finetune", threat.to_dict(), baseline.to_dict(), settings, total.seconds, notes=notes)
