"""Unrelated watermark (Zhang et al., AsiaCCS 2018): out-of-distribution images, all labelled one task class."""

import numpy as np

from .. import data
from .base import Scheme, Secret


class Unrelated(Scheme):
    name = "unrelated"
    summary = "Zhang et al. 2018: out-of-distribution images (the key source) all labelled as one task class"
    uses_key_source = True

    def check(self, run):
        data.check_key_source(run.info.name, run.key_pool, run.options.keys,
                              data.DEFAULT_NEGATIVES + data.DEFAULT_CONTROLS)

    def make_secret(self, run):
        target = int(np.random.default_rng(run.secret_seed).integers(run.info.num_classes))
        key_set = run.key_set(data.DEFAULT_NEGATIVES)
        others = run.test.of_classes([c for c in range(run.info.num_classes) if c != target], data.DEFAULT_CONTROLS)[0]
        return Secret(key_set.keys, np.full(len(key_set.keys), target), {
            "key_source": (key_set.controls, np.full(len(key_set.controls), target)),
            "task": (others, np.full(len(others), target)),
        }, {"target_class": target}, key_source=run.key_source, key_source_indices=key_set.indices)
