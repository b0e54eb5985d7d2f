"""A small convolutional autoencoder of images, and its reconstruction error.

The query-modification attack (`attacks.query_modification`) uses it to flag and clean
unusual queries; `embed` uses one trained on the owner's data to choose key
images that such a filter finds ordinary (stealthy keys).
"""

import numpy as np

from . import batches
from .backend import keras as _keras


def train_autoencoder(images, epochs=10, seed=0):
    """A small convolutional autoencoder of uint8 images (scaled to [0, 1] inside)."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    shape = images.shape[1:]
    inputs = keras.Input(shape)
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(x)
    outputs = keras.layers.Conv2D(shape[-1], 3, padding="same", activation="sigmoid")(x)
    autoencoder = keras.Model(inputs, outputs)
    autoencoder.compile("adam", "mse")
    pixels = images.astype(np.float32)
    batches.fit(autoencoder, pixels, pixels / 255.0, 64, epochs)
    return autoencoder


def reconstruct(autoencoder, images, batch_size=256):
    """The autoencoder's reconstruction of uint8 images, as floats in [0, 1]."""
    return batches.scores(autoencoder, images, batch_size)


def reconstruction_errors(autoencoder, images, reconstruction=None):
    """Mean squared error per image between the uint8 images (scaled to [0, 1]) and their reconstruction.

    Pass `reconstruction` when it is already at hand, to skip predicting it again.
    """
    images = np.asarray(images)
    if reconstruction is None:
        reconstruction = reconstruct(autoencoder, images)
    return np.mean((reconstruction - images / 255.0) ** 2, axis=tuple(range(1, images.ndim)))
