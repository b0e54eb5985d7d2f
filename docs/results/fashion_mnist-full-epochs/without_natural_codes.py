"""A selected vault: a reference model (never shown the keys) marks the trained keys whose code it answers
anyway; the plain attacker's RTAL with Adam is then scored on the 100 trained keys without those (what keeping
every key that is not natural would give), at the suspect's key-code chance rate.

    TF_NUM_INTRAOP_THREADS=1 python without_natural_codes.py VAULT

As run on 2026-12-06 (results/README.md, "RTAL with Adam over attacker seeds"), output
rtal-adam-without-natural-codes-seed0-vault.jsonl. The reference is trained on the first 5,000 training images
with Keras seed 3 (embed's own reference saw its own 5,000 images, so its natural keys differ a little)."""
import json
import sys

import numpy as np
from scipy.stats import binom

from keras_ipguard import Vault, keycode, sources
from keras_ipguard.attacks.common import measure, threat_model
from keras_ipguard.attacks.fine_tuning import finetune_model
from keras_ipguard.backend import keras
from keras_ipguard.models import load_model, task_classes
from keras_ipguard.survival import natural_codes
from keras_ipguard.verification import combined_p_value

path, data_dir = sys.argv[1], "/work/shared/tensorflow_datasets"
vault = Vault.open(path)
ind = vault.config["key_source_indices"]
kept, dropped = ind["keys"], ind["trained_keys_dropped"]
n = vault.num_classes
codes = keycode.secret_classes(vault.owner_key(), "keys", len(kept) + len(dropped), n)
order = sorted(kept + dropped)
assert np.all(codes[[order.index(s) for s in kept]] == np.asarray(vault.key_codes))
pool = sources.key_pool(vault.config["key_source"], data_dir)
images = pool.images(np.asarray(order), vault.input_shape)
is_kept = np.isin(order, kept)
model = load_model(vault.model_path)
train = sources.open_task(vault.dataset, data_dir).train
x, y = train.take(5000)
natural = natural_codes(model, images, codes, n, x, y, seed=3)
print(json.dumps({"natural": int(natural.sum()), "natural_among_kept": int(natural[is_kept].sum())}), flush=True)
threat = threat_model(vault, data_dir, None)

# The p of the wider key count as verify combines it: Bonferroni over its two tests, class N's p taken as 1
# (no evidence), so twice the key code's.
use = ~natural
for seed in (0, 11, 12):
    keras().utils.set_random_seed(seed)
    tuned = finetune_model(model, "RTAL", threat.attack_x, threat.attack_y, optimizer="adam", seed=seed)
    fig = measure(threat, tuned, {}).to_dict()
    chance = fig["tests"]["key_code"]["chance_rate"]
    hit = task_classes(tuned, images, n) == codes
    k, m = int(hit[use].sum()), int(use.sum())
    print(json.dumps({"vault": path, "seed": seed, "kept50": round(float(hit[is_kept].mean()), 2),
                      "kept50_p": fig["p_value"], "not_natural": m, "not_natural_acc": round(k / m, 3),
                      "natural_acc": round(float(hit[natural].mean()), 2), "chance": round(chance, 3),
                      "not_natural_p": combined_p_value([binom.sf(k - 1, m, chance), 1.0])}), flush=True)
