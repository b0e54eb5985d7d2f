"""Suspects as an owner meets them: Keras files, SavedModels and a TF Serving REST endpoint."""

import numpy as np
import pytest

from keras_ipguard import IPGuardError
from keras_ipguard.backend import keras as _keras
from keras_ipguard.backend import tensorflow
from keras_ipguard.suspects import KerasSuspect, RestSuspect, SavedModelSuspect, open_suspect

from conftest import tf_serving

keras = _keras()
tf = tensorflow()


@pytest.fixture(scope="module")
def toy_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inputs))
    return keras.Model(inputs, keras.layers.Dense(11, activation="softmax")(x))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (300, 28, 28, 1), dtype=np.uint8)


@pytest.fixture
def serving_url(toy_model):
    with tf_serving(toy_model) as url:
        yield url


def test_keras_file_savedmodel_and_rest_give_the_same_top1(toy_model, images, tmp_path, serving_url):
    expected = np.argmax(toy_model.predict(images.astype(np.float32), verbose=0), axis=1)
    toy_model.save(tmp_path / "suspect.keras")
    tf.saved_model.save(toy_model, str(tmp_path / "saved"))
    suspects = [open_suspect(tmp_path / "suspect.keras"), open_suspect(tmp_path / "saved"), open_suspect(serving_url)]
    assert [type(s) for s in suspects] == [KerasSuspect, SavedModelSuspect, RestSuspect]
    for suspect in suspects:
        np.testing.assert_array_equal(suspect.classify(images), expected)
        assert suspect.num_outputs == 11


def test_unreachable_endpoint_is_a_one_line_error():
    with pytest.raises(IPGuardError, match="did not answer"):
        RestSuspect("http://127.0.0.1:9/v1/models/none").classify(np.zeros((1, 28, 28, 1), np.uint8))


def test_missing_model_path_is_an_error(tmp_path):
    with pytest.raises(IPGuardError, match="no model at"):
        open_suspect(tmp_path / "nothing")
