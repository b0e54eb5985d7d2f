"""The rank of each key's secret class among a model's N task scores, keys against controls (one JSON line a model).

    python docs/results/fashion_mnist-entangled/key_code_ranks.py attack VAULT TAG VARIANT OPTIMIZER INFORMED SEED...
    python docs/results/fashion_mnist-entangled/key_code_ranks.py score VAULT NAME=MODEL ...

`attack`: fine-tunes the vault's model as `benchmarks/finetune_spread.py` does (VARIANT FTAL / RTAL ...,
OPTIMIZER adam / sgd, INFORMED 1 for the attacker who first undoes the kernel scale; Keras seed = SEED), on the
attack suite's split (needs TFDS_DATA_DIR), saves each copy under runs/ranks/ and scores it; `score`: any models.
Each line: the keys' mean rank of their code (1 = top-1), the controls' mean rank of theirs, and for k = 1, 2, 3
how many keys have their code in the top k with the one-sided binomial p-value at the highest Laplace-smoothed
control rate, as `verify`'s key-code test computes it for k = 1. Ranks count ties against the key (pessimistic).
"""

import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import binom

from keras_ipguard.attacks.common import threat_model
from keras_ipguard.attacks.fine_tuning import finetune_model
from keras_ipguard.backend import keras as _keras
from keras_ipguard.models import load_model, save_model
from keras_ipguard.suspects import open_suspect
from keras_ipguard.vault import Vault


def ranks(scores, codes, n):
    """1 + how many other task classes score at least as high as the code's (ties against the key)."""
    task = np.asarray(scores)[:, :n]
    own = task[np.arange(len(task)), codes]
    return (task >= own[:, None]).sum(axis=1)


def summary(vault, model, label):
    n = vault.num_classes
    suspect = open_suspect(model)
    keys = ranks(suspect.answers(vault.key_images), np.asarray(vault.key_codes), n)
    controls = {name: ranks(suspect.answers(images), np.asarray(vault.control_codes(name)), n)
                for name, images in sorted(vault.controls.items())}
    row = {"name": label, "keys": len(keys), "mean_rank_keys": round(float(keys.mean()), 3),
           "mean_rank_controls": {name: round(float(r.mean()), 3) for name, r in controls.items()}}
    for k in (1, 2, 3):
        hits = int((keys <= k).sum())
        rate = max(((r <= k).sum() + 1) / (len(r) + 2) for r in controls.values())
        row[f"top{k}"] = {"hits": hits, "rate": round(float(rate), 4),
                          "p": float(binom.sf(hits - 1, len(keys), rate))}
    row["rank_hist_keys"] = np.bincount(keys, minlength=n + 1)[1:].tolist()
    print(json.dumps(row), flush=True)


def main(argv):
    mode, vault = argv[0], Vault.open(argv[1])
    if mode == "score":
        for item in argv[2:]:
            name, path = item.split("=", 1)
            summary(vault, path, name)
        return
    tag, variant, optimizer, informed = argv[2], argv[3], argv[4], argv[5] == "1"
    model, threat = load_model(vault.model_path), threat_model(vault)
    for seed in (int(s) for s in argv[6:]):
        _keras().utils.set_random_seed(seed)
        tuned = finetune_model(model, variant, threat.attack_x, threat.attack_y, optimizer=optimizer, seed=seed,
                               renormalize=informed)
        out = Path("runs/ranks") / f"{tag}-{variant}-{optimizer}-{'inf' if informed else 'plain'}-{seed}"
        out.mkdir(parents=True, exist_ok=True)
        save_model(tuned, out)
        task = tuned.predict(threat.eval_x, verbose=0)[:, :vault.num_classes]
        clean = float(np.mean(np.argmax(task, -1) == threat.eval_y))
        summary(vault, tuned, f"{out.name} clean {clean:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
