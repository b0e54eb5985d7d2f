"""TensorFlow's oneDNN CPU kernels on (ipguard's default) vs off, for embedding's training steps.

TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` once, when it loads, so each
measurement is a fresh process: the `WatermarkedClassifier` of an embed, its
compile recipe and pruning-robustness term, fitted on random images of the
architecture's input shape (the kernels' speed does not depend on the pixels),
the two settings alternating, best of `rounds`. The machine's own thread
settings are kept (under `make test` the suite pins one op thread per worker).

Target: on >= 1.0 x off (the default never slows training down).
"""

import json
import os
import subprocess
import sys

TARGET_RATIO = 1.0
ARCHITECTURES = {"small_cnn": (28, 28, 1), "resnet20": (32, 32, 3)}
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(architecture, steps, batch):
    """In a fresh process: seconds for `steps` training steps of `architecture` after a warm-up step."""
    import time

    import numpy as np

    from keras_ipguard import batches
    from keras_ipguard.backend import tensorflow
    from keras_ipguard.models import WatermarkedClassifier, build_backbone
    from keras_ipguard.training import RECIPES, compile_model

    tf, shape = tensorflow(), ARCHITECTURES[architecture]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch * 8, *shape), dtype=np.uint8)
    y = tf.one_hot(rng.integers(0, 11, len(x)), 11)
    # Autotuning off, as the library's pipelines: its thread's wait at the end of a fit is no kernel's time.
    dataset = batches.quiet(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat())
    model = WatermarkedClassifier(build_backbone(architecture, shape), 10)
    model.set_prune_robustness(0.3, 0)
    recipe = RECIPES[architecture]
    compile_model(model, recipe, recipe.learning_rate, steps + 1)
    model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0)  # build and trace outside the timing
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    print(json.dumps({"seconds": time.perf_counter() - start}))


def _measure(architecture, onednn, steps, batch):
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="3")
    code = (f"import sys; sys.path.insert(0, {_ROOT!r}); from benchmarks.bench_onednn import child; "
            f"child({architecture!r}, {steps}, {batch})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def run(rounds=3, steps=30, batch=128):
    print(f"oneDNN kernels on vs off, embedding's training step, {steps} steps of {batch}, best of {rounds} "
          f"(a fresh process each):")
    ratios = {}
    for architecture in ARCHITECTURES:
        best = {"1": float("inf"), "0": float("inf")}
        for _ in range(rounds):  # interleaved
            for onednn in best:
                best[onednn] = min(best[onednn], _measure(architecture, onednn, steps, batch))
        ratios[architecture] = best["0"] / best["1"]
        verdict = "meets" if ratios[architecture] >= TARGET_RATIO else "MISSES"
        print(f"  {architecture:<10} on {steps * batch / best['1']:6.0f} examples/s, off "
              f"{steps * batch / best['0']:6.0f} examples/s: on/off = {ratios[architecture]:.2f}x "
              f"({verdict} the >= {TARGET_RATIO:.1f} target)")
    return ratios


if __name__ == "__main__":
    run()
