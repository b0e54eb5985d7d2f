"""Suspects as an owner meets them: Keras files, SavedModels and a TF Serving REST endpoint."""

import http.server
import json
import threading

import numpy as np
import pytest

from keras_ipguard import IPGuardError
from keras_ipguard.backend import keras as _keras
from keras_ipguard.backend import tensorflow
from keras_ipguard.suspects import KerasSuspect, RestSuspect, SavedModelSuspect, open_suspect

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


class _ServingHandler(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST :predict API over a Keras model, on 127.0.0.1."""

    model = None

    def do_POST(self):  # noqa: N802  (http.server's naming)
        if not self.path.endswith(":predict"):
            self.send_error(404)
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        scores = self.model.predict(np.asarray(body["instances"], np.float32), verbose=0)
        payload = json.dumps({"predictions": scores.tolist()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def serving_url(toy_model):
    _ServingHandler.model = toy_model
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ServingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/models/stolen"
    server.shutdown()
    server.server_close()


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
