"""How much of the watermark FTAL leaves, over attack seeds, and which layer's drift erases it.

    python benchmarks/finetune_spread.py VAULT [VAULT ...] [--optimizer adam] [--seeds 10] [--first-seed 100]
                                         [--layers] [--renormalize]

For each vault: fine-tunes its model (FTAL by default, the attacks issue's
settings) once per seed 0..S-1 (Keras seed F+s, F = --first-seed, default
100: shuffling, dropout, and for RTLL / RTAL the new last layer's weights)
and prints the watermark accuracy of each run, and its key-code accuracy
where the vault has a key code, their means and minima, with each
verification test's figures and p-value. With
--layers it then takes the run that kept the fewest keys and, one layer at a time,
puts back that layer's original weights, printing the watermark accuracy
that results and how far each weight moved (mean |dw| against mean |w|): the
layer whose restoration brings the keys back is where the attack erased them.
With --renormalize the attacker first undoes embed's kernel scaling
(`renormalize_kernels`). With --per-key (vaults with a key code) it also
prints how many runs each key kept its code in, and, leaving each run out in
turn, the key code of that run on the keys every other run kept: whether
keeping the code is a property of the key (the keys an owner could select by
attacking its own model) or of the run.
Needs TFDS_DATA_DIR (or --data-dir) for the attacker's and scored test images.
"""

import argparse
import json
import sys

import numpy as np

from keras_ipguard.attacks.common import measure, threat_model
from keras_ipguard.attacks.fine_tuning import VARIANTS, attacker_copy, finetune_model
from keras_ipguard.backend import keras as _keras
from keras_ipguard.models import load_model, predict_classes, task_classes
from keras_ipguard.vault import Vault


def layer_restoration(original, tuned, keys, watermark_class, renormalized=False):
    """(layer name, watermark accuracy with that layer's original weights put back, |w|, |dw|) per weighted layer.

    `renormalized`: the attack started from the renormalized model, so that is the original.
    """
    rows = []
    for before, after in zip(attacker_copy(original, renormalized).layers, tuned.layers):
        old, new = before.get_weights(), after.get_weights()
        if not old:
            continue
        after.set_weights(old)
        restored = float(np.mean(predict_classes(tuned, keys) == watermark_class))
        after.set_weights(new)
        rows.append((before.name, restored, float(np.abs(old[0]).mean()), float(np.abs(new[0] - old[0]).mean())))
    return rows


def per_key_survival(kept):
    """`kept`: (runs, keys) booleans. How many keys kept their code in 0..runs runs, and each run's key code on
    all keys and on the keys that every other run kept."""
    runs = len(kept)
    held_out = []
    for run in range(runs):
        elsewhere = np.delete(kept, run, axis=0).all(axis=0)
        held_out.append({"run": run, "all_keys": round(float(kept[run].mean()), 3),
                         "kept_elsewhere": int(elsewhere.sum()),
                         "on_those": round(float(kept[run][elsewhere].mean()), 3) if elsewhere.any() else None})
    return {"keys_by_runs_kept": np.bincount(kept.sum(axis=0), minlength=runs + 1).tolist(), "held_out": held_out}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vaults", nargs="+")
    parser.add_argument("--variant", choices=VARIANTS, default="FTAL")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="adam")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=100, help="Keras seed of the first run")
    parser.add_argument("--layers", action="store_true",
                        help="also the per-layer restoration of the run that kept the fewest keys")
    parser.add_argument("--renormalize", action="store_true",
                        help="an informed attacker: undo the kernel scaling first")
    parser.add_argument("--per-key", action="store_true",
                        help="also which keys kept their code over the runs (vaults with a key code)")
    parser.add_argument("--data-dir")
    parser.add_argument("--max-test-examples", type=int)
    args = parser.parse_args(argv)
    keras = _keras()
    for path in args.vaults:
        vault = Vault.open(path)
        model = load_model(vault.model_path)
        threat = threat_model(vault, args.data_dir, args.max_test_examples)
        runs, worst, kept = [], None, []
        if args.per_key and (vault.key_codes is None or args.seeds < 2):
            print(f"{path}: --per-key needs a vault with a key code and --seeds 2 or more; skipped", file=sys.stderr)
        for seed in range(args.seeds):
            keras.utils.set_random_seed(args.first_seed + seed)  # RTLL / RTAL set it again, with the new head's seed
            tuned = finetune_model(model, args.variant, threat.attack_x, threat.attack_y, optimizer=args.optimizer,
                                   seed=args.first_seed + seed, renormalize=args.renormalize)
            figures = measure(threat, tuned, {"seed": seed}).to_dict()
            if args.per_key and vault.key_codes is not None:
                kept.append(task_classes(tuned, vault.key_images, vault.num_classes) == np.asarray(vault.key_codes))
            runs.append({k: figures[k] for k in ("seed", "clean_accuracy", "watermark_accuracy", "key_code_accuracy",
                                                 "owned", "p_value", "tests")})
            if worst is None or figures["watermark_accuracy"] < worst[0]:
                worst = (figures["watermark_accuracy"], tuned)
            print(json.dumps({"vault": path, **runs[-1]}), flush=True)
        spread = {}
        for figure in ("watermark_accuracy", "key_code_accuracy"):
            accuracies = [run[figure] for run in runs if run[figure] is not None]
            if accuracies:
                spread.update({f"{figure}_mean": round(float(np.mean(accuracies)), 3),
                               f"{figure}_min": min(accuracies), f"{figure}_max": max(accuracies)})
        print(json.dumps({"vault": path, "variant": args.variant, "optimizer": args.optimizer, "seeds": args.seeds,
                          "first_seed": args.first_seed, "renormalized": args.renormalize, **spread,
                          "owned_runs": sum(run["owned"] for run in runs)}), flush=True)
        if len(kept) > 1:
            print(json.dumps({"vault": path, **per_key_survival(np.array(kept))}), flush=True)
        if args.layers:
            keys = vault.key_images
            print(f"  per layer, on the run that kept {worst[0]:.2f} of the keys:")
            for name, restored, weight, moved in layer_restoration(model, worst[1], keys, vault.watermark_class,
                                                                   args.renormalize):
                print(f"  {name:<24} restored -> watermark {restored:.2f}   "
                      f"mean |w| {weight:.4f}  mean |dw| {moved:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
