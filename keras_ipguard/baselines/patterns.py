"""Trigger sets that need no trained model: content, noise, unrelated, adi."""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .. import data
from ..errors import IPGuardError
from ..images import from_pil as _back
from ..images import map_images
from ..images import to_pil as _pil
from . import TriggerSet

CONTENT_TEXT = "TEST"  # Zhang et al.'s stamp
# Standard deviation of the fixed noise pattern, in pixel levels (0..255): about 0.19 of the range.
NOISE_SIGMA = 48.0


def stamp(images, text, top=False):
    """Draws `text` in white near the bottom-left (or top-left) corner of every uint8 image."""
    font = ImageFont.load_default()
    height = images.shape[1]

    def draw(image):
        canvas = _pil(image).copy()
        pen = ImageDraw.Draw(canvas)
        box = pen.textbbox((0, 0), text, font=font)
        y = 1 if top else max(0, height - (box[3] - box[1]) - box[1] - 1)
        pen.text((1, y), text, fill=(255,) * image.shape[-1] if image.shape[-1] > 1 else 255, font=font)
        return _back(canvas, image)

    return map_images(images, draw)


def add_pattern(images, pattern):
    return np.clip(np.round(images.astype(np.float32) + pattern), 0, 255).astype(np.uint8)


def abstract_images(count, shape, rng):
    """Adi et al.-style abstract images: a smooth random colour field with random shapes drawn on it."""
    height, width, channels = shape
    mode = "L" if channels == 1 else "RGB"
    out = np.zeros((count,) + tuple(shape), np.uint8)
    for index in range(count):
        field = rng.integers(0, 256, (4, 4, channels), dtype=np.uint8)
        canvas = _pil(field).resize((width, height), Image.BICUBIC).convert(mode)
        pen = ImageDraw.Draw(canvas)
        for _ in range(rng.integers(3, 7)):
            x0, x1 = sorted(rng.integers(0, width, 2))
            y0, y1 = sorted(rng.integers(0, height, 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, channels)) if channels > 1 else int(rng.integers(0, 256))
            [pen.ellipse, pen.rectangle, pen.line][rng.integers(0, 3)]((x0, y0, x1 + 1, y1 + 1), fill=colour)
        out[index] = _back(canvas, out[index])
    return out


def _of_class(images, labels, wanted, count, rng, what):
    index = np.flatnonzero(labels == wanted)
    if len(index) < count:
        raise IPGuardError(f"{what} needs {count} images of class {wanted}, the data has {len(index)}; "
                           "use fewer --keys or more examples")
    return images[np.sort(rng.choice(index, count, replace=False))]


def build_triggers(scheme, info, train, test, count, seed, key_set=None, controls=data.DEFAULT_CONTROLS):
    """The trigger set of `scheme` ('content', 'noise', 'unrelated' or 'adi').

    Args:
        info: the task's `data.DatasetInfo`.
        train, test: (uint8 images, int labels) of the task.
        count: K, the number of triggers.
        seed: secret seed of every random choice (derived from the owner key).
        key_set: `data.KeySet` of out-of-distribution images (needed by 'unrelated').
        controls: at most this many images per control set.
    """
    rng = np.random.default_rng(seed)
    classes = info.num_classes
    source, target = (int(c) for c in rng.choice(classes, 2, replace=False))
    test_x, test_y = test
    details = {"source_class": source, "target_class": target}
    if scheme in ("content", "noise"):
        originals = _of_class(*train, source, count, rng, f"the {scheme} watermark")
        held_out = test_x[test_y == source][:controls]
        if scheme == "content":
            other = "".join(chr(c) for c in rng.integers(ord("A"), ord("Z") + 1, 4))
            images, control = stamp(originals, CONTENT_TEXT), stamp(held_out, other, top=True)
            details.update(text=CONTENT_TEXT, control_text=other)
        else:
            pattern = rng.normal(0.0, NOISE_SIGMA, info.input_shape)
            images, control = add_pattern(originals, pattern), add_pattern(held_out, rng.normal(0.0, NOISE_SIGMA, info.input_shape))
            details.update(noise_sigma=NOISE_SIGMA)
        labels = np.full(count, target)
        control_sets = {f"other_{'stamp' if scheme == 'content' else 'noise'}": control, "task": held_out}
        return TriggerSet(images, labels, {k: (v, np.full(len(v), target)) for k, v in control_sets.items()}, details)
    if scheme == "unrelated":
        if key_set is None:
            raise IPGuardError("the unrelated watermark needs out-of-distribution images (a key source)")
        others = test_x[test_y != target][:controls]
        return TriggerSet(key_set.keys, np.full(len(key_set.keys), target), {
            "key_source": (key_set.controls, np.full(len(key_set.controls), target)),
            "task": (others, np.full(len(others), target)),
        }, {"target_class": target})
    if scheme == "adi":
        images = abstract_images(count + controls, info.input_shape, rng)
        labels = rng.integers(0, classes, count + controls)
        return TriggerSet(images[:count], labels[:count], {"abstract": (images[count:], labels[count:])},
                          {"labels": "uniform random over the task classes"})
    raise IPGuardError(f"scheme {scheme!r} has no trigger builder here")
