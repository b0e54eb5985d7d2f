"""tf.data datasets of arrays for Keras `fit` and `predict`, without tf.data's autotuning thread.

TensorFlow (2.21 measured) autotunes every tf.data pipeline on a background
thread that sleeps between optimisations, its period doubling from 10 ms up to
a minute, and destroying an iterator waits until that sleep is over: at the end
of every `fit` and `predict` (Keras builds such a pipeline for arrays too) and
of every pass over a dataset. On the 2-core CPU (2026-12-04) a two-epoch fit of
the small CNN on 3,000 Fashion-MNIST images took 21.7 s instead of 12.1 s, 9.6 s
of it after its last step, and a 5-epoch embed spent 13 s there (42 s instead of
29 s); a long run can lose up to a minute per fit. With autotuning off
(`quiet`) the wait is gone and the steps are as fast: these pipelines only
slice, batch and map, which needs no tuning (maps keep a fixed parallelism of
up to 16 threads, prefetch its own buffer tuning).

Every dataset the library iterates or trains on goes through `quiet`: the
training pipeline (`data.training_dataset`), the task splits (`sources`), the
key pools, and the arrays given to `fit` and `predict` here.

`fit` also creates, before training, the variables a tf_keras model's first
training step would create (the optimizer's slots, the loss's and metrics'
totals: `prepared`): a step that creates variables is traced twice by
TensorFlow, so every first `fit` of a model spent a second trace of its step,
about as long as the first (0.4-0.7 s for the small CNN's plain step, more for
embedding's own step, measured 2026-12-05); prepared, it is traced once.
"""

import numpy as np

from .backend import keras, keras_of, tensorflow


def quiet(dataset):
    """`dataset` with tf.data's autotuning (and its background thread) off."""
    options = tensorflow().data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def arrays(x, y=None, batch_size=64, shuffle=False):
    """Batches of float32 `x` (with `y`, when given) for `fit` or `predict`; `shuffle` reshuffles every epoch
    (seeded by the global seed, as Keras's own shuffling of arrays is)."""
    tf = tensorflow()
    x = np.asarray(x, np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(x if y is None else (x, np.asarray(y)))
    if shuffle:
        dataset = dataset.shuffle(len(x), reshuffle_each_iteration=True)
    return quiet(dataset.batch(batch_size).prefetch(1))


def prepared(model, element_spec):
    """`model` (compiled, not yet trained) with the variables its first training step would create made now:
    its optimizer's, and its compiled loss's and metrics' (built from zeros of `element_spec`, an (x, y)
    pair of TensorSpecs with a free batch dimension), so that `fit` traces its step once instead of twice.
    Keras 3 models, models already trained, and models without these build methods are left as they are."""
    tf = tensorflow()
    if keras_of(model) is not keras() or model.train_function is not None or not model.built:
        return model  # Keras 3 builds its own way; a trained model has its variables
    compiled_loss, compiled_metrics, optimizer = model.compiled_loss, model.compiled_metrics, model.optimizer
    if compiled_loss is None or compiled_metrics is None or not hasattr(optimizer, "build"):
        return model  # not compiled, or a legacy optimizer
    x_spec, y_spec = element_spec
    optimizer.build(model.trainable_variables)
    predictions = model(tf.zeros([1, *x_spec.shape[1:]], x_spec.dtype), training=False)
    compiled_loss.build(predictions)
    compiled_metrics.build(predictions, tf.zeros([1, *y_spec.shape[1:]], y_spec.dtype))
    return model


def fit(model, x, y, batch_size, epochs, callbacks=()):
    """`model.fit` on `x`/`y` reshuffled every epoch (`arrays`), quietly, its step traced once (`prepared`);
    its History."""
    dataset = arrays(x, y, batch_size, shuffle=True)
    # shuffle=False: the dataset shuffles (Keras 3 warns when asked to shuffle a dataset).
    return prepared(model, dataset.element_spec).fit(dataset, epochs=epochs, shuffle=False,
                                                     callbacks=list(callbacks), verbose=0)


def scores(model, images, batch_size=512):
    """`model`'s outputs (B, outputs) on uint8 or float images, in batches (tf_keras or Keras 3)."""
    return model.predict(arrays(images, batch_size=batch_size), verbose=0)
