"""Magnitude pruning with TensorFlow Model Optimization (one-shot, or prune-then-retrain)."""

import dataclasses

import numpy as np

from .. import batches
from ..settings import setting
from .base import Attack
from .common import AttackReport, Timer, measure

DEFAULT_RATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_BATCH = 128


def _tfmot():
    import tensorflow_model_optimization as tfmot

    return tfmot.sparsity.keras


def layer_sparsity(model):
    """{layer name: fraction of zero kernel weights} for every Dense/Conv2D layer."""
    from ..models import prunable_layers

    return {layer.name: float(np.mean(layer.kernel.numpy() == 0)) for layer in prunable_layers(model)}


def prune_model(model, rate, attack_x, attack_y, finetune_epochs=0, learning_rate=1e-3):
    """A copy of `model` with the `rate` smallest-magnitude weights of every Dense/Conv2D kernel zeroed.

    One-shot (no `finetune_epochs`): each kernel's mask as TFMOT's
    `ConstantSparsity(rate)` computes it (keep the round(size * (1 - rate))
    largest magnitudes, ties at the threshold kept), applied to a copy of the
    weights, then TFMOT's one step at learning rate 0 as a forward pass in
    training mode on the attacker's first batch (it moves the BatchNormalization
    statistics toward that batch). A test checks both against TFMOT's own;
    wrapping, compiling and fitting a TFMOT model took seconds per rate, and
    `make paper` prunes at 9 rates per scheme.
    With `finetune_epochs`: TFMOT's `PolynomialDecay` from 0 to `rate` while
    training on the attacker's data with the N task labels, then
    `strip_pruning`. TFMOT does not take Keras 3: a Keras 3 model gets the
    same schedule from `_prune_with_masks`.
    """
    from ..backend import keras as _keras
    from ..backend import keras_of
    from ..models import as_functional, flat_layers, is_prunable

    if keras_of(model) is not _keras() or not finetune_epochs:
        return _prune_with_masks(as_functional(model), rate, attack_x, attack_y, finetune_epochs, learning_rate)
    keras = _keras()
    tfmot = _tfmot()
    functional = as_functional(model)
    steps = max(1, int(np.ceil(len(attack_x) / _BATCH)))
    schedule = tfmot.PolynomialDecay(0.0, rate, begin_step=0, end_step=steps * finetune_epochs,
                                     frequency=max(1, steps // 4))
    optimizer, x, y, epochs = keras.optimizers.Adam(learning_rate), attack_x, attack_y, finetune_epochs

    def wrap(layer):
        clone = layer.__class__.from_config(layer.get_config())
        return tfmot.prune_low_magnitude(clone, pruning_schedule=schedule) if is_prunable(layer) else clone

    pruned = keras.models.clone_model(functional, clone_function=wrap)
    for source, target in zip(flat_layers(functional), flat_layers(pruned)):
        # Wrapped layers hold the original weights first, then their masks and step counters.
        weights = source.get_weights()
        target.set_weights(weights + target.get_weights()[len(weights):])
    pruned.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    batches.fit(pruned, x, y, _BATCH, epochs, callbacks=[tfmot.UpdatePruningStep()])
    return tfmot.strip_pruning(pruned)


def _masks(layers, sparsity):
    """Per layer, 1 for the kernel's largest-magnitude (1 - sparsity) share and 0 for the rest.

    TFMOT's mask (`pruning_impl.Pruning._update_mask`): k = max(1, round(size * (1 - sparsity))) computed in
    float32, the k-th largest magnitude the threshold, every magnitude at or above it kept.
    """
    masks = []
    for layer in layers:
        magnitude = np.abs(layer.kernel.numpy())
        keep = max(1, int(np.round(np.float32(magnitude.size) * np.float32(1 - sparsity))))
        threshold = np.sort(magnitude, axis=None)[::-1][keep - 1]
        masks.append((magnitude >= threshold).astype(magnitude.dtype))
    return masks


def _apply(layers, masks):
    for layer, mask in zip(layers, masks):
        layer.kernel.assign(layer.kernel.numpy() * mask)


def _prune_with_masks(model, rate, attack_x, attack_y, finetune_epochs, learning_rate):
    """`prune_model` one-shot (tf_keras or Keras 3, functional: TFMOT's masks and its one step's BatchNormalization
    update), or for a Keras 3 model TFMOT's PolynomialDecay schedule (power 3, masks recomputed every quarter
    epoch and reapplied after every step) while retraining."""
    from ..backend import keras_of
    from ..models import prunable_layers

    keras = keras_of(model)
    pruned = keras.models.clone_model(model)
    pruned.set_weights(model.get_weights())
    layers = prunable_layers(pruned)
    if finetune_epochs:
        steps = max(1, int(np.ceil(len(attack_x) / _BATCH)))
        end, frequency = steps * finetune_epochs, max(1, steps // 4)

        class Schedule(keras.callbacks.Callback):
            step, masks = 0, None

            def on_train_batch_end(self, batch, logs=None):
                self.step += 1
                if self.masks is None or self.step % frequency == 0 or self.step == end:
                    self.masks = _masks(layers, rate * (1 - (1 - min(self.step, end) / end) ** 3))
                _apply(layers, self.masks)

        pruned.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy")
        batches.fit(pruned, attack_x, attack_y, _BATCH, finetune_epochs, callbacks=[Schedule()])
    _apply(layers, _masks(layers, rate))
    if not finetune_epochs:
        # TFMOT's one-shot is one training step at learning rate 0 on the attacker's first batch: its forward
        # pass in training mode moves the BatchNormalization statistics toward that batch, and so does this one.
        pruned(attack_x[:_BATCH].astype(np.float32), training=True)
    return pruned


@dataclasses.dataclass
class PruneConfig:
    rates: tuple = setting(DEFAULT_RATES, "Sparsities (comma-separated or repeated).", kind=float, low=0, high=1,
                           open_bounds=True)
    finetune_epochs: int = setting(0, "Prune-then-retrain epochs (PolynomialDecay); 0: one-shot.", kind=int, low=0)
    save: str | None = setting(None, "Save each pruned model as DIR/prune-RATE.keras.", kind="dir")


class Prune(Attack):
    name = "prune"
    summary = "Magnitude pruning (TFMOT) at each rate, one-shot or with retraining."
    Config = PruneConfig

    def run(self, threat, model):
        from pathlib import Path

        params, settings = self.config, []
        with Timer() as total:
            baseline = measure(threat, model, {"rate": 0.0})
            for rate in params.rates:
                with Timer() as timer:
                    pruned = prune_model(model, rate, threat.attack_x, threat.attack_y, params.finetune_epochs)
                extra = {"finetune_epochs": params.finetune_epochs, "seconds": round(timer.seconds, 2),
                         "layer_sparsity": layer_sparsity(pruned)}
                settings.append(measure(threat, pruned, {"rate": rate}, extra=extra))
                if params.save is not None:
                    Path(params.save).mkdir(parents=True, exist_ok=True)
                    pruned.save(Path(params.save) / f"prune-{rate:.2f}.keras")
        mode = ("one-shot (ConstantSparsity)" if not params.finetune_epochs else
                f"prune-then-retrain: PolynomialDecay over {params.finetune_epochs} epochs on the attacker's data "
                "(N task labels)")
        return AttackReport(self.name, threat.to_dict(), baseline.to_dict(), settings, total.seconds, notes=[
            "magnitude pruning of every Dense and Conv2D kernel: TFMOT's mask (the smallest magnitudes of each "
            "kernel zeroed); with retraining, TFMOT prune_low_magnitude, then strip_pruning",
            mode,
        ])
