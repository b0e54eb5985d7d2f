"""The figures and facts of an `embed` run, as written to `reports/embed.json`."""

import time

import numpy as np

from . import metrics
from .training import machine_info


def measure(run, scheme, secret, model):
    """The watermark metrics of DESIGN.md on the run's test split, the control rate and, where measured,
    the baseline and fidelity drop."""
    classify = run.classify(model)
    figures = metrics.watermark_metrics(classify, *run.test_answers(classify), secret.keys, secret.labels,
                                        scheme.watermark_class(run.info.num_classes), secret.identities)
    if scheme.has_watermark_class:
        # Identity images are made from the keys the model answers class N only: one it misses would lock its
        # users out (a short run on little data can miss a few to their key code; docs/results/README.md).
        answered = np.flatnonzero(np.asarray(classify(secret.keys)) == np.asarray(secret.labels))
        figures["identity_keys"] = [int(i) for i in answered]  # key_count - len(): the keys it misses
    # The highest hit rate on images made like the keys but never trained on (verification's chance rate).
    figures["control_watermark_rate"] = scheme.control_watermark_rate(secret, classify)
    if secret.key_codes is not None:  # keys answered their secret class, argmax over the N task classes
        from .models import task_classes

        answers = task_classes(model, secret.keys, run.info.num_classes)
        figures["key_code_accuracy"] = float(np.mean(answers == np.asarray(secret.key_codes["keys"])))
    if run.options.baseline and run.baseline_accuracy is None:
        run.baseline_accuracy = run.measure_baseline(scheme)
    if run.baseline_accuracy is not None:
        figures["baseline_clean_accuracy"] = run.baseline_accuracy
        figures["fidelity_drop"] = round(100 * (run.baseline_accuracy - figures["clean_accuracy"]), 4)
        figures["fidelity_drop_unit"] = "percentage points"
    return figures


def embed_report(run, scheme, secret, figures):
    """`reports/embed.json`: the figures, then how they were made (data, recipe, scheme, machine, date)."""
    options = run.options
    return {
        **figures,
        **run.report,
        "train_seconds": round(run.train_seconds, 2),
        "examples_per_second": round(run.examples / max(run.train_seconds, 1e-9), 1),
        "dataset": run.info.name,
        "num_classes": run.info.num_classes,
        "input_shape": list(run.info.input_shape),
        "train_examples": run.train.count,
        "class_names": list(run.info.class_names),
        "data_source": run.task.record,
        "data_notes": run.task.notes,
        "architecture": run.arch,
        "epochs": run.epochs,
        "learning_rate": run.learning_rate,
        "lr_cycles": run.lr_cycles,
        "lr_cycle_growth": options.lr_cycle_growth,
        "batch_size_per_replica": options.batch_size,
        "global_batch_size": run.global_batch,
        "replicas": run.strategy.num_replicas_in_sync,
        "strategy": type(run.strategy).__name__,
        "scheme": scheme.name,
        "scheme_config": scheme.get_config(),
        "trigger": secret.details or None,
        "key_source": secret.key_source,
        "keys": options.keys,
        "key_share": run.report.get("key_share", options.key_share),
        "augmentation": run.augment,
        "seed": options.seed,
        "base_model": options.base_model,
        "machine": machine_info(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
