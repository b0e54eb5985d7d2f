"""Would an owner who attacks its own model, and keeps the keys that survive, hold more of the key code?

    python benchmarks/owner_key_selection.py VAULT [--owner-seeds 21,22,23] [--thief-seeds 11,12,13]

The owner runs the informed thief's FTAL with Adam (kernel scale undone,
`finetune_model(..., renormalize=True)`) on as many of its own training
images as the thief has test images (a seeded draw), once per owner seed, and
keeps the keys whose secret class every run left them in. The thief then
attacks the same way on its half of the test split, once per thief seed
(`finetune_spread.py --first-seed`'s seeds). Prints one JSON line: the key
code of each run, the number of keys kept, and each thief run's key code on
all keys and on the kept ones. Needs TFDS_DATA_DIR (or --data-dir) and a
vault with a key code.
"""

import argparse
import json

import numpy as np

from keras_ipguard import data
from keras_ipguard.attacks.common import threat_model
from keras_ipguard.attacks.fine_tuning import finetune_model
from keras_ipguard.backend import keras as _keras
from keras_ipguard.models import load_model, task_classes
from keras_ipguard.vault import Vault


def seeds(text):
    return [int(s) for s in text.split(",")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vault")
    parser.add_argument("--owner-seeds", type=seeds, default=[21, 22, 23])
    parser.add_argument("--thief-seeds", type=seeds, default=[11, 12, 13])
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    vault = Vault.open(args.vault)
    if vault.key_codes is None:
        parser.error(f"{args.vault} has no key code")
    model = load_model(vault.model_path)
    threat = threat_model(vault, args.data_dir)
    codes = np.asarray(vault.key_codes)
    x, y = data.load_split(vault.dataset, "train", args.data_dir)
    own = np.random.default_rng(5).choice(len(x), len(threat.attack_x), replace=False)

    def kept_codes(seed, images, labels):
        _keras().utils.set_random_seed(seed)
        tuned = finetune_model(model, "FTAL", images, labels, optimizer="adam", renormalize=True)
        return task_classes(tuned, vault.key_images, vault.num_classes) == codes

    owner = [kept_codes(seed, x[own], y[own]) for seed in args.owner_seeds]
    kept = np.all(owner, axis=0)
    thief = [kept_codes(seed, threat.attack_x, threat.attack_y) for seed in args.thief_seeds]
    print(json.dumps({
        "vault": args.vault, "owner_seeds": args.owner_seeds, "thief_seeds": args.thief_seeds,
        "owner_runs_key_code": [round(float(k.mean()), 3) for k in owner], "keys_kept": int(kept.sum()),
        "thief_runs_all_keys": [round(float(k.mean()), 3) for k in thief],
        "thief_runs_kept_keys": [round(float(k[kept].mean()), 3) if kept.any() else None for k in thief]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
