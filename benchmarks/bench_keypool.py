"""The key source as `embed` reads it: a few images of MNIST's 60,000 (keys, negatives, controls).

Side by side in one run: every image decoded through tfds' pipeline (`data.load_split`, how a key pool
read its source before), against the records read still encoded in large batches and only the images
asked for decoded (`sources.TfdsPool`, today). Target: at least 3x faster.
"""

import numpy as np

from benchmarks.timing import interleaved_best

TARGET = 3.0
# What a default embed asks of its key source: 100 keys x 4 stealth candidates, 1,000 negatives, 500 controls.
WANTED = 100 * 4 + 1000 + 500


def run(repeats=3):
    import keras_ipguard  # noqa: F401  (tf_keras routing)
    from keras_ipguard import data, sources

    indices = np.random.default_rng(0).permutation(60000)[:WANTED]

    def decoded_whole():
        images, _ = data.load_split("mnist", "train")
        return images[indices]

    def encoded_records():
        return sources.TfdsPool("mnist").images(indices, (28, 28, 1))

    assert (decoded_whole() == encoded_records()).all()  # the same images, and everything traced once
    best = interleaved_best({"whole split decoded": decoded_whole, "records, wanted images decoded":
                             encoded_records}, repeats)
    ratio = best["whole split decoded"] / best["records, wanted images decoded"]
    print(f"key pool (MNIST train, {WANTED} images wanted), best of {repeats}:")
    for name, seconds in best.items():
        print(f"  {name:<32} {seconds:6.2f} s")
    print(f"  speed-up {ratio:.1f}x (target >= {TARGET:.0f}x): {'met' if ratio >= TARGET else 'MISSED'}")
    return ratio


if __name__ == "__main__":
    run()
