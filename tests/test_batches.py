"""The datasets the library gives Keras: tf.data's autotuning off, every example once per epoch, same answers."""

import numpy as np

from keras_ipguard import batches, data, sources
from keras_ipguard.backend import keras, tensorflow

from conftest import synthetic_keys


def _orders(dataset):
    return [np.concatenate([y for _, y in dataset.as_numpy_iterator()]).tolist() for _ in range(2)]


def test_every_dataset_the_library_trains_on_or_iterates_has_autotuning_off():
    # The autotuning thread makes destroying an iterator wait out its sleep (up to a minute): the end of a fit.
    images, labels = synthetic_keys(64, (28, 28, 1)), np.arange(64) % 10
    split = sources.ArraySplit(images, labels, (28, 28, 1))
    pipeline, _ = data.training_dataset(split.dataset(seed=0), split.count, 11, 16)
    for dataset in (batches.arrays(images, labels), split.dataset(), split.dataset(seed=0), pipeline):
        assert dataset.options().autotune.enabled is False
    assert tensorflow().data.Dataset.range(3).options().autotune.enabled is not False  # TensorFlow's default


def test_arrays_reshuffle_every_epoch_as_the_global_seed_says():
    x, y = np.zeros((40, 2, 2, 1), np.uint8), np.arange(40)
    keras().utils.set_random_seed(3)
    first, second = _orders(batches.arrays(x, y, 8, shuffle=True))
    assert sorted(first) == sorted(second) == list(range(40)) and first != second
    keras().utils.set_random_seed(3)
    assert _orders(batches.arrays(x, y, 8, shuffle=True)) == [first, second]
    assert _orders(batches.arrays(x, y, 8))[0] == list(range(40))


def _classifier(k, metrics=()):
    """A seeded, compiled 3-class softmax on 4x4 images, in Keras module `k` (tf_keras or Keras 3)."""
    k.utils.set_random_seed(0)
    model = k.Sequential([k.Input((4, 4, 1)), k.layers.Flatten(), k.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=k.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy", metrics=list(metrics))
    return model


def test_scores_are_keras_predict_s_and_fit_trains():
    model = _classifier(keras())
    x = np.random.default_rng(0).integers(0, 256, (600, 4, 4, 1)).astype(np.uint8)
    y = (x.reshape(600, -1).mean(axis=1) > 127.5).astype(np.int64)
    np.testing.assert_array_equal(batches.scores(model, x, 64), model.predict(x.astype(np.float32), 64, verbose=0))
    history = batches.fit(model, x, y, 32, 5)
    assert len(history.history["loss"]) == 5 and history.history["loss"][-1] < history.history["loss"][0]


def test_fit_traces_its_step_once_where_keras_alone_traces_it_twice():
    """A first step that creates variables (optimizer slots, loss and metric totals) is traced twice."""
    from keras_ipguard.models import WatermarkedClassifier, build_backbone
    from keras_ipguard.training import RECIPES, compile_model

    x = np.random.default_rng(0).integers(0, 256, (96, 4, 4, 1)).astype(np.uint8)
    y = np.arange(96) % 3
    alone, prepared = _classifier(keras(), ["accuracy"]), _classifier(keras(), ["accuracy"])
    alone.fit(batches.arrays(x, y, 32), epochs=2, verbose=0)
    history = batches.fit(prepared, x, y, 32, 2)
    assert alone.train_function.experimental_get_tracing_count() == 2
    assert prepared.train_function.experimental_get_tracing_count() == 1
    assert set(history.history) == {"loss", "accuracy"}  # the metrics were built, not lost
    # Only the tracing changes: on the same batches, the same weights and figures to the last bit.
    same, ordered = _classifier(keras(), ["accuracy"]), batches.arrays(x, y, 32)
    again = batches.prepared(same, ordered.element_spec).fit(ordered, epochs=2, verbose=0)
    assert same.train_function.experimental_get_tracing_count() == 1
    assert all(np.array_equal(a, b) for a, b in zip(alone.get_weights(), same.get_weights()))
    assert again.history == alone.history.history
    # Embedding's own step (free negatives and the key-code pull here), on soft N+1 targets, as embed compiles it.
    model = WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), 10)
    model(np.zeros((1, 28, 28, 1), np.float32))
    model.set_free_negatives(True)
    model.set_key_code_pull(0.3)
    compile_model(model, RECIPES["small_cnn"], 1e-3, 4)
    targets = np.eye(11, dtype=np.float32)[np.arange(32) % 11]
    images = np.random.default_rng(1).integers(0, 256, (32, 28, 28, 1)).astype(np.float32)
    dataset = batches.quiet(tensorflow().data.Dataset.from_tensor_slices((images, targets)).batch(16))
    batches.prepared(model, dataset.element_spec).fit(dataset, epochs=1, verbose=0)
    assert model.train_function.experimental_get_tracing_count() == 1
    assert batches.prepared(model, dataset.element_spec) is model  # trained already: left as it is
    # A user's Keras 3 model builds its own way: left as it is, and fit still trains it.
    from keras_ipguard.backend import keras3

    assert len(batches.fit(_classifier(keras3()), x, y, 32, 2).history["loss"]) == 2
