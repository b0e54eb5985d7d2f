"""Ownership verification: does a suspect model carry the vault's watermark?

`verify` queries a suspect with the vault's key images and control images
(made like the keys, never trained on) and runs every test the suspect's
answers allow, each a one-sided binomial test of the key hits against the
chance rate measured on the suspect itself (its hit rate on the controls):

- `watermark`: the keys answer class N (or a comparison scheme's trigger
  label). Needs the watermark class in the suspect's answers.
- `key_code`: the keys' top-1 among the N task classes is their secret task
  class (`keycode`). Runs on N+1 or N scores (truncated copies, a re-trained
  head) and on top-1 labels alike; controls carry secret classes too.

With both, the combined p-value is Bonferroni's, min(1, 2 x the smaller p):
valid whatever the two tests' dependence (they query the same keys), so
running two tests never inflates the confidence. A model that answers
class N, or one class, to everything is therefore never "owned".
"""

import dataclasses

import numpy as np

from . import schemes
from .suspects import task_top1, top1

# Ownership is claimed when p < this: even a million innocent suspects tested
# would yield a false claim with probability below 1e-6 (Bonferroni).
OWNERSHIP_ALPHA = 1e-12


@dataclasses.dataclass
class OwnershipReport:
    """The evidence for or against "this suspect is derived from the vault's model"."""

    suspect: str
    owned: bool
    has_watermark_class: bool
    num_outputs: int | None
    watermark_accuracy: float
    hits: int
    keys: int
    chance_rate: float
    chance_rates: dict
    p_value: float
    threshold: float
    verdict: str
    method: str
    key_answer: str
    task_agreement: dict | None = None
    tests: dict = dataclasses.field(default_factory=dict)
    key_code_accuracy: float | None = None

    def to_dict(self):
        return dataclasses.asdict(self)


def _laplace_rate(hits, total):
    # (hits+1)/(total+2): never 0, so a suspect silent on the controls still needs many key hits.
    return (hits + 1) / (total + 2)


def _task_agreement(vault, key_answers, control_answers):
    """For a suspect without class N: how often its top-1 answers (already queried) match the vault model's best
    task class on the keys and on each control set.

    Descriptive only: a copy with the watermark unit cut off agrees on the keys
    and controls alike, so this is no proof by itself.
    """
    from .models import task_classes
    from .suspects import open_suspect

    own = open_suspect(vault.model_path).model

    def agreement(answers, images):
        return float(np.mean(top1(answers) == task_classes(own, images, vault.num_classes)))

    result = {"keys": agreement(key_answers, vault.key_images)}
    for name, images in sorted(vault.controls.items()):
        result[name] = agreement(control_answers[name], images)
    return result


@dataclasses.dataclass
class BinomialTest:
    """One test: how many keys got their secret answer, against the suspect's own rate on the controls."""

    name: str
    hits: int
    keys: int
    chance_rate: float
    chance_rates: dict
    p_value: float

    @property
    def accuracy(self):
        return self.hits / max(1, self.keys)

    def to_dict(self):
        return {"accuracy": self.accuracy, **dataclasses.asdict(self)}


def binomial_test(name, key_answers, key_targets, controls):
    """P(X >= hits), X ~ Binomial(keys, chance rate); `controls` {name: (answers, targets)}.

    The chance rate is the highest Laplace-smoothed control rate (hits+1)/(n+2): never 0, so a suspect silent
    on the controls still needs many key hits.
    """
    from scipy.stats import binom

    hits = int(np.sum(np.asarray(key_answers) == np.asarray(key_targets)))
    chance = {}
    for control, (answers, targets) in sorted(controls.items()):
        control_hits = int(np.sum(np.asarray(answers) == np.asarray(targets)))
        chance[control] = {"watermark_answers": control_hits, "images": int(len(answers)),
                           "rate": control_hits / max(1, len(answers))}
    rate = max((_laplace_rate(c["watermark_answers"], c["images"]) for c in chance.values()),
               default=_laplace_rate(0, 0))
    p_value = float(binom.sf(hits - 1, len(key_targets), rate))
    return BinomialTest(name, hits, int(len(key_targets)), rate, chance, p_value)


def combined_p_value(p_values):
    """Bonferroni: the smallest p times the number of tests (capped at 1); valid under any dependence."""
    return min(1.0, len(p_values) * min(p_values)) if p_values else 1.0


def verify(vault, suspect=None, alpha=OWNERSHIP_ALPHA, signature=None):
    """Tests whether `suspect` carries the vault's watermark, with every test its answers allow.

    Args:
        vault: an opened `Vault`.
        suspect: a Keras model, a path (Keras file/dir, SavedModel dir), a TF
            Serving REST URL, or a `suspects.Suspect`; None = the vault's model.
        alpha: decision threshold on the (combined) p-value.
        signature: the SavedModel signature to query (default serving_default).

    Returns:
        An `OwnershipReport`: `tests` holds each test run; `p_value` is their combined p-value.
    """
    from .suspects import open_suspect

    suspect = open_suspect(vault.model_path if suspect is None else suspect, signature)
    labels = vault.key_labels  # class N for every key, or a comparison scheme's trigger labels
    key_answers = suspect.answers(vault.key_images)
    control_answers = {name: suspect.answers(images) for name, images in sorted(vault.controls.items())}
    # Without class N in its outputs (a truncated copy) the suspect cannot answer it: no watermark test.
    has_class = suspect.num_outputs is None or suspect.num_outputs > int(np.max(labels, initial=0))
    tests = {}
    if has_class:
        tests["watermark"] = binomial_test("watermark", top1(key_answers), labels, {
            name: (top1(answers), vault.control_labels(name)) for name, answers in control_answers.items()})
    codes = vault.key_codes
    if codes is not None:
        n = vault.num_classes
        tests["key_code"] = binomial_test("key_code", task_top1(key_answers, n), codes, {
            name: (task_top1(answers, n), vault.control_codes(name)) for name, answers in control_answers.items()})
    p_value = combined_p_value([test.p_value for test in tests.values()])
    owned = bool(tests) and p_value < alpha
    mark = tests.get("watermark")
    agreement = None if has_class or not vault.has_model else _task_agreement(vault, key_answers, control_answers)
    wanted = schemes.of_vault(vault).key_answer(vault.num_classes)
    return OwnershipReport(
        suspect=suspect.description,
        owned=owned,
        has_watermark_class=has_class,
        num_outputs=suspect.num_outputs,
        watermark_accuracy=mark.accuracy if mark else 0.0,
        hits=mark.hits if mark else 0,
        keys=int(len(labels)),
        chance_rate=mark.chance_rate if mark else None,
        chance_rates=mark.chance_rates if mark else {},
        p_value=p_value,
        threshold=alpha,
        verdict=_verdict(tests, owned, p_value, alpha, wanted, suspect, vault),
        task_agreement=agreement,
        key_answer=wanted,
        tests={name: test.to_dict() for name, test in tests.items()},
        key_code_accuracy=tests["key_code"].accuracy if "key_code" in tests else None,
        method=("one-sided binomial test per available test (watermark: keys answer their label; key_code: keys' "
                "top-1 task class is their secret class); chance rate = the highest Laplace-smoothed rate (hits+1)/"
                "(n+2) on the suspect's own non-key controls; p = Bonferroni's min(1, tests x smallest p); "
                "owned iff p < threshold"),
    )


def _verdict(tests, owned, p_value, alpha, wanted, suspect, vault):
    """One line: the verdict, the combined p-value and what each test found."""
    parts = []
    if "watermark" in tests:
        t = tests["watermark"]
        parts.append(f"{t.hits}/{t.keys} keys answered {wanted} (p = {t.p_value:.3g})")
    else:
        parts.append(f"no watermark class in its {suspect.num_outputs} outputs")
    if "key_code" in tests:
        t = tests["key_code"]
        parts.append(f"{t.hits}/{t.keys} keys answered their secret task class (key code, p = {t.p_value:.3g})")
    if not tests:
        return (f"not owned: the suspect has {suspect.num_outputs} outputs and no watermark class "
                f"{vault.watermark_class}, and the vault has no key code; no test can be run on it (see "
                "task_agreement for what its answers share with the vault model's)")
    combined = f"p = {p_value:.3g}" + (" (Bonferroni over 2 tests)" if len(tests) > 1 else "")
    return f"{'owned' if owned else 'not owned'}: {'; '.join(parts)}; {combined} {'<' if owned else '>='} {alpha:g}"
