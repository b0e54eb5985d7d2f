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
- `key_code_rank`: where the suspect gives scores, not only labels: how high
  each key's secret class ranks among its N task scores (0 = top), summed
  over the keys, against the ranks the controls' secret classes get. A
  fine-tuned copy that moved a key's answer off its class mostly leaves that
  class second or third, which the top-1 count throws away. The p-value
  P(sum <= observed) is computed exactly for K independent ranks drawn from
  each control set's measured rank distribution (Laplace-smoothed) and from
  the uniform one an innocent model gives a uniform secret class, and the
  largest is kept. Not run on keys kept by `survival` for how their codes
  survive: their codes lean toward what any model of the task answers.
- `served_marks`: where `ipguard serve --mark-rate` marked answers (the
  vault's registry holds them): among the marked images the suspect does not
  answer with the model's own class, how many it answers with the served mark
  (`served_marks`): chance exactly 1/(N-1) for a model that never learnt from
  the gateway's answers. Evidence of extraction through the gateway.

With several, the combined p-value is Bonferroni's, min(1, tests x the
smallest p): valid whatever the tests' dependence (they query the same keys),
so running several tests never inflates the confidence. A model that answers
class N, or one class, to everything is therefore never "owned".
"""

import dataclasses

import numpy as np

from . import schemes, served_marks
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
    not_run: dict = dataclasses.field(default_factory=dict)  # test name -> why the suspect or vault does not allow it

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


@dataclasses.dataclass
class MarksTest(BinomialTest):
    """The served-marks test: among the marked images the suspect does not answer with the model's class
    (`keys`), how many it answers with the served mark (`hits`); chance exactly 1/(N-1), no controls."""

    marks: int
    by_user: dict


def marks_test(answers, marks, num_classes):
    """The exact test of `answers`, the suspect's top-1 task class on each of `marks` (a `served_marks.Marks`
    with every image once)."""
    from scipy.stats import binom

    answers = np.asarray(answers, np.int64)
    differs = answers != marks.model_classes
    hits = answers == marks.served_classes  # implies differs: a mark is never the model's class
    chance = 1.0 / (num_classes - 1)
    p_value = float(binom.sf(int(hits.sum()) - 1, int(differs.sum()), chance)) if hits.any() else 1.0
    by_user = {}
    for index, user in enumerate(marks.users):
        entry = by_user.setdefault(str(user), {"marks": 0, "other_answers": 0, "hits": 0})
        entry["marks"] += 1
        entry["other_answers"] += int(differs[index])
        entry["hits"] += int(hits[index])
    figures = {"marked images": len(marks), "answered the model's class": int((~differs).sum())}
    return MarksTest("served_marks", int(hits.sum()), int(differs.sum()), chance, figures, p_value, len(marks),
                     by_user)


@dataclasses.dataclass
class RankTest:
    """The key-code rank test: the keys' secret classes' ranks among the task scores, against the controls'."""

    name: str
    keys: int
    classes: int
    rank_sum: int
    chance_rates: dict
    null: str
    p_value: float

    @property
    def mean_rank(self):
        return self.rank_sum / max(1, self.keys)

    def to_dict(self):
        return {"mean_rank": self.mean_rank, "chance_mean_rank": (self.classes - 1) / 2, **dataclasses.asdict(self)}


def code_ranks(scores, codes):
    """int (B,): how many of the other task classes score at least as high as each row's secret class (0 = top;
    a tie counts against the owner, and so does a NaN: a row whose secret class scores NaN ranks last)."""
    scores, codes = np.asarray(scores, np.float64), np.asarray(codes)
    own = scores[np.arange(len(codes)), codes][:, None]
    return ((scores >= own) | np.isnan(scores) | np.isnan(own)).sum(axis=1) - 1


def sum_at_most(total, count, distribution):
    """P(R_1 + ... + R_count <= total) for independent ranks R_i with P(R = r) = distribution[r], exactly (no
    normal approximation): the distribution of the partial sums up to `total`, scaled to stay in range."""
    distribution = np.asarray(distribution, np.float64)
    if total < 0:
        return 0.0
    sums, log_scale = np.array([1.0]), 0.0
    for _ in range(count):
        sums = np.convolve(sums, distribution)[: total + 1]
        peak = sums.max()
        if peak == 0:
            return 0.0
        sums, log_scale = sums / peak, log_scale + np.log(peak)
    return float(np.exp(np.log(sums.sum()) + log_scale))


def rank_test(name, key_scores, key_codes, controls, classes):
    """P(rank sum <= observed); `controls` {name: (scores, codes)}. The largest p over the uniform ranks of an
    innocent model and each control set's measured ranks (Laplace-smoothed, (count+1)/(n+classes))."""
    ranks = code_ranks(key_scores, key_codes)
    total, count = int(ranks.sum()), len(ranks)
    nulls = {"uniform": np.full(classes, 1.0 / classes)}
    chance = {}
    for control, (scores, codes) in sorted(controls.items()):
        control_ranks = code_ranks(scores, codes)
        chance[control] = {"mean_rank": float(control_ranks.mean()) if len(control_ranks) else None,
                           "images": int(len(control_ranks))}
        counts = np.bincount(control_ranks, minlength=classes)[:classes]
        nulls[control] = (counts + 1) / (counts.sum() + classes)
    p_values = {null: sum_at_most(total, count, distribution) for null, distribution in nulls.items()}
    null = max(p_values, key=p_values.get)
    return RankTest(name, count, classes, total, chance, null, min(1.0, p_values[null]))


def figures_of(test):
    """A test's figures as attack and benchmark reports keep them: its p-value and accuracy / chance rate, or,
    for the rank test, its mean rank; for the served-marks test, its counts too."""
    counts = ("hits", "keys", "marks") if "marks" in test else ()
    return {key: test[key] for key in ("accuracy", "chance_rate", "mean_rank", "p_value", *counts) if key in test}


def combined_p_value(p_values):
    """Bonferroni: the smallest p times the number of tests (capped at 1); valid under any dependence."""
    return min(1.0, len(p_values) * min(p_values)) if p_values else 1.0


def verify(vault, suspect=None, alpha=OWNERSHIP_ALPHA, signature=None, marks=None):
    """Tests whether `suspect` carries the vault's watermark, with every test its answers allow.

    Args:
        vault: an opened `Vault`.
        suspect: a Keras model, a path (Keras file/dir, SavedModel dir), a TF
            Serving REST URL, or a `suspects.Suspect`; None = the vault's model.
        alpha: decision threshold on the (combined) p-value.
        signature: the SavedModel signature to query (default serving_default).
        marks: the `served_marks.Marks` to test (default: those the vault's registry recorded, if any).

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
    tests, not_run = {}, {}
    if has_class:
        tests["watermark"] = binomial_test("watermark", top1(key_answers), labels, {
            name: (top1(answers), vault.control_labels(name)) for name, answers in control_answers.items()})
    codes = vault.key_codes
    if codes is not None:
        n = vault.num_classes
        tests["key_code"] = binomial_test("key_code", task_top1(key_answers, n), codes, {
            name: (task_top1(answers, n), vault.control_codes(name)) for name, answers in control_answers.items()})
        if np.ndim(key_answers) != 2:
            not_run["key_code_rank"] = "the suspect answers top-1 labels, not scores"
        elif vault.key_codes_selected:
            not_run["key_code_rank"] = ("the vault's keys were kept for how their codes survive, so their codes are "
                                        "not a uniform draw for an innocent model's ranks")
        else:
            tests["key_code_rank"] = rank_test("key_code_rank", np.asarray(key_answers)[:, :n], codes, {
                name: (np.asarray(answers)[:, :n], vault.control_codes(name))
                for name, answers in control_answers.items()}, n)
    marks = served_marks.recorded(vault) if marks is None else marks.unique()
    if marks is not None and len(marks):
        tests["served_marks"] = marks_test(task_top1(suspect.answers(marks.images), vault.num_classes), marks,
                                           vault.num_classes)
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
        not_run=not_run,
        method=("one-sided binomial test per available test (watermark: keys answer their label; key_code: keys' "
                "top-1 task class is their secret class); chance rate = the highest Laplace-smoothed rate (hits+1)/"
                "(n+2) on the suspect's own non-key controls; key_code_rank (scores only): P(sum of the secret "
                "classes' ranks among the task scores <= observed), exact, the largest over uniform ranks and each "
                "control set's measured ranks; served_marks (where the gateway marked answers): of the marked images "
                "not answered with the model's class, those answered with the mark, chance 1/(N-1); p = "
                "Bonferroni's min(1, tests x smallest p); owned iff p < threshold"),
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
    if "key_code_rank" in tests:
        t = tests["key_code_rank"]
        parts.append(f"their secret classes ranked {t.mean_rank:.2f} on average among {t.classes} (0 = top; "
                     f"chance {(t.classes - 1) / 2:g}; key-code rank test, p = {t.p_value:.3g})")
    if "served_marks" in tests:
        t = tests["served_marks"]
        parts.append(f"{t.hits} of the {t.keys} marked images it answers otherwise than the model got the gateway's "
                     f"mark (served marks, {t.marks} recorded, p = {t.p_value:.3g})")
    if not tests:
        return (f"not owned: the suspect has {suspect.num_outputs} outputs and no watermark class "
                f"{vault.watermark_class}, and the vault has no key code; no test can be run on it (see "
                "task_agreement for what its answers share with the vault model's)")
    combined = f"p = {p_value:.3g}" + (f" (Bonferroni over {len(tests)} tests)" if len(tests) > 1 else "")
    return f"{'owned' if owned else 'not owned'}: {'; '.join(parts)}; {combined} {'<' if owned else '>='} {alpha:g}"
