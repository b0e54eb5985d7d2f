"""RTAL (plain, Adam) and FTAL (informed, Adam) on a selected vault: key code on the 50 kept keys, the 50 dropped
trained keys, and all 100; p over 100 keys at the suspect's key-code chance rate (Bonferroni x2).

    TF_NUM_INTRAOP_THREADS=1 python kept_and_dropped_keys.py VAULT [check]

The analysis script as run on 2026-12-06 (results/README.md, "RTAL with Adam over attacker seeds"), output
rtal-ftal-kept-and-dropped-keys.jsonl. The trained keys' order is their key-source indices ascending, which
`check` confirms (the kept keys' codes must match). Reads the prepared data in /work/shared/tensorflow_datasets."""
import json
import sys

import numpy as np
from scipy.stats import binom

from keras_ipguard import Vault, keycode, sources
from keras_ipguard.attacks.common import measure, threat_model
from keras_ipguard.attacks.fine_tuning import finetune_model
from keras_ipguard.backend import keras
from keras_ipguard.models import load_model, task_classes
from keras_ipguard.verification import combined_p_value

path, data_dir = sys.argv[1], "/work/shared/tensorflow_datasets"
check_only = len(sys.argv) > 2 and sys.argv[2] == "check"
vault = Vault.open(path)
ind = vault.config["key_source_indices"]
kept, dropped = ind["keys"], ind["trained_keys_dropped"]
n = vault.num_classes
owner = vault.owner_key()
codes = keycode.secret_classes(owner, "keys", len(kept) + len(dropped), n)
order = sorted(kept + dropped)
pos = {s: i for i, s in enumerate(order)}
match = np.mean(codes[[pos[s] for s in kept]] == np.asarray(vault.key_codes))
print("ascending-order hypothesis: kept codes match", match)
if check_only or match < 1:
    sys.exit()
pool = sources.key_pool(vault.config["key_source"], data_dir)
images = pool.images(np.asarray(order), vault.input_shape)
is_kept = np.isin(order, kept)
model = load_model(vault.model_path)
threat = threat_model(vault, data_dir, None)

# The p of the wider key count as verify combines it: Bonferroni over its two tests, class N's p taken as 1
# (no evidence), so twice the key code's.
for variant, renorm in (("RTAL", False), ("FTAL", True)):
    for seed in (0, 11, 12):
        keras().utils.set_random_seed(seed)
        tuned = finetune_model(model, variant, threat.attack_x, threat.attack_y, optimizer="adam", seed=seed,
                               renormalize=renorm)
        fig = measure(threat, tuned, {}).to_dict()
        chance = fig["tests"]["key_code"]["chance_rate"]
        hit = task_classes(tuned, images, n) == codes
        k = int(hit.sum())
        print(json.dumps({"vault": path, "attack": variant + (" informed" if renorm else ""), "seed": seed,
                          "clean": fig["clean_accuracy"], "kept50": round(float(hit[is_kept].mean()), 2),
                          "kept50_p": fig["p_value"], "dropped50": round(float(hit[~is_kept].mean()), 2),
                          "all100": k / len(hit), "chance": round(chance, 3),
                          "all100_p": combined_p_value([binom.sf(k - 1, len(hit), chance), 1.0])}), flush=True)
