import numpy as np
import pytest

from keras_ipguard import ImageInputError, stego

SHAPES = [(28, 28), (28, 28, 1), (32, 32, 3)]


@pytest.mark.parametrize("shape", SHAPES)
def test_embed_then_extract_returns_the_bits_at_the_given_positions(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    n = stego.capacity(shape)
    order = rng.permutation(n)
    bits = rng.integers(0, 2, 500, dtype=np.uint8)
    marked = stego.embed_bits(image, bits, order)
    assert marked.shape == image.shape
    np.testing.assert_array_equal(stego.extract_bits(marked, order, 500), bits)
    # Only LSBs change, and only at the first 500 positions of the order.
    np.testing.assert_array_equal(stego.high_bits(marked), stego.high_bits(image))
    changed = np.flatnonzero(marked.reshape(-1) != image.reshape(-1))
    assert set(changed) <= set(order[:500])


def test_embed_does_not_modify_its_input():
    image = np.full((28, 28, 1), 7, np.uint8)
    stego.embed_bits(image, np.zeros(784, np.uint8))
    assert (image == 7).all()


def test_batches_embed_and_extract_per_image():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    bits = rng.integers(0, 2, (5, 3072), dtype=np.uint8)
    marked = stego.embed_bits(images, bits)
    np.testing.assert_array_equal(stego.lsb_plane(marked, batch=True), bits)
    np.testing.assert_array_equal(stego.extract_bits(marked, batch=True), bits)


def test_float_images_are_refused():
    with pytest.raises(ImageInputError, match="uint8"):
        stego.lsb_plane(np.zeros((28, 28), np.float32))


@pytest.mark.parametrize("shape", [(28,), (28, 28, 2), (28, 28, 4), (0, 28)])
def test_unsupported_shapes_are_refused(shape):
    with pytest.raises(ImageInputError, match="HxW"):
        stego.capacity(shape)
