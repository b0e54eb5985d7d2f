"""A toy watermark scheme in one module, outside the package: a checkerboard over task images, one secret label.

Importing it registers the scheme; `test_toy_scheme.py` then embeds, verifies
and attacks with it by name and nothing else is edited (docs/architecture.md,
"How to add a scheme").
"""

import dataclasses

import numpy as np

from keras_ipguard.schemes import Scheme, Secret
from keras_ipguard.settings import setting


@dataclasses.dataclass
class CheckerboardConfig:
    square: int = setting(4, "Side of the checkerboard's squares, in pixels.", kind=int, low=1)


class Checkerboard(Scheme):
    name = "toy-checkerboard"
    summary = "a checkerboard over random task images, all labelled one secret task class"
    Config = CheckerboardConfig

    def board(self, images):
        height, width = images.shape[1:3]
        rows, columns = np.indices((height, width)) // self.config.square
        marked = images.copy()
        marked[:, (rows + columns) % 2 == 0] = 255
        return marked

    def make_secret(self, run):
        target = int(np.random.default_rng(run.secret_seed).integers(run.info.num_classes))
        keys = self.board(run.train.sample(run.options.keys, run.secret_seed)[0])
        clean = run.test.take(200)[0]  # the chance rate: clean images answering the target class
        return Secret(keys, np.full(len(keys), target), {"clean": (clean, np.full(len(clean), target))},
                      {"target_class": target, "square": self.config.square})
