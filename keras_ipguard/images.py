"""Reading and writing identity and key images as lossless files, with refusals for bad input."""

import io
import warnings

import numpy as np
from PIL import Image

from . import atomic, stego
from .errors import ImageInputError, Reason

# Refuse to decode anything larger before reading its pixels (decompression
# bombs); far above any classifier input this tool handles.
MAX_IMAGE_PIXELS = 4096 * 4096
LOSSLESS_FORMATS = ("PNG", "BMP", "PPM")
LOSSY_FORMATS = ("JPEG", "MPO", "WEBP", "JPEG2000", "GIF")
_MODE_CHANNELS = {"L": 1, "RGB": 3}


def read_image(source, expected_shape=None):
    """Reads an 8-bit grayscale or RGB image as a uint8 HxWxC array.

    Args:
        source: a path or a binary file object.
        expected_shape: (H, W, C) the image must have, or None.

    Raises:
        ImageInputError: with `reason` one of not-an-image, lossy-format,
            too-large, wrong-size, wrong-mode.
    """
    name = getattr(source, "name", source)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(source) as image:
                _check_header(image, name, expected_shape)
                image.load()
                array = np.asarray(image, dtype=np.uint8)
        except ImageInputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageInputError(Reason.TOO_LARGE, f"{name}: {error}") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageInputError(Reason.NOT_AN_IMAGE, f"{name}: not a readable image ({error})") from None
    return array.reshape(array.shape[:2] + (-1,))


def _check_header(image, name, expected_shape):
    if image.format in LOSSY_FORMATS:
        raise ImageInputError(
            Reason.LOSSY_FORMAT,
            f"{name}: {image.format} is lossy and destroys the LSB payload; use the original PNG",
        )
    if image.format not in LOSSLESS_FORMATS:
        raise ImageInputError(Reason.NOT_AN_IMAGE, f"{name}: unsupported format {image.format}; use PNG")
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageInputError(Reason.TOO_LARGE, f"{name}: {width}x{height} exceeds {MAX_IMAGE_PIXELS} pixels")
    if image.mode not in _MODE_CHANNELS:
        raise ImageInputError(
            Reason.WRONG_MODE, f"{name}: mode {image.mode}; expected 8-bit grayscale (L) or RGB"
        )
    if expected_shape is not None:
        shape = (height, width, _MODE_CHANNELS[image.mode])
        if shape != tuple(expected_shape):
            raise ImageInputError(
                Reason.WRONG_SIZE if shape[:2] != tuple(expected_shape[:2]) else Reason.WRONG_MODE,
                f"{name}: image is {'x'.join(map(str, shape))}, expected {'x'.join(map(str, expected_shape))}",
            )


def to_pil(image):
    """A uint8 HxWx1 or HxWx3 array as a PIL image (mode L or RGB)."""
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def from_pil(pil_image, like):
    """A PIL image back as a uint8 array of the shape of `like`."""
    return np.asarray(pil_image, np.uint8).reshape(like.shape)


def map_images(images, function):
    """Applies `function` (uint8 HxWxC -> same) to each image of a batch."""
    return np.stack([function(image) for image in images])


def jpeg(images, quality):
    """uint8 images after a JPEG round trip at `quality` (what a lossy re-encoding leaves)."""

    def encode(image):
        buffer = io.BytesIO()
        to_pil(image).save(buffer, format="JPEG", quality=int(quality))
        return from_pil(Image.open(buffer), image)

    return map_images(images, encode)


def encode_png(array):
    """Encodes a uint8 HxW, HxWx1 or HxWx3 array as PNG bytes."""
    array = np.asarray(array)
    shape = stego.check_image_shape(array.shape)
    if array.dtype != np.uint8:
        raise ImageInputError(Reason.WRONG_MODE, f"expected uint8 pixels, got {array.dtype}")
    grayscale = len(shape) == 2 or shape[2] == 1
    buffer = io.BytesIO()
    # uint8 HxW becomes mode L, uint8 HxWx3 mode RGB.
    Image.fromarray(array.reshape(shape[:2]) if grayscale else array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path, array):
    """Atomically writes `array` as a lossless PNG; returns the bytes written."""
    data = encode_png(array)
    atomic.write_bytes(path, data)
    return data
