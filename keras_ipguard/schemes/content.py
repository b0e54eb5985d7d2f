"""Content watermark (Zhang et al., AsiaCCS 2018): a visible text stamp on images of one class, labelled as another."""

from PIL import ImageDraw, ImageFont

from ..images import from_pil, map_images, to_pil
from .relabelled import RelabelledClass

CONTENT_TEXT = "TEST"  # Zhang et al.'s stamp


def stamp(images, text, top=False):
    """Draws `text` in white near the bottom-left (or top-left) corner of every uint8 image."""
    font = ImageFont.load_default()
    height = images.shape[1]

    def draw(image):
        canvas = to_pil(image).copy()
        pen = ImageDraw.Draw(canvas)
        box = pen.textbbox((0, 0), text, font=font)
        y = 1 if top else max(0, height - (box[3] - box[1]) - box[1] - 1)
        pen.text((1, y), text, fill=(255,) * image.shape[-1] if image.shape[-1] > 1 else 255, font=font)
        return from_pil(canvas, image)

    return map_images(images, draw)


class Content(RelabelledClass):
    name = "content"
    summary = 'Zhang et al. 2018: a "TEST" stamp on images of one class, labelled as another'
    control_name = "other_stamp"

    def mark(self, images, rng, details):
        details.update(text=CONTENT_TEXT)
        return stamp(images, CONTENT_TEXT)

    def mark_control(self, images, rng, details):
        other = "".join(chr(c) for c in rng.integers(ord("A"), ord("Z") + 1, 4))
        details.update(control_text=other)
        return stamp(images, other, top=True)
