"""Users' own models, Keras 3 and tf_keras, taken in by `--base-model` and saved back in their own Keras."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_ipguard import IPGuardError, data
from keras_ipguard.backend import keras as tf_keras_module
from keras_ipguard.backend import keras3, keras_of
from keras_ipguard.base_models import watermarked_base_model
from keras_ipguard.models import WatermarkedClassifier, harden_kernel_scale, keras_file_flavour, load_model, save_model
from keras_ipguard.sources import ArraySplit
from keras_ipguard.suspects import open_suspect

INFO = data.DatasetInfo("toy", 10, (28, 28, 1), tuple(map(str, range(10))), {})
IMAGES = np.random.default_rng(0).integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)


def _classifier(keras, activation="softmax", unit_inputs=False, last=None, name="m"):
    keras.utils.set_random_seed(0)  # the same weights every run: whether the scale matters is then fixed
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, use_bias=False)(inputs if unit_inputs else keras.layers.Rescaling(1 / 255.0)(inputs))
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    # Random biases make the answers depend on the input scale, as a trained model's do.
    x = keras.layers.Dense(16, activation="relu", bias_initializer=keras.initializers.RandomNormal(stddev=3.0, seed=1))(
        keras.layers.Flatten()(x))
    outputs = (last or keras.layers.Dense(10, activation=activation))(x)
    return keras.Model(inputs, outputs, name=name)


def _split(labels):
    return ArraySplit(IMAGES, labels, (28, 28, 1))


def _saved(model, path):
    model.save(path)
    return path


@pytest.fixture(params=["keras3", "tf_keras"])
def keras(request):
    return keras3() if request.param == "keras3" else tf_keras_module()


def test_a_base_model_grows_a_watermark_class_in_its_own_keras_and_keeps_its_answers(keras, tmp_path):
    base = _classifier(keras)
    labels = np.argmax(base.predict(IMAGES.astype(np.float32), verbose=0), axis=-1)
    model, accuracy, note = watermarked_base_model(_saved(base, tmp_path / "base.keras"), INFO, _split(labels))
    assert keras_of(model) is keras and accuracy == 1.0 and "kept" in note
    scores = model.predict(IMAGES.astype(np.float32), verbose=0)
    assert scores.shape == (64, 11)
    assert (np.argmax(scores[:, :10], axis=-1) == labels).all()
    assert harden_kernel_scale(model, 16.0) == 1  # the convolution that feeds BatchNormalization
    np.testing.assert_allclose(model.predict(IMAGES.astype(np.float32), verbose=0), scores, atol=1e-5)
    save_model(model, tmp_path)
    flavour = "keras3" if keras.__name__ == "keras" else "tf_keras"
    assert keras_file_flavour(tmp_path / "model.keras") == flavour
    assert keras_of(load_model(tmp_path)) is keras
    if flavour == "tf_keras":
        assert isinstance(model, WatermarkedClassifier)


def test_logits_and_unit_range_inputs_are_detected(keras, tmp_path):
    base = _classifier(keras, activation=None, unit_inputs=True)
    labels = np.argmax(base.predict(IMAGES / 255.0, verbose=0), axis=-1)
    model, accuracy, note = watermarked_base_model(_saved(base, tmp_path / "base.keras"), INFO, _split(labels))
    assert accuracy == 1.0 and "Rescaling(1/255) layer was prepended" in note and "logits" in note
    scores = model.predict(IMAGES.astype(np.float32), verbose=0)
    np.testing.assert_allclose(scores.sum(axis=-1), 1.0, rtol=1e-5)  # a softmax now
    assert (np.argmax(scores[:, :10], axis=-1) == labels).all()


@pytest.mark.parametrize("change, message", [
    ({"last": "flatten"}, "last layer is a Flatten; it must be the Dense classifier layer of 10 units"),
    ({"activation": "sigmoid"}, "sigmoid activation; ipguard protects single-label classifiers"),
    ({"units": 7}, "has 7 outputs, toy has 10 classes"),
])
def test_models_that_are_no_n_class_classifier_are_refused(keras, tmp_path, change, message):
    last = keras.layers.Flatten() if change.get("last") else keras.layers.Dense(
        change.get("units", 10), activation=change.get("activation", "softmax"))
    path = _saved(_classifier(keras, last=last), tmp_path / "base.keras")
    with pytest.raises(IPGuardError, match=message):
        watermarked_base_model(path, INFO, _split(np.zeros(64, np.int64)))


def test_an_input_of_another_size_is_refused(keras, tmp_path):
    inputs = keras.Input((32, 32, 3))
    base = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs)))
    with pytest.raises(IPGuardError, match=r"takes inputs of shape \(32, 32, 3\), toy has \(28, 28, 1\)"):
        watermarked_base_model(_saved(base, tmp_path / "base.keras"), INFO, _split(np.zeros(64, np.int64)))


def test_a_keras_3_model_with_an_unregistered_custom_layer_is_a_one_line_error(tmp_path):
    script = textwrap.dedent(
        f"""
        import keras
        @keras.saving.register_keras_serializable(package="user")
        class Doubler(keras.layers.Layer):
            def call(self, x):
                return 2 * x
        inputs = keras.Input((28, 28, 1))
        outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(Doubler()(inputs)))
        keras.Model(inputs, outputs).save({str(tmp_path / 'custom.keras')!r})
        """
    )
    made = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-2000:]
    with pytest.raises(IPGuardError, match=r"--base-model .*custom layer \(Doubler\) that is not registered"):
        watermarked_base_model(tmp_path / "custom.keras", INFO, _split(np.zeros(64, np.int64)))


def test_any_callable_is_a_suspect():
    labels = open_suspect(lambda images: np.full(len(images), 3)).classify(IMAGES)
    assert labels.tolist() == [3] * 64
    scored = open_suspect(lambda images: np.eye(11)[np.full(len(images), 10)])
    assert scored.classify(IMAGES).tolist() == [10] * 64 and scored.num_outputs == 11
