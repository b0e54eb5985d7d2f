"""A user's trained N-class Keras model, taken in for protection (`embed --base-model`).

Keras 3 models (what `import keras` gives on TensorFlow 2.16+) stay Keras 3:
the last Dense layer grows by one unit in a Keras 3 functional model, which
trains with Keras 3 and is saved as a Keras 3 `.keras` file that loads with
`keras.saving.load_model` and nothing of this package. tf_keras models grow
into a `WatermarkedClassifier`.
"""

import numpy as np

from .backend import keras_of
from .errors import IPGuardError
from .models import WatermarkedClassifier, load_model, predict_classes

# Last-layer activations of a single-label classifier: probabilities, or logits (argmax is the same).
CLASSIFIER_ACTIVATIONS = ("softmax", "linear")
SCALE_SAMPLE = 2000  # test images that decide whether the model takes 0..255 or 0..1


def _checked(base, info):
    """The base model's last Dense layer and its activation, after checking the model fits the task."""
    keras = keras_of(base)
    if len(base.inputs) != 1 or len(base.outputs) != 1:
        raise IPGuardError(f"--base-model has {len(base.inputs)} inputs and {len(base.outputs)} outputs; "
                           "ipguard protects image classifiers with one image input and one class output")
    last = base.layers[-1]
    if not isinstance(last, keras.layers.Dense):
        raise IPGuardError(f"--base-model's last layer is a {type(last).__name__}; it must be the Dense classifier "
                           f"layer of {info.num_classes} units (end the model with it, softmax or not)")
    activation = keras.activations.serialize(last.activation)
    activation = activation if isinstance(activation, str) else activation.get("config", {}).get("name", "?")
    if activation not in CLASSIFIER_ACTIVATIONS:
        raise IPGuardError(f"--base-model's last layer has a {activation} activation; ipguard protects single-label "
                           "classifiers (softmax, or no activation: logits)")
    if tuple(base.input_shape[1:]) != tuple(info.input_shape):
        raise IPGuardError(f"--base-model takes inputs of shape {tuple(base.input_shape[1:])}, "
                           f"{info.name} has {tuple(info.input_shape)}")
    if last.units != info.num_classes:
        raise IPGuardError(f"--base-model has {last.units} outputs, {info.name} has {info.num_classes} classes")
    return last, activation


def _backbone(base, last, rescale):
    """The base's layers from images to the last Dense layer's input (Rescaling(1/255) first if asked)."""
    keras = keras_of(base)
    inputs = keras.Input(shape=tuple(base.input_shape[1:]), name="images")
    features = keras.Model(base.inputs, last.input, name="base_features")
    x = keras.layers.Rescaling(1 / 255.0, name="to_unit_range")(inputs) if rescale else inputs
    return keras.Model(inputs, features(x), name="base_backbone")


def _grown_head(last, feature_shape, seed=0):
    """A softmax Dense layer of one unit more than `last`: its columns copied, the watermark column small and random."""
    keras = keras_of(last)
    kernel, bias = last.get_weights() if last.use_bias else (last.get_weights()[0], np.zeros(last.units))
    head = keras.layers.Dense(last.units + 1, activation="softmax", name="head")
    head.build(feature_shape)
    column = np.random.default_rng(seed).normal(0, kernel.std(), (kernel.shape[0], 1)).astype(kernel.dtype)
    head.set_weights([np.concatenate([kernel, column], axis=1), np.append(bias, bias.min()).astype(kernel.dtype)])
    return head


def input_shape_of(path):
    """(H, W, C) the model at `path` takes: the task's images are converted to it."""
    return tuple(int(d) for d in load_model(path, what="--base-model").input_shape[1:])


def _accuracy(base, test, scale):
    """The base model's top-1 accuracy on a test split streamed batch by batch, its inputs multiplied by `scale`."""
    hits = seen = 0
    for images, labels in test.batches():
        hits += int(np.sum(predict_classes(base, images * scale) == labels))
        seen += len(labels)
    return hits / max(1, seen)


def watermarked_base_model(path, info, test):
    """The model at `path` grown by a watermark class, in its own Keras.

    Our models take raw pixels 0..255; many trained models expect 0..1: the scale
    the model was trained on is the one it is more accurate on (over the first
    `SCALE_SAMPLE` test images), and a Rescaling(1/255) layer is prepended when
    that is [0, 1]. A last layer with logits becomes a softmax over N+1 classes
    (the argmax is unchanged).

    Returns:
        (model, the base model's own clean accuracy on `test` (a `sources.Split`), a note on its Keras,
        input scale and output).
    """
    base = load_model(path, what="--base-model")
    last, activation = _checked(base, info)
    sample_x, sample_y = test.take(SCALE_SAMPLE)
    raw = float(np.mean(predict_classes(base, sample_x) == sample_y))
    unit = float(np.mean(predict_classes(base, sample_x / 255.0) == sample_y))
    rescale = unit > raw
    flavour = "Keras 3" if keras_of(base).__name__ == "keras" else "tf_keras"
    notes = [f"{flavour} model, kept {flavour}",
             "expects inputs in [0, 1]: a Rescaling(1/255) layer was prepended" if rescale else
             "takes raw pixel values 0..255",
             "its last layer gave logits: the protected model ends in a softmax" if activation == "linear" else
             "its last layer gave softmax probabilities"]
    backbone = _backbone(base, last, rescale)
    head = _grown_head(last, backbone.output_shape)
    if flavour == "Keras 3":
        model = keras_of(base).Model(backbone.inputs, head(backbone.outputs[0]), name="watermarked_classifier")
    else:
        model = WatermarkedClassifier(backbone, info.num_classes, head=head, name="watermarked_classifier")
    return model, _accuracy(base, test, 1 / 255.0 if rescale else 1.0), "base model: " + "; ".join(notes)
