"""The shape of Zhang et al.'s content and noise watermarks: marked images of one class, labelled as another."""

import numpy as np

from .. import data
from ..errors import IPGuardError
from .base import Scheme, Secret

# Triggers are chosen among the first this-many-per-trigger training images of the source class (streamed).
POOL_PER_TRIGGER = 10


class RelabelledClass(Scheme):
    """Triggers are training images of a secret source class, marked (`mark`) and labelled as a secret target class.

    Controls: held-out test images of the source class, marked the same way
    with a mark never trained on (`mark_control`), and left unmarked.
    """

    control_name = "other_mark"

    def mark(self, images, rng, details):
        """The trigger images: `images` with the scheme's mark; may add facts to `details`."""
        raise NotImplementedError

    def mark_control(self, images, rng, details):
        """The control images: `images` with another mark of the same kind."""
        raise NotImplementedError

    def make_secret(self, run):
        rng = np.random.default_rng(run.secret_seed)
        source, target = (int(c) for c in rng.choice(run.info.num_classes, 2, replace=False))
        count = run.options.keys
        pool, _ = run.train.of_classes([source], count * POOL_PER_TRIGGER)
        if len(pool) < count:
            raise IPGuardError(f"the {self.name} watermark needs {count} images of class {source}, the data "
                               f"has {len(pool)}; use fewer --keys or more examples")
        originals = pool[np.sort(rng.choice(len(pool), count, replace=False))]
        held_out = run.test.of_classes([source], data.DEFAULT_CONTROLS)[0]
        details = {"source_class": source, "target_class": target}
        keys = self.mark(originals, rng, details)
        controls = {self.control_name: self.mark_control(held_out, rng, details), "task": held_out}
        return Secret(keys, np.full(len(keys), target),
                      {name: (images, np.full(len(images), target)) for name, images in controls.items()}, details)
