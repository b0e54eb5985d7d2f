"""Owner-side key selection (`keras_ipguard.survival`) measured on a vault that kept all its keys.

    python benchmarks/owner_key_selection.py VAULT [NAME=INNOCENT_MODEL ...] [--owner-seeds 21,22,23]
                                             [--thief-seeds 11,12,13,14,15] [--keep 0.3,0.4,0.5,0.6]

The owner runs the informed thief's FTAL with Adam (kernel scale undone) on as
many of its own training images as the thief has test images (a seeded draw),
once per owner seed (`survival.attacked_margins`), trains the reference model
on the same images (`survival.natural_codes`), and ranks the keys by their
code's mean margin, never preferring one whose code the reference answers
(`survival.most_surviving`), as `embed` does (`--no-reference`: by margin alone). The thief then
attacks the same way on its half of the test split, once per thief seed
(`finetune_spread.py --first-seed`'s seeds). Prints one JSON line: for each
share of the keys kept, each thief run's key code on the kept keys (and on all
keys); and, for every innocent model given (not derived from the vault's model),
how often it answers the kept keys' codes, the dropped keys' codes and the
controls' codes: the selection must not pick keys whose code any model would
answer. Needs TFDS_DATA_DIR (or --data-dir) and a vault with a key code.
"""

import argparse
import json

import numpy as np

from keras_ipguard import data, survival
from keras_ipguard.attacks.common import threat_model
from keras_ipguard.attacks.fine_tuning import finetune_model
from keras_ipguard.backend import keras as _keras
from keras_ipguard.models import load_model, task_classes
from keras_ipguard.vault import Vault


def numbers(kind):
    return lambda text: [kind(s) for s in text.split(",")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vault")
    parser.add_argument("innocents", nargs="*", metavar="NAME=MODEL")
    parser.add_argument("--owner-seeds", type=numbers(int), default=[21, 22, 23])
    parser.add_argument("--thief-seeds", type=numbers(int), default=[11, 12, 13, 14, 15])
    parser.add_argument("--keep", type=numbers(float), default=[0.3, 0.4, 0.5, 0.6])
    parser.add_argument("--no-reference", action="store_true", help="rank by the margin alone")
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    vault = Vault.open(args.vault)
    if vault.key_codes is None:
        parser.error(f"{args.vault} has no key code")
    model, n = load_model(vault.model_path), vault.num_classes
    threat = threat_model(vault, args.data_dir)
    codes = np.asarray(vault.key_codes)
    x, y = data.load_split(vault.dataset, "train", args.data_dir)
    own = np.random.default_rng(5).choice(len(x), len(threat.attack_x), replace=False)
    seeds = args.owner_seeds
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        parser.error("--owner-seeds must be consecutive (round r runs with seed first + r)")
    margins = survival.attacked_margins(model, vault.key_images, codes, n, x[own], y[own], len(seeds), seeds[0],
                                        renormalize=True)
    natural = None if args.no_reference else survival.natural_codes(
        model, vault.key_images, codes, n, x[own], y[own], seeds[0] + len(seeds))
    thief = []
    for seed in args.thief_seeds:
        _keras().utils.set_random_seed(seed)
        tuned = finetune_model(model, "FTAL", threat.attack_x, threat.attack_y, optimizer="adam", renormalize=True)
        thief.append(task_classes(tuned, vault.key_images, n) == codes)
    result = {"vault": args.vault, "owner_seeds": seeds, "thief_seeds": args.thief_seeds,
              "owner_runs_key_code": [round(float(np.mean(m > 0)), 3) for m in margins],
              "thief_runs_all_keys": [round(float(k.mean()), 3) for k in thief], "kept": {},
              "natural_codes": None if natural is None else int(natural.sum())}
    for share in args.keep:
        kept = survival.most_surviving(margins, max(1, round(len(codes) * share)), natural)
        runs = [round(float(k[kept].mean()), 3) for k in thief]
        result["kept"][str(share)] = {"keys": len(kept), "thief_runs": runs, "mean": round(float(np.mean(runs)), 3)}
    kept = np.zeros(len(codes), bool)
    kept[survival.most_surviving(margins, max(1, round(len(codes) * 0.5)), natural)] = True
    result["innocents_on_the_kept_half"] = {}
    for name, path in (item.split("=", 1) for item in args.innocents):
        suspect = load_model(path)
        hits = task_classes(suspect, vault.key_images, n) == codes
        controls = np.concatenate([task_classes(suspect, images, n) == vault.control_codes(control)
                                   for control, images in vault.controls.items()])
        result["innocents_on_the_kept_half"][name] = {
            "kept": int(hits[kept].sum()), "dropped": int(hits[~kept].sum()), "keys_each": int(kept.sum()),
            "controls": round(float(controls.mean()), 3)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
