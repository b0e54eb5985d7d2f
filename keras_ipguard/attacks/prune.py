"""Magnitude pruning with TensorFlow Model Optimization (one-shot, or prune-then-retrain)."""

import numpy as np

from ..backend import keras as _keras
from ..models import flat_layers, is_prunable, prunable_layers
from .common import AttackReport, Timer, measure

DEFAULT_RATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_BATCH = 128


def _tfmot():
    import tensorflow_model_optimization as tfmot  # pylint: disable=import-outside-toplevel

    return tfmot.sparsity.keras


def as_functional(model):
    """A flat functional model computing the same function, sharing the weights.

    TFMOT cannot wrap a subclassed model: a `WatermarkedClassifier` is rebuilt
    from its functional backbone and its head; other models are returned as they are.
    """
    keras = _keras()
    if hasattr(model, "backbone") and hasattr(model, "head"):
        return keras.Model(model.backbone.inputs, model.head(model.backbone.outputs[0]), name="watermarked_functional")
    return model


def layer_sparsity(model):
    """{layer name: fraction of zero kernel weights} for every Dense/Conv2D layer."""
    return {layer.name: float(np.mean(layer.kernel.numpy() == 0)) for layer in prunable_layers(model)}


def prune_model(model, rate, attack_x, attack_y, finetune_epochs=0, learning_rate=1e-3):
    """A copy of `model` with the `rate` smallest-magnitude weights of every Dense/Conv2D kernel zeroed.

    One-shot: `ConstantSparsity(rate)`, masks applied in one step at learning
    rate 0. With `finetune_epochs`: `PolynomialDecay` from 0 to `rate` while
    training on the attacker's data with the N task labels. Then `strip_pruning`.
    """
    keras = _keras()
    tfmot = _tfmot()
    functional = as_functional(model)
    steps = max(1, int(np.ceil(len(attack_x) / _BATCH)))
    if finetune_epochs:
        schedule = tfmot.PolynomialDecay(0.0, rate, begin_step=0, end_step=steps * finetune_epochs, frequency=max(1, steps // 4))
        optimizer, x, y, epochs = keras.optimizers.Adam(learning_rate), attack_x, attack_y, finetune_epochs
    else:
        schedule = tfmot.ConstantSparsity(rate, begin_step=0, frequency=1)
        optimizer, x, y, epochs = keras.optimizers.SGD(0.0), attack_x[:_BATCH], attack_y[:_BATCH], 1

    def wrap(layer):
        clone = layer.__class__.from_config(layer.get_config())
        return tfmot.prune_low_magnitude(clone, pruning_schedule=schedule) if is_prunable(layer) else clone

    pruned = keras.models.clone_model(functional, clone_function=wrap)
    for source, target in zip(flat_layers(functional), flat_layers(pruned)):
        # Wrapped layers hold the original weights first, then their masks and step counters.
        weights = source.get_weights()
        target.set_weights(weights + target.get_weights()[len(weights):])
    pruned.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    pruned.fit(x.astype(np.float32), y, epochs=epochs, batch_size=_BATCH, callbacks=[tfmot.UpdatePruningStep()], verbose=0)
    return tfmot.strip_pruning(pruned)


def prune(threat, model, rates=DEFAULT_RATES, finetune_epochs=0, save_dir=None):
    """Prunes `model` at each rate and measures it; returns an `AttackReport`.

    With `save_dir`, each pruned model is saved as `prune-<rate>.keras` there.
    """
    settings = []
    with Timer() as total:
        baseline = measure(threat, model, {"rate": 0.0})
        for rate in rates:
            with Timer() as timer:
                pruned = prune_model(model, rate, threat.attack_x, threat.attack_y, finetune_epochs)
            extra = {"finetune_epochs": finetune_epochs, "seconds": round(timer.seconds, 2),
                     "layer_sparsity": layer_sparsity(pruned)}
            settings.append(measure(threat, pruned, {"rate": rate}, extra=extra))
            if save_dir is not None:
                save_dir.mkdir(parents=True, exist_ok=True)
                pruned.save(save_dir / f"prune-{rate:.2f}.keras")
    mode = ("one-shot (ConstantSparsity)" if not finetune_epochs else
            f"prune-then-retrain: PolynomialDecay over {finetune_epochs} epochs on the attacker's data (N task labels)")
    return AttackReport("prune", threat.to_dict(), baseline.to_dict(), settings, total.seconds, notes=[
        "magnitude pruning of every Dense and Conv2D kernel with TFMOT prune_low_magnitude, then strip_pruning", mode,
    ])
