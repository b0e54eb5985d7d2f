"""Shared fixtures: small synthetic key sets and vaults built through the Python API."""

import contextlib
import http.server
import json
import os
import threading

import numpy as np
import pytest

# Under pytest-xdist with a worker per core (`make test`), each worker's TensorFlow would otherwise run its ops
# on a thread per core, so the workers' threads contend for the cores: one op thread each.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")) >= (os.cpu_count() or 1):
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

import keras_ipguard  # noqa: E402,F401  (routes TensorFlow to tf_keras before any test imports it)
from keras_ipguard import Vault

SHARED_TFDS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "tensorflow_datasets")


def pytest_collection_modifyitems(items):
    """Test files that train on real data (`slow` tests) run first, each file's tests in their order.

    Under `make test` (pytest-xdist, one file per worker at a time) the long files start at once and
    the quick ones fill the gaps, instead of the longest file starting last.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


def synthetic_keys(count, shape, seed=0):
    """Smooth random 'natural-looking' uint8 images (not LSB-random like noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, 7, 7, shape[2]), dtype=np.uint8)
    images = np.repeat(np.repeat(coarse, shape[0] // 7 + 1, axis=1), shape[1] // 7 + 1, axis=2)
    return np.ascontiguousarray(images[:, : shape[0], : shape[1], :])


class _ServingHandler(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST :predict API over a Keras model: its scores, or top-1 labels only."""

    model = None
    labels_only = False

    def do_POST(self):  # noqa: N802  (http.server's naming)
        if not self.path.endswith(":predict"):
            self.send_error(404)
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        scores = self.model.predict(np.asarray(body["instances"], np.float32), verbose=0)
        predictions = np.argmax(scores, axis=-1).tolist() if self.labels_only else scores.tolist()
        payload = json.dumps({"predictions": predictions}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def tf_serving(model, labels_only=False):
    """A TF-Serving-format REST endpoint for `model` on 127.0.0.1 (a free port); yields its model URL."""
    handler = type("Handler", (_ServingHandler,), {"model": model, "labels_only": labels_only})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/models/stolen"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def make_vault(tmp_path):
    """Factory: a fresh vault with K synthetic key images of `shape`."""

    def make(name="vault", count=8, shape=(28, 28, 1), seed=0):
        return Vault.create(
            tmp_path / name,
            dataset="fashion_mnist",
            num_classes=10,
            input_shape=shape,
            key_images=synthetic_keys(count, shape, seed),
            key_source="synthetic",
            seed=seed,
        )

    return make


@pytest.fixture
def vault(make_vault):
    return make_vault()
