"""Image folders stream: peak memory and speed of embedding on 10,000 and on 50,000 images (data issue).

The folders are CIFAR-10 training images upscaled to 64x64 and written once as
PNG under runs/bench-folders/ (git-ignored; reused). Each size is measured in a
fresh process, as `embed` reads it: the folder opened (every file checked),
its training split streamed through the merged pipeline (keys and negatives
from CIFAR-100) into `--arch auto`'s model for a fixed number of steps.

Targets: peak resident memory at 50,000 images at most 1.2x that at 10,000;
the input pipeline at least 3x faster than the training step.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

MEMORY_TARGET = 1.2  # peak RSS at 50,000 / at 10,000
PIPELINE_TARGET = 3.0  # pipeline images/s / training images/s
SIZES = (10_000, 50_000)
STEPS = 60
BATCH = 64
ROOT = Path("runs/bench-folders")

MEASURE = """
import json, resource, sys, time
import numpy as np
import keras_ipguard
from keras_ipguard import data, sources
from keras_ipguard.schemes import ExtraClass, Secret
from keras_ipguard.models import WatermarkedClassifier, build_backbone
from keras_ipguard.training import RECIPES, compile_model

folder, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
task = sources.open_task(folder)
shape, n = task.info.input_shape, task.info.num_classes
pool = sources.key_pool("cifar100")
key_set = data.build_key_set(task.info.name, pool, 100, shape, 0)
scheme = ExtraClass()
streams = scheme.key_streams(Secret(key_set.keys, [n] * 100, {}, negatives=key_set.negatives), n)
merged, _ = data.training_dataset(task.train.dataset(0), task.train.count, n + 1, batch, streams)
start = time.perf_counter()
for _ in merged.take(steps * 3):
    pass
pipeline = steps * 3 * batch / (time.perf_counter() - start)
model = WatermarkedClassifier(build_backbone("auto", shape), n)
compile_model(model, RECIPES["resnet20_s2"], 0.1, steps)
model.fit(merged, steps_per_epoch=5, epochs=1, verbose=0)  # build and trace outside the timing
start = time.perf_counter()
model.fit(merged, steps_per_epoch=steps, epochs=1, verbose=0)
step = steps * batch / (time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"images": task.train.count + task.test.count, "peak_rss_mib": peak, "pipeline": pipeline,
                  "step": step}))
"""


def write_folder(count, data_dir=None):
    """CIFAR-10 training images, upscaled to 64x64, as PNG in class folders (written once)."""
    target = ROOT / f"cifar10-64-{count}"
    if (target / ".complete").is_file():
        return target
    import numpy as np
    from PIL import Image

    from keras_ipguard import data

    images, labels = data.load_split("cifar10", "train", data_dir, count)
    names = data.dataset_info("cifar10", data_dir).class_names
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = target / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image)).resize((64, 64), Image.BICUBIC).save(folder / f"{index:05d}.png")
    (target / ".complete").write_text("")
    return target


def run(data_dir=None):
    results = {}
    for count in SIZES:
        folder = write_folder(count, data_dir)
        measured = subprocess.run([sys.executable, "-c", MEASURE, str(folder), str(STEPS), str(BATCH)],
                                  capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        if measured.returncode:
            raise SystemExit(measured.stderr[-3000:])
        results[count] = json.loads(measured.stdout.strip().splitlines()[-1])
    print(f"Image folders (CIFAR-10 upscaled to 64x64 PNG), embed's pipeline and --arch auto, {STEPS} steps of "
          f"{BATCH}, each size in a fresh process:")
    for count, figures in results.items():
        print(f"  {count:>6} images: peak RSS {figures['peak_rss_mib']:7.0f} MiB, input pipeline "
              f"{figures['pipeline']:7.0f} images/s, training {figures['step']:6.0f} images/s "
              f"(pipeline/step = {figures['pipeline'] / figures['step']:.1f}x)")
    memory = results[SIZES[1]]["peak_rss_mib"] / results[SIZES[0]]["peak_rss_mib"]
    worst = min(f["pipeline"] / f["step"] for f in results.values())
    print(f"  peak memory {SIZES[1]}/{SIZES[0]} = {memory:.2f} "
          f"({'meets' if memory <= MEMORY_TARGET else 'MISSES'} the <= {MEMORY_TARGET} target); "
          f"pipeline/step >= {worst:.1f}x ({'meets' if worst >= PIPELINE_TARGET else 'MISSES'} the "
          f">= {PIPELINE_TARGET:.0f}x target)")
    return results


if __name__ == "__main__":
    run()
