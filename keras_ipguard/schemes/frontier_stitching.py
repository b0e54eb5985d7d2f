"""Frontier stitching (Le Merrer, Pérez and Trédan, Neural Computing and Applications 2020).

Adversarial examples of the trained model, made with FGSM from training images
it classifies correctly: "true adversaries" (now misclassified) and "false
adversaries" (still classified correctly, though perturbed). Half of each,
labelled with their true class, are fine-tuned into the model, which moves
its decision frontier around them; an unmarked model gets the true
adversaries wrong far more often. The scheme overrides training: train, make
the adversaries of the trained model, then stitch them in.
"""

import dataclasses

import numpy as np

from .. import data
from ..errors import IPGuardError
from ..settings import setting
from .base import Scheme, Secret

# FGSM step as a fraction of the pixel range, by channel count: small enough to
# stay near the frontier, large enough to fool the model on many images.
DEFAULT_EPSILON = {1: 0.1, 3: 8 / 255}
# Stitching: fine-tune with the keys until every key gets its label, at most
# this many epochs, at this fraction of the initial learning rate, with the keys
# "boosted" to this share of each batch (as in reference implementations).
STITCH_MAX_EPOCHS = 5
STITCH_LEARNING_RATE_FACTOR = 0.3
STITCH_KEY_SHARE = 0.25
_POOL = 4000
_BATCH = 256


def fgsm(model, images, labels, epsilon):
    """uint8 images moved by `epsilon` (fraction of 255) along the sign of the loss gradient, rounded."""
    from ..backend import keras, tensorflow

    tf = tensorflow()
    out = []
    for start in range(0, len(images), _BATCH):
        x = tf.convert_to_tensor(images[start : start + _BATCH], tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)
            answers = model(x, training=False)
            loss = keras().losses.sparse_categorical_crossentropy(labels[start : start + _BATCH], answers)
        step = 255.0 * epsilon * tf.sign(tape.gradient(loss, x))
        out.append(tf.clip_by_value(tf.round(x + step), 0, 255).numpy().astype(np.uint8))
    return np.concatenate(out)


def frontier_triggers(model, batches, count, epsilon=None, controls=data.DEFAULT_CONTROLS):
    """K/2 true and K/2 false adversaries of `model` as triggers, and as many again of each as controls.

    Args:
        model: the trained N-class model (before stitching).
        batches: (uint8 images, int labels) batches of the owner's training data, in a secret order.
        count: K.
        epsilon: FGSM step (fraction of 255) [default: by channel count].
    """
    from ..models import predict_classes

    need = (count + 1) // 2 + controls // 2
    found = {True: [], False: []}
    for x, y in batches:
        epsilon = DEFAULT_EPSILON[x.shape[-1]] if epsilon is None else epsilon
        right = predict_classes(model, x) == y
        adversaries = fgsm(model, x[right], y[right], epsilon)
        fooled = predict_classes(model, adversaries) != y[right]
        for kind in (True, False):
            found[kind].extend(zip(adversaries[fooled == kind], y[right][fooled == kind]))
        if min(len(found[True]), len(found[False])) >= need:
            break
    if min(len(found[True]), len(found[False])) < need:
        raise IPGuardError(
            f"FGSM at epsilon {epsilon or 0:.3g} gave {len(found[True])} true and {len(found[False])} false "
            f"adversaries, {need} of each are needed; use fewer --keys or more training examples"
        )
    half_true, half_false = (count + 1) // 2, count // 2
    pick = {kind: (np.stack([a for a, _ in found[kind][:need]]), np.array([b for _, b in found[kind][:need]]))
            for kind in (True, False)}
    trigger_x = np.concatenate([pick[True][0][:half_true], pick[False][0][:half_false]])
    trigger_y = np.concatenate([pick[True][1][:half_true], pick[False][1][:half_false]])
    control_x = np.concatenate([pick[True][0][half_true:], pick[False][0][half_false:]])
    control_y = np.concatenate([pick[True][1][half_true:], pick[False][1][half_false:]])
    return Secret(trigger_x, trigger_y, {"adversaries": (control_x, control_y)}, {
        "epsilon": epsilon, "true_adversaries": half_true, "false_adversaries": half_false,
        "labels": "the true class of the image each adversary was made from",
    })


@dataclasses.dataclass
class FrontierStitchingConfig:
    """Settings of frontier stitching."""

    epsilon: float | None = setting(None, "FGSM step as a fraction of the pixel range.", kind=float, low=0, high=1,
                                    open_bounds=True, default_text="0.1 for grayscale, 8/255 for RGB")


class FrontierStitching(Scheme):
    name = "frontier-stitching"
    summary = "Le Merrer et al. 2020: FGSM adversaries near the trained model's frontier, stitched in"
    Config = FrontierStitchingConfig

    def train(self, run, model):
        from ..callbacks import StopWhenKeysLearnt

        run.fit(model, run.pipeline(self))  # kept once finished: an interruption of stitching does not redo it
        run.baseline_accuracy = run.accuracy(model)
        batches = run.train.dataset(run.secret_seed % 2**31).batch(_POOL).as_numpy_iterator()
        secret = frontier_triggers(model, batches, run.options.keys, self.config.epsilon)
        stitched = StopWhenKeysLearnt(secret.keys, secret.labels)
        run.fit(model, run.pipeline(self, self.key_streams(secret, run.info.num_classes), STITCH_KEY_SHARE),
                epochs=STITCH_MAX_EPOCHS, learning_rate=run.learning_rate * STITCH_LEARNING_RATE_FACTOR,
                backup="backup-stitch", callbacks=[stitched])
        secret.details.update(stitch_epochs=stitched.epochs, stitch_key_share=STITCH_KEY_SHARE)
        return secret
