"""Serving latency: the exported SavedModel's serving_default vs the Keras model (export issue)."""

import tempfile
from pathlib import Path

import numpy as np

from keras_ipguard import Vault
from keras_ipguard.backend import tensorflow
from keras_ipguard.models import WatermarkedClassifier, build_backbone, load_model, save_model
from keras_ipguard.savedmodel import export

from .timing import interleaved_best


def run(shape=(28, 28, 1), batches=(1, 32, 256)):
    tf = tensorflow()
    with tempfile.TemporaryDirectory() as root:
        model = WatermarkedClassifier(build_backbone("auto", shape), 10, name="watermarked_classifier")
        vault = Vault.create(Path(root) / "vault", dataset="fashion_mnist", num_classes=10, input_shape=shape,
                             populate=lambda tmp: save_model(model, tmp / "model"))
        serving = tf.saved_model.load(str(export(vault, Path(root) / "serving").path)).signatures["serving_default"]
        keras_model = load_model(vault.model_path)
        print(f"Latency per batch, small CNN {'x'.join(map(str, shape))}, CPU, best of 20 (ms):")
        print(f"  {'batch':>5}  {'SavedModel serving_default':>27}  {'Keras predict':>14}  {'Keras __call__':>14}")
        for size in batches:
            images = np.random.default_rng(size).integers(0, 256, (size,) + shape, dtype=np.uint8)
            tensor = tf.constant(images)
            floats = images.astype(np.float32)
            serving(images=tensor)
            keras_model(floats, training=False)
            best = interleaved_best(
                {
                    "serving": lambda tensor=tensor: serving(images=tensor)["classes"].numpy(),
                    "predict": lambda floats=floats: keras_model.predict(floats, verbose=0),
                    "call": lambda floats=floats: keras_model(floats, training=False).numpy(),
                },
                repeats=20,
            )
            print(f"  {size:>5}  {1000 * best['serving']:>27.2f}  {1000 * best['predict']:>14.2f}  "
                  f"{1000 * best['call']:>14.2f}")
