"""What every attack shares: the threat model's data split and the measurements."""

import dataclasses
import time

import numpy as np

from .. import metrics, schemes, sources
from ..suspects import KerasSuspect, Suspect, TransformedSuspect
from ..verification import figures_of, verify

# The attacker's share of the test split; the rest is scored (the attacks issue).
ATTACKER_SHARE = 0.5


@dataclasses.dataclass
class ThreatModel:
    """The attacker holds the model and `attack_x/y`; figures are measured on `eval_x/y`.

    No image is both trained on by the attacker and scored.
    """

    vault: object
    attack_x: np.ndarray
    attack_y: np.ndarray
    eval_x: np.ndarray
    eval_y: np.ndarray
    identities: np.ndarray | None  # None where the vault's scheme issues no identity images
    split: str

    def to_dict(self):
        return {"split": self.split, "attacker_examples": int(len(self.attack_x)),
                "eval_examples": int(len(self.eval_x))}


def threat_model(vault, data_dir=None, max_test_examples=None, seed=0, test=None):
    """Splits the task's test split in two halves (seeded) and issues evaluation identity images.

    The test split is the one the vault was embedded with (its `data_source`: a tfds dataset or an image
    folder, reopened), or `test`, (images, labels) arrays, for a vault embedded from in-memory data.
    """
    if test is None:
        task = sources.reopen_task(vault.config.get("data_source") or {"kind": "tfds", "name": vault.dataset},
                                   data_dir, max_test_examples)
        x, y = task.test.take(task.test.count)
    else:
        x, y = (np.asarray(a)[:max_test_examples] for a in test)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * ATTACKER_SHARE)
    attacker, scored = np.sort(order[:cut]), np.sort(order[cut:])
    return ThreatModel(
        vault=vault, attack_x=x[attacker], attack_y=y[attacker], eval_x=x[scored], eval_y=y[scored],
        identities=(metrics.evaluation_identities(vault.codec(), vault.key_images)
                    if schemes.of_vault(vault).issues_identities else None),
        split=(f"{vault.dataset} test split ({len(x)} images), seeded random halves: {cut} for the attacker, "
               f"{len(x) - cut} for measurement"),
    )


@dataclasses.dataclass
class AttackSetting:
    """The figures measured for one setting of an attack (one pruning rate, one variant, ...)."""

    setting: dict
    clean_accuracy: float
    watermark_accuracy: float | None  # None where the suspect has no watermark class (the test cannot run)
    identity_auth_rate: float | None
    owned: bool
    p_value: float
    key_code_accuracy: float | None = None  # None where the vault has no key code
    extra: dict = dataclasses.field(default_factory=dict)

    def to_dict(self):
        return {**self.setting, **{k: v for k, v in dataclasses.asdict(self).items() if k not in ("setting", "extra")},
                **self.extra}


@dataclasses.dataclass
class AttackReport:
    """An attack's settings, figures and the threat model, as written to reports/attack-<name>.json."""

    attack: str
    threat: dict
    baseline: dict
    settings: list
    seconds: float
    notes: list = dataclasses.field(default_factory=list)

    def to_dict(self):
        return {"attack": self.attack, "threat_model": self.threat, "unattacked": self.baseline,
                "settings": [s.to_dict() for s in self.settings], "seconds": round(self.seconds, 2),
                "notes": self.notes}


def identity_auth_rate(threat, classify, transform_images=None):
    """Fraction of fresh genuine identity images that decode, pass the MAC and make the model answer class N.

    `transform_images` models a query path that alters images before they arrive. None where the
    vault's scheme issues no identity images.
    """
    if threat.identities is None:
        return None
    images = threat.identities if transform_images is None else transform_images(threat.identities)
    decoded = threat.vault.codec().decode_batch(images)
    answers = np.asarray(classify(images))
    passed = [d.ok and a == threat.vault.watermark_class for d, a in zip(decoded, answers)]
    return float(np.mean(passed))


def measure(threat, suspect, setting, transform_images=None, extra=None, marks=None):
    """The standard figures for a suspect (a Keras model or a `Suspect`) under one setting (`marks`: the served
    marks to test, default the vault's recorded ones)."""
    suspect = suspect if isinstance(suspect, Suspect) else KerasSuspect(suspect)
    queried = suspect if transform_images is None else TransformedSuspect(suspect, transform_images)
    ownership = verify(threat.vault, queried, marks=marks)
    answers = np.asarray(queried.classify(threat.eval_x))
    return AttackSetting(
        setting=setting,
        clean_accuracy=float(np.mean(answers == threat.eval_y)),
        watermark_accuracy=ownership.watermark_accuracy if ownership.has_watermark_class else None,
        identity_auth_rate=identity_auth_rate(threat, suspect.classify, transform_images),
        owned=ownership.owned,
        p_value=ownership.p_value,
        key_code_accuracy=ownership.key_code_accuracy,
        extra={"chance_rate": ownership.chance_rate,
               "tests": {name: figures_of(t) for name, t in ownership.tests.items()}, **(extra or {})},
    )


class Timer:
    """Wall time of a block: `with Timer() as t: ...; t.seconds`."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
