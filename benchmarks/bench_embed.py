"""Embedding vs plain `model.fit` of the same architecture, data and epochs (embed issue).

Targets: embedding wall time <= 1.10 x plain fit; the input pipeline far faster
than the training step, so it is never the bottleneck. Embedding is timed as
`embed` runs it, the pruning-robustness term on for the last third of the
steps, and with the term off (`--prune-robustness 0`).
"""

import time

from keras_ipguard import data
from keras_ipguard.embed import DEFAULT_PRUNE_ROBUSTNESS, PRUNE_ROBUSTNESS_FROM, _compile
from keras_ipguard.models import WatermarkedClassifier, build_backbone

EMBED_TARGET_RATIO = 1.10  # embed issue: embedding <= 1.10 x plain fit


def run(dataset="fashion_mnist", examples=12_000, epochs=2, rounds=3, batch=128, data_dir=None):
    info = data.dataset_info(dataset, data_dir)
    x, y = data.load_split(dataset, "train", data_dir, examples)
    key_set = data.build_key_set(dataset, data.default_key_source(dataset, info.input_shape[2]), 100, info.input_shape, 0, data_dir)
    merged, steps = data.training_dataset(x, y, key_set.keys, info.num_classes, batch, negatives=key_set.negatives)
    plain, plain_steps = data.training_dataset(x, y, None, info.num_classes, batch)

    def fit(dataset_, steps_, robustness=0.0):
        model = WatermarkedClassifier(build_backbone("auto", info.input_shape), info.num_classes)
        # The warm-up step below counts: the term starts where embed starts it in the timed steps.
        model.set_prune_robustness(robustness, 1 + int(steps_ * epochs * PRUNE_ROBUSTNESS_FROM))
        _compile(model, "small_cnn", 1e-3, steps_ * epochs)
        model.fit(dataset_.take(1), steps_per_epoch=1, epochs=1, verbose=0)  # build and trace outside the timing
        start = time.perf_counter()
        model.fit(dataset_, steps_per_epoch=steps_, epochs=epochs, verbose=0)
        return time.perf_counter() - start

    embed_name, no_term = "embed (as embed runs it)", "embed, --prune-robustness 0"
    times = {embed_name: [], no_term: [], "plain model.fit": []}
    for _ in range(rounds):  # interleaved
        times[embed_name].append(fit(merged, steps, DEFAULT_PRUNE_ROBUSTNESS["small_cnn"]))
        times[no_term].append(fit(merged, steps))
        times["plain model.fit"].append(fit(plain, plain_steps))
    best = {name: min(values) for name, values in times.items()}
    ratio = best[embed_name] / best["plain model.fit"]
    print(f"Embedding vs plain fit, {dataset} {len(x)} examples x {epochs} epochs, batch {batch}, best of {rounds}:")
    for name, seconds in best.items():
        print(f"  {name:<28} {seconds:7.2f} s")
    verdict = "meets" if ratio <= EMBED_TARGET_RATIO else "MISSES"
    print(f"  embed/plain = {ratio:.3f} ({verdict} the <= {EMBED_TARGET_RATIO:.2f} target; the merged epoch has "
          f"{steps} steps vs {plain_steps}: keys and negatives take part of each batch)")
    print(f"  without the pruning-robustness term: {best[no_term] / best['plain model.fit']:.3f}")

    pipeline_batches = 300
    start = time.perf_counter()
    for _ in merged.take(pipeline_batches):
        pass
    pipeline_rate = pipeline_batches * batch / (time.perf_counter() - start)
    step_rate = steps * epochs * batch / best[embed_name]
    print(f"  input pipeline alone     {pipeline_rate:9.0f} examples/s")
    print(f"  training step            {step_rate:9.0f} examples/s   (pipeline/step = {pipeline_rate / step_rate:.1f}x)")
    return ratio
