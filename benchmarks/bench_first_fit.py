"""A model's first `fit`: Keras alone (its step traced twice) vs `batches.prepared` first (traced once).

A tf.function whose first call creates variables is traced twice; a tf_keras
model's first training step creates its optimizer's slots and its loss's and
metrics' totals, so every fresh model's first `fit` traced its step twice. The
attacks, the owner's survival rounds and extraction fit a fresh copy each
time, and `embed` fits its model once per phase. The benchmark times short
first fits of fresh models both ways, alternating: the attacks' plain step
(small CNN, Adam, sparse labels) and embedding's own step (free negatives,
the key-code pull and the pruning term, soft N+1 targets).

Target: prepared total <= Keras alone (ratio >= 1.0).
"""

import time

import numpy as np

TARGET_RATIO = 1.0


def run(repeats=4, examples=640, batch=64):
    from keras_ipguard import batches
    from keras_ipguard.backend import keras, tensorflow
    from keras_ipguard.models import WatermarkedClassifier, build_backbone, build_plain_classifier
    from keras_ipguard.training import RECIPES, compile_model

    tfk, tf = keras(), tensorflow()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (examples, 28, 28, 1), dtype=np.uint8).astype(np.float32)
    labels = rng.integers(0, 10, examples)
    soft = np.eye(11, dtype=np.float32)[rng.integers(0, 11, examples)]

    def plain():
        model = build_plain_classifier("small_cnn", (28, 28, 1), 10)
        model.compile(optimizer=tfk.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        return model, batches.arrays(x, labels, batch, shuffle=True)

    def embedding():
        model = WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), 10)
        model(tf.zeros([1, 28, 28, 1]))
        model.set_free_negatives(True)
        model.set_key_code_pull(0.3)
        model.set_prune_robustness(0.3)
        compile_model(model, RECIPES["small_cnn"], 1e-3, examples // batch)
        return model, batches.quiet(tf.data.Dataset.from_tensor_slices((x, soft)).batch(batch))

    print(f"a fresh model's first fit, one epoch of {examples} random 28x28 images (batch {batch}), {repeats} models "
          "each way, alternating:")
    ratios = []
    for name, make in (("the attacks' plain step", plain), ("embedding's own step", embedding)):
        totals = {"Keras alone": 0.0, "prepared": 0.0}
        traces = {}
        for _ in range(repeats):
            for way in totals:
                model, dataset = make()
                start = time.perf_counter()
                if way == "prepared":
                    batches.prepared(model, dataset.element_spec)
                model.fit(dataset, epochs=1, verbose=0)
                totals[way] += time.perf_counter() - start
                traces[way] = model.train_function.experimental_get_tracing_count()
        ratio = totals["Keras alone"] / totals["prepared"]
        ratios.append(ratio)
        print(f"  {name}: Keras alone {totals['Keras alone']:.2f} s ({traces['Keras alone']} traces each), "
              f"prepared {totals['prepared']:.2f} s ({traces['prepared']} trace each): {ratio:.2f}x")
    ok = min(ratios) >= TARGET_RATIO
    print(f"  target: prepared no slower (ratio >= {TARGET_RATIO:.1f}): {'met' if ok else 'MISSED'}")
    return ratios


if __name__ == "__main__":
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run()
