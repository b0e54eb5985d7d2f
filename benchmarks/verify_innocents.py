"""`verify` of a vault against its own model and at least 10 innocent suspects, as JSON (the key-code issue).

    python benchmarks/verify_innocents.py VAULT [NAME=MODEL_PATH ...] [--train-examples 20000] [--epochs 3]

Innocent suspects made here, none derived from the vault's model:
- 3 randomly initialised models with a watermark class (seeds 0-2) and 2 without;
- 3 plain N-class models of the vault's architecture trained on the vault's task data (seeds 0-2): N
  outputs, so they are tested by the key-code test alone, as a truncated copy would be;
- every NAME=MODEL_PATH given (other vaults' models: another owner's keys and key code).
Prints every suspect's tests and p-values, and the smallest p-value any innocent got.
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from keras_ipguard import Vault, sources
from keras_ipguard.backend import keras as _keras
from keras_ipguard.models import WatermarkedClassifier, build_backbone, build_plain_classifier, save_model
from keras_ipguard.verification import figures_of, verify


def _row(report):
    return {"owned": report.owned, "p_value": report.p_value,
            "tests": {name: figures_of(t) for name, t in report.tests.items()}}


def _saved(model, directory):
    directory.mkdir(parents=True)
    return save_model(model, directory)


def innocent_models(vault, root, train_examples, epochs):
    """{name: path} of the innocent models made here."""
    keras = _keras()
    arch = vault.config.get("architecture") or "auto"
    arch = "auto" if arch == "base_model" else arch
    made = {}
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        model = WatermarkedClassifier(build_backbone(arch, vault.input_shape), vault.num_classes)
        made[f"random, watermark class, seed {seed}"] = _saved(model, root / f"random-wm-{seed}")
    for seed in range(2):
        keras.utils.set_random_seed(seed)
        model = build_plain_classifier(arch, vault.input_shape, vault.num_classes)
        made[f"random, N outputs, seed {seed}"] = _saved(model, root / f"random-plain-{seed}")
    task = sources.reopen_task(vault.config.get("data_source") or {"kind": "tfds", "name": vault.dataset})
    x, y = task.train.take(min(train_examples, task.train.count))
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        model = build_plain_classifier(arch, vault.input_shape, vault.num_classes)
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x.astype(np.float32), y, epochs=epochs, batch_size=128, verbose=0)
        made[f"plain {arch} trained on {len(x)} task images, {epochs} epochs, seed {seed}"] = _saved(
            model, root / f"plain-{seed}")
    return made


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("vault")
    parser.add_argument("named", nargs="*", help="NAME=MODEL_PATH: more innocent suspects (other vaults' models)")
    parser.add_argument("--train-examples", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    vault = Vault.open(args.vault)
    rows = {"the vault's own model": _row(verify(vault))}
    with tempfile.TemporaryDirectory() as root:
        suspects = innocent_models(vault, Path(root), args.train_examples, args.epochs)
        suspects.update(dict(item.split("=", 1) for item in args.named))
        innocents = {name: _row(verify(vault, str(path))) for name, path in suspects.items()}
    rows["innocents"] = innocents
    rows["innocent_count"] = len(innocents)
    rows["smallest_innocent_p_value"] = min(row["p_value"] for row in innocents.values())
    tests = sorted({test for row in innocents.values() for test in row["tests"]})
    rows["smallest_innocent_p_value_per_test"] = {
        test: min(row["tests"][test]["p_value"] for row in innocents.values() if test in row["tests"])
        for test in tests}
    rows["innocents_owned"] = sum(row["owned"] for row in innocents.values())
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
