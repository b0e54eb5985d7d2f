"""Pruning sweep wall time per rate (attacks issue), on the small CNN and 5,000 attacker images."""

import time

import numpy as np

from keras_ipguard.attacks.pruning import DEFAULT_RATES, prune_model
from keras_ipguard.models import WatermarkedClassifier, build_backbone


def run(count=5000, shape=(28, 28, 1)):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (count,) + shape, dtype=np.uint8)
    y = rng.integers(0, 10, count)
    model = WatermarkedClassifier(build_backbone("auto", shape), 10, name="watermarked_classifier")
    print(f"Pruning sweep (TFMOT one-shot, then strip_pruning), small CNN {'x'.join(map(str, shape))}, CPU:")
    total = 0.0
    for rate in DEFAULT_RATES:
        start = time.perf_counter()
        prune_model(model, rate, x, y)
        seconds = time.perf_counter() - start
        total += seconds
        print(f"  rate {rate:.1f}  {seconds:6.2f} s")
    print(f"  whole sweep {total:6.2f} s ({total / len(DEFAULT_RATES):.2f} s per rate)")
