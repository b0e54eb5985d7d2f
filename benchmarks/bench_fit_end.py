"""How long `fit` takes to return after its last step: Keras's own pipeline for arrays vs `batches.arrays`.

Keras turns arrays into a tf.data pipeline with tf.data's autotuning on, and
destroying its iterator waits for the autotuning thread's sleep to end (a
period doubling from 10 ms up to a minute, `keras_ipguard.batches`): the wait
depends on where a fit ends, so the benchmark runs fits of several lengths
(the attacks' and survival rounds' Adam fine-tuning of the small CNN, batch 64,
on random images) both ways, alternating, and sums their wall time and the
time from the last step's end to `fit`'s return.

Target: `batches.arrays` total <= Keras's own (ratio >= 1.0).
"""

import time

import numpy as np

TARGET_RATIO = 1.0


def run(epoch_counts=(1, 2, 3, 5, 8, 13), examples=1000, batch=64):
    from keras_ipguard import batches
    from keras_ipguard.backend import keras
    from keras_ipguard.models import build_plain_classifier

    tfk = keras()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (examples, 28, 28, 1), dtype=np.uint8).astype(np.float32)
    y = rng.integers(0, 10, examples)
    ways = {"Keras's own pipeline": lambda: ((x, y), {"batch_size": batch, "shuffle": True}),
            "batches.arrays": lambda: ((batches.arrays(x, y, batch, shuffle=True),), {})}
    ended = {}

    class LastStep(tfk.callbacks.Callback):
        def on_train_end(self, logs=None):
            ended["at"] = time.perf_counter()

    totals = {name: [0.0, 0.0] for name in ways}
    print(f"fit's return after its last step: fits of {', '.join(map(str, epoch_counts))} epochs of {examples} "
          f"random 28x28 images (small CNN, Adam, batch {batch}), each way, alternating:")
    for epochs in epoch_counts:
        for name, data in ways.items():
            tfk.utils.set_random_seed(0)
            model = build_plain_classifier("small_cnn", (28, 28, 1), 10)
            model.compile(optimizer=tfk.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
            model.fit(x[:batch], y[:batch], epochs=1, verbose=0)  # build and trace outside the timing
            args, kwargs = data()
            start = time.perf_counter()
            model.fit(*args, **kwargs, epochs=epochs, verbose=0, callbacks=[LastStep()])
            done = time.perf_counter()
            totals[name][0] += done - start
            totals[name][1] += done - ended["at"]
            print(f"  {epochs:2d} epochs, {name:22s} {done - start:7.2f} s, {done - ended['at']:6.2f} s of it after "
                  "the last step")
    (before, before_wait), (after, after_wait) = totals.values()
    ratio, verdict = before / after, "met" if before / after >= TARGET_RATIO else "MISSED"
    print(f"  total: Keras's own {before:.1f} s ({before_wait:.1f} s after last steps), batches.arrays {after:.1f} s "
          f"({after_wait:.1f} s): {ratio:.2f}x (target >= {TARGET_RATIO}: {verdict})")
    return ratio


if __name__ == "__main__":
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run()
