"""Routes TensorFlow to tf_keras (Keras 2), which TFMOT's pruning requires.

Importing this module sets `TF_USE_LEGACY_KERAS=1` so that TensorFlow, when it
is first imported, resolves `tf.keras` to tf_keras, and asks for TensorFlow's
oneDNN CPU kernels unless the user chose (`TF_ENABLE_ONEDNN_OPTS`). TensorFlow
itself is imported lazily by the modules that need it, so the registry and
identity commands start without it.
"""

import os
import sys

LEGACY_KERAS_ENV = "TF_USE_LEGACY_KERAS"
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def _tf_keras_flavour():
    """The package an already-imported TensorFlow resolved `tf.keras` to, or None if not yet."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return None
    keras_attr = tf.__dict__.get("keras")
    if keras_attr is None:
        return None
    state = vars(keras_attr)  # read without triggering TensorFlow's lazy loader
    if "_tfll_initialized" in state:  # still a lazy loader
        return state.get("_tfll_keras_version") if state["_tfll_initialized"] else None
    # Once used, the loader is replaced by the module it resolved to.
    return "tf_keras" if keras_attr.__name__.startswith("tf_keras") else keras_attr.__name__


def use_legacy_keras():
    """Sets `TF_USE_LEGACY_KERAS=1`, or raises if TensorFlow already chose Keras 3.

    Raises:
        ImportError: TensorFlow was imported and `tf.keras` already resolved
            to Keras 3 in this process.
    """
    os.environ[LEGACY_KERAS_ENV] = "1"
    flavour = _tf_keras_flavour()
    if flavour not in (None, "tf_keras"):
        raise ImportError(
            "keras_ipguard needs tf_keras (Keras 2) but TensorFlow in this process "
            f"already uses {flavour} for tf.keras; import keras_ipguard before "
            "TensorFlow, or start Python with TF_USE_LEGACY_KERAS=1 set"
        )


def use_onednn():
    """Sets `TF_ENABLE_ONEDNN_OPTS=1` unless it is set already (`0` keeps TensorFlow's own choice).

    TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512 or newer; it leaves them off
    on an AVX2-only CPU, where they run embedding's training step 1.4x as fast on the small CNN and 1.9x on
    ResNet-20 (`benchmarks/bench_onednn.py`, `make bench`, 2-core AMD EPYC). They may change results in
    the last bits (summation order), as any other kernel would. Read once, when TensorFlow loads: it has no
    effect on a TensorFlow imported before this package.
    """
    os.environ.setdefault(ONEDNN_ENV, "1")


use_legacy_keras()
use_onednn()


def tensorflow():
    """Imports TensorFlow (quietly) and returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    return tf


def keras():
    """Returns the tf_keras module (the Keras 2 API): what the library trains with."""
    tensorflow()
    import tf_keras  # pylint: disable=import-outside-toplevel

    return tf_keras


def keras3():
    """Returns Keras 3 (`import keras`), the users' Keras, which lives beside tf_keras in this process."""
    tensorflow()
    import keras as keras_3  # pylint: disable=import-outside-toplevel

    return keras_3


def keras_of(model):
    """The Keras module a model or layer belongs to: tf_keras, or Keras 3 for a Keras 3 object."""
    keras_3 = sys.modules.get("keras")
    if keras_3 is not None and isinstance(model, keras_3.layers.Layer):
        return keras_3
    return keras()
