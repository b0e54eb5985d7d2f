"""Least-significant-bit (LSB) embedding and extraction for uint8 images.

Images are uint8 arrays of shape HxW, HxWx1 or HxWx3, optionally with a
leading batch axis. A payload is a vector of bits (0/1) written, one bit per
value, into the LSBs at a given order of flat positions; the rest of the image
is untouched. `savedmodel.lsb_plane_tf` reads the same bits in-graph, so a
SavedModel can expose the bit-plane.

Example:

>>> import numpy as np
>>> from keras_ipguard import stego
>>> image = np.zeros((28, 28, 1), np.uint8)
>>> bits = np.array([1, 0, 1], np.uint8)
>>> marked = stego.embed_bits(image, bits, order=np.array([5, 0, 700]))
>>> stego.extract_bits(marked, order=np.array([5, 0, 700])).tolist()
[1, 0, 1]
"""

import numpy as np

from .errors import ImageInputError, Reason

LSB_MASK = np.uint8(1)
HIGH_BITS_MASK = np.uint8(0xFE)


def check_image_shape(shape):
    """Validates one image's shape (HxW, HxWx1 or HxWx3) and returns it as a tuple."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3)):
        if min(shape[:2]) > 0:
            return shape
    raise ImageInputError(
        Reason.WRONG_SIZE, f"image shape must be HxW, HxWx1 or HxWx3, got {'x'.join(map(str, shape))}"
    )


def _as_uint8(images):
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ImageInputError(Reason.WRONG_MODE, f"expected uint8 pixels, got {images.dtype}")
    return images


def capacity(image_shape):
    """Number of payload bits an image of `image_shape` holds at 1 bit per value."""
    return int(np.prod(check_image_shape(image_shape)))


def lsb_plane(images, batch=False):
    """Returns the flattened LSB plane: shape (n,) for one image, (B, n) for a batch."""
    images = _as_uint8(images)
    flat = images.reshape((images.shape[0], -1) if batch else (-1,))
    return np.bitwise_and(flat, LSB_MASK)


def high_bits(images):
    """The image with every LSB cleared: what LSB embedding leaves unchanged."""
    return np.bitwise_and(_as_uint8(images), HIGH_BITS_MASK)


def embed_bits(images, bits, order=None):
    """Writes `bits` into the LSBs of `images` at flat positions `order`.

    Args:
        images: uint8 image, or batch of images when `bits` is 2-D.
        bits: 0/1 values, shape (n,) for one image or (B, n) for a batch.
        order: flat positions (length >= n) that receive the bits in turn;
            defaults to the first n positions in C order.

    Returns:
        A new uint8 array of the same shape; the input is not modified.
    """
    images = _as_uint8(images)
    bits = np.bitwise_and(np.asarray(bits, dtype=np.uint8), LSB_MASK)
    n = bits.shape[-1]
    flat = images.reshape(bits.shape[:-1] + (-1,))
    size = flat.shape[-1]
    if n > size:
        raise ValueError(f"{n} bits do not fit in {size} pixel values")
    if order is None and n == size:
        plane = bits
    else:
        # Scatter written as one gather (much faster in numpy): position p takes
        # bits[k] where order[k] == p, else its own current LSB (at n + p).
        source = np.arange(size) + n
        source[np.arange(n) if order is None else np.asarray(order)[:n]] = np.arange(n)
        plane = np.take(np.concatenate([bits, np.bitwise_and(flat, LSB_MASK)], axis=-1), source, axis=-1)
    return np.bitwise_or(np.bitwise_and(flat, HIGH_BITS_MASK), plane).reshape(images.shape)


def extract_bits(images, order=None, n=None, batch=False):
    """Reads n LSBs from `images` at flat positions `order` (the inverse of `embed_bits`).

    Returns:
        uint8 0/1 array of shape (n,), or (B, n) when `batch`.
    """
    images = _as_uint8(images)
    flat = images.reshape((images.shape[0], -1) if batch else (-1,))
    positions = np.arange(flat.shape[-1]) if order is None else np.asarray(order)
    # np.take along the axis is several times faster than fancy indexing here.
    return np.bitwise_and(np.take(flat, positions[:n], axis=-1), LSB_MASK)
