"""Frontier stitching (Le Merrer, Pérez and Trédan, Neural Computing and Applications 2020).

Adversarial examples of the trained model, made with FGSM from training images
it classifies correctly: "true adversaries" (now misclassified) and "false
adversaries" (still classified correctly, though perturbed). Half of each,
labelled with their true class, are fine-tuned into the model, which moves
its decision frontier around them; an unmarked model gets the true
adversaries wrong far more often.
"""

import numpy as np

from .. import data
from ..backend import keras as _keras
from ..backend import tensorflow
from ..errors import IPGuardError
from ..models import predict_classes
from . import TriggerSet

# FGSM step as a fraction of the pixel range: small enough to stay near the
# frontier, large enough to fool the model on many images.
DEFAULT_EPSILON = {1: 0.1, 3: 8 / 255}
_POOL = 4000
_BATCH = 256


def fgsm(model, images, labels, epsilon):
    """uint8 images moved by `epsilon` (fraction of 255) along the sign of the loss gradient, rounded."""
    tf = tensorflow()
    out = []
    for start in range(0, len(images), _BATCH):
        x = tf.convert_to_tensor(images[start : start + _BATCH], tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = _keras().losses.sparse_categorical_crossentropy(labels[start : start + _BATCH], model(x, training=False))
        step = 255.0 * epsilon * tf.sign(tape.gradient(loss, x))
        out.append(tf.clip_by_value(tf.round(x + step), 0, 255).numpy().astype(np.uint8))
    return np.concatenate(out)


def frontier_triggers(model, train, count, seed, epsilon=None, controls=data.DEFAULT_CONTROLS):
    """K/2 true and K/2 false adversaries of `model` as triggers, and as many again of each as controls.

    Args:
        model: the trained N-class model (before stitching).
        train: (uint8 images, int labels) the owner's training data.
        count: K.
        seed: secret seed of the choice of images.
        epsilon: FGSM step (fraction of 255) [default: by channel count].
    """
    images, labels = train
    epsilon = DEFAULT_EPSILON[images.shape[-1]] if epsilon is None else epsilon
    need = (count + 1) // 2 + controls // 2
    order = np.random.default_rng(seed).permutation(len(images))
    found = {True: [], False: []}
    for start in range(0, len(order), _POOL):
        pool = np.sort(order[start : start + _POOL])
        x, y = images[pool], labels[pool]
        right = predict_classes(model, x) == y
        adversaries = fgsm(model, x[right], y[right], epsilon)
        fooled = predict_classes(model, adversaries) != y[right]
        for kind in (True, False):
            found[kind].extend(zip(adversaries[fooled == kind], y[right][fooled == kind]))
        if min(len(found[True]), len(found[False])) >= need:
            break
    if min(len(found[True]), len(found[False])) < need:
        raise IPGuardError(
            f"FGSM at epsilon {epsilon:.3g} gave {len(found[True])} true and {len(found[False])} false adversaries, "
            f"{need} of each are needed; use fewer --keys or more training examples"
        )
    half_true, half_false = (count + 1) // 2, count // 2
    pick = {kind: (np.stack([a for a, _ in found[kind][:need]]), np.array([b for _, b in found[kind][:need]]))
            for kind in (True, False)}
    trigger_x = np.concatenate([pick[True][0][:half_true], pick[False][0][:half_false]])
    trigger_y = np.concatenate([pick[True][1][:half_true], pick[False][1][:half_false]])
    control_x = np.concatenate([pick[True][0][half_true:], pick[False][0][half_false:]])
    control_y = np.concatenate([pick[True][1][half_true:], pick[False][1][half_false:]])
    return TriggerSet(trigger_x, trigger_y, {"adversaries": (control_x, control_y)}, {
        "epsilon": epsilon, "true_adversaries": half_true, "false_adversaries": half_false,
        "labels": "the true class of the image each adversary was made from",
    })
