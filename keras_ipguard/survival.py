"""Owner-side key selection: attack your own model as an informed thief would, keep the keys that survive.

After training (before the kernel scaling, which the informed thief undoes),
`embed` fine-tunes copies of the owner's model the way the strongest
fine-tuning thief measured does (all layers, Adam 1e-3, 10 epochs) on the
owner's own training images, once per round, and keeps the share of the keys
whose secret task class (the hidden key code) leads by the most afterwards,
averaged over the rounds; identity images are then issued from those. The
scheme says whether and how (`Scheme.survival`); the extra-class scheme does
with the key code on the small CNN.

Whether a key keeps its code through fine-tuning is largely a property of
the key (docs/results/README.md, "Owner-side key selection"). The rounds use
no secret beyond the model: a thief who knows the method gains nothing.

A key whose code a model never shown the keys answers anyway survives every
round too, and innocent models answer it as well: ranked alone, the kept keys'
codes were answered by innocents 0.118 of the time against 0.102 on controls.
So a reference model of the same architecture is trained on the same images
without any key (`natural_codes`), and no key whose code it answers is kept.
"""

import dataclasses
import json
import sys
import time

import numpy as np

from . import batches

# The reference model (`natural_codes`): as long as a survival round fine-tunes, in the attacks' batch size.
REFERENCE_EPOCHS = 10
REFERENCE_BATCH = 64


def code_margins(model, keys, codes, num_classes):
    """float (K,): each key's score on its secret class minus its best other task class's (> 0: code kept)."""
    scores = batches.scores(model, keys)[:, :num_classes]
    rows = np.arange(len(codes))
    others = scores.copy()
    others[rows, codes] = -np.inf
    return scores[rows, codes] - others.max(axis=1)


def attacked_margins(model, keys, codes, num_classes, images, labels, rounds, seed, log=None, renormalize=False):
    """float (rounds, K): `code_margins` of `rounds` copies of `model` each fine-tuned (FTAL, Adam) on
    `images`/`labels` with Keras seed `seed + round`; `log(line)` is told each round's key code.
    `renormalize`: `model` is a vault's, kernel-scaled: the copies undo the scaling first, as the informed thief."""
    from .attacks.fine_tuning import finetune_model
    from .backend import keras_of

    margins = []
    for round_ in range(rounds):
        start = time.perf_counter()
        keras_of(model).utils.set_random_seed(seed + round_)
        tuned = finetune_model(model, "FTAL", images, labels, optimizer="adam", renormalize=renormalize)
        margins.append(code_margins(tuned, keys, np.asarray(codes), num_classes))
        if log:
            log(f"survival round {round_ + 1}/{rounds}: {np.mean(margins[-1] > 0):.2f} of the keys kept their code "
                f"({time.perf_counter() - start:.0f} s)")
    return np.array(margins)


def natural_codes(model, keys, codes, num_classes, images, labels, seed, epochs=REFERENCE_EPOCHS):
    """bool (K,): the keys whose secret class a model never shown them answers anyway: a fresh twin of `model`'s
    architecture (N task outputs) trained with Adam 1e-3 on `images`/`labels` alone, Keras seed `seed`."""
    from .backend import keras_of
    from .models import as_functional, fresh_twin

    functional = as_functional(model)
    tfk = keras_of(functional)
    tfk.utils.set_random_seed(seed)
    reference = fresh_twin(functional, num_classes, name="reference")
    reference.compile(optimizer=tfk.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    batches.fit(reference, images, labels, REFERENCE_BATCH, epochs)
    answers = batches.scores(reference, keys).argmax(axis=1)
    return answers == np.asarray(codes)


def most_surviving(margins, count, excluded=None):
    """The indices (ascending) of the `count` keys with the highest mean margin over the rounds; keys `excluded`
    (bool (K,)) come after every other, kept only if `count` needs them."""
    score = np.asarray(margins).mean(axis=0)
    if excluded is not None:
        score = np.where(excluded, -np.inf, score)
    order = np.argsort(-score, kind="stable")
    return np.sort(order[:count])


def keep_surviving_keys(run, scheme, model, secret):
    """(secret, report facts): the secret cut to the keys that survive the owner's attack rounds best, where the
    scheme asks for rounds (`Scheme.survival`) and has a key code; else as it was, and no facts.

    The chief of a multi-worker run chooses and records its choice in the work directory; the other workers
    (and a resumed run) read it.
    """
    plan = scheme.survival(run)
    if plan is None or secret.key_codes is None:
        return secret, {}
    rounds, keep, examples = plan
    codes = np.asarray(secret.key_codes["keys"])
    record = run.work / "surviving_keys.json"
    if not run.is_chief:
        run.work.wait_for(record)
    if record.is_file():
        chosen = json.loads(record.read_text())
    else:
        start = time.perf_counter()
        images, labels = run.train.take(examples)
        log = (lambda line: print(line, file=sys.stderr, flush=True)) if run.options.verbose else None
        margins = attacked_margins(model, secret.keys, codes, run.info.num_classes, images, labels, rounds,
                                   run.options.seed, log)
        natural = natural_codes(model, secret.keys, codes, run.info.num_classes, images, labels,
                                run.options.seed + rounds)
        if log:
            log(f"survival reference: a model never shown the keys answers {int(natural.sum())} of their codes "
                "(never kept)")
        kept = most_surviving(margins, max(1, round(len(codes) * keep)), natural)
        chosen = {"kept": [int(i) for i in kept], "examples": len(images), "natural_codes": int(natural.sum()),
                  "natural_codes_kept": int(natural[kept].sum()),
                  "round_key_code_all": [round(float(np.mean(m > 0)), 4) for m in margins],
                  "round_key_code_kept": [round(float(np.mean(m[kept] > 0)), 4) for m in margins],
                  "seconds": round(time.perf_counter() - start, 1)}
        record.write_text(json.dumps(chosen))
    kept = np.asarray(chosen["kept"])
    return _cut(secret, kept, run.owner_key), {"key_survival": {
        "rounds": rounds, "trained_keys": len(codes), "kept": len(kept),
        "attack": "FTAL, Adam 1e-3, 10 epochs, on the owner's training images, kernel scaling not yet applied",
        "reference": f"a fresh twin trained {REFERENCE_EPOCHS} epochs (Adam 1e-3) on the same images; keys whose "
                     "code it answers (natural_codes) are never kept while others remain",
        **{name: value for name, value in chosen.items() if name != "kept"}}}


def _cut(secret, kept, owner_key):
    """The secret with only the keys at `kept`: their labels and codes, fresh evaluation identities, and the
    dropped keys still recorded in the key source's indices (trained, so never a control)."""
    from .identity import IdentityCodec
    from .metrics import evaluation_identities

    keys, count = secret.keys[kept], len(secret.keys)
    per_key = len(secret.identities) // count if secret.identities is not None else 0
    indices = secret.key_source_indices
    return dataclasses.replace(
        secret, keys=keys, labels=np.asarray(secret.labels)[kept],
        identities=evaluation_identities(IdentityCodec(owner_key), keys, per_key) if per_key else secret.identities,
        key_codes={**secret.key_codes, "keys": np.asarray(secret.key_codes["keys"])[kept], "selected_from": count},
        key_source_indices=indices and {
            **indices, "keys": [indices["keys"][i] for i in kept],
            "trained_keys_dropped": [indices["keys"][i] for i in np.setdiff1d(np.arange(count), kept)]})
