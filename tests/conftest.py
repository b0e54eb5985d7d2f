"""Shared fixtures: small synthetic key sets and vaults built through the Python API."""

import os

import numpy as np
import pytest

import keras_ipguard  # noqa: F401  (routes TensorFlow to tf_keras before any test imports it)
from keras_ipguard import Vault

SHARED_TFDS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "tensorflow_datasets")


def synthetic_keys(count, shape, seed=0):
    """Smooth random 'natural-looking' uint8 images (not LSB-random like noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, 7, 7, shape[2]), dtype=np.uint8)
    images = np.repeat(np.repeat(coarse, shape[0] // 7 + 1, axis=1), shape[1] // 7 + 1, axis=2)
    return np.ascontiguousarray(images[:, : shape[0], : shape[1], :])


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
