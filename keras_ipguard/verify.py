"""Ownership verification and identity authentication.

`verify` queries a suspect with the vault's key images and tests, with a
one-sided binomial test, whether it answers the watermark class on them more
often than chance, the chance rate being measured on the suspect itself from
its answers on non-key control images (held-out key-source images and clean
test images). A model that answers class N to everything is therefore never
"owned".

`authenticate` passes an identity image only if all hold (DESIGN.md): it is a
readable lossless image of the vault's input shape, its payload decodes, the
MAC verifies, the user exists and is not revoked, and, when a model is given,
the model predicts the watermark class for it. Every refusal names its reason.
"""

import collections
import dataclasses
import math
import os

import numpy as np

from . import images as image_io
from .errors import ImageInputError, Reason

# Images decoded and classified together; bounds memory for large directories.
AUTH_BATCH_SIZE = 1024
# Ownership is claimed when p < this: even a million innocent suspects tested
# would yield a false claim with probability below 1e-6 (Bonferroni).
OWNERSHIP_ALPHA = 1e-12


def binomial_tail(hits, trials, rate):
    """P(X >= hits) for X ~ Binomial(trials, rate), computed in log space."""
    if hits <= 0:
        return 1.0
    if rate <= 0:
        return 0.0
    if rate >= 1:
        return 1.0
    terms = [
        math.lgamma(trials + 1) - math.lgamma(i + 1) - math.lgamma(trials - i + 1)
        + i * math.log(rate) + (trials - i) * math.log1p(-rate)
        for i in range(hits, trials + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


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
    task_agreement: dict | None = None

    def to_dict(self):
        return dataclasses.asdict(self)


def _laplace_rate(hits, total):
    # (hits+1)/(total+2): never 0, so a suspect silent on the controls still needs many key hits.
    return (hits + 1) / (total + 2)


def _task_agreement(vault, suspect, key_answers):
    """For a suspect without class N: how often its answers match the vault model's best task class.

    Descriptive only: a copy with the watermark unit cut off agrees on the keys
    and controls alike, so this is no proof by itself.
    """
    from .suspects import open_suspect  # pylint: disable=import-outside-toplevel

    own = open_suspect(vault.model_path).model

    def task_labels(images):
        return np.argmax(own.task_probabilities(np.asarray(images, np.float32)).numpy(), axis=-1)

    result = {"keys": float(np.mean(key_answers == task_labels(vault.key_images)))}
    for name, images in sorted(vault.controls.items()):
        result[name] = float(np.mean(np.asarray(suspect.classify(images)) == task_labels(images)))
    return result


def verify(vault, suspect=None, alpha=OWNERSHIP_ALPHA):
    """Tests whether `suspect` carries the vault's watermark.

    Args:
        vault: an opened `Vault`.
        suspect: a Keras model, a path (Keras file/dir, SavedModel dir), a TF
            Serving REST URL, or a `suspects.Suspect`; None = the vault's model.
        alpha: decision threshold on the p-value.

    Returns:
        An `OwnershipReport`.
    """
    from .suspects import open_suspect  # pylint: disable=import-outside-toplevel  (imports TensorFlow)

    suspect = open_suspect(vault.model_path if suspect is None else suspect)
    labels = vault.key_labels  # class N for every key, or a comparison scheme's trigger labels
    answers = np.asarray(suspect.classify(vault.key_images))
    hits = int(np.sum(answers == labels))
    chance = {}
    for name, images in sorted(vault.controls.items()):
        control_hits = int(np.sum(np.asarray(suspect.classify(images)) == vault.control_labels(name)))
        chance[name] = {"watermark_answers": control_hits, "images": int(len(images)),
                        "rate": control_hits / max(1, len(images))}
    has_class = suspect.num_outputs is None or suspect.num_outputs > int(np.max(labels, initial=0))
    agreement = None if has_class or not vault.has_model else _task_agreement(vault, suspect, answers)
    # The least favourable (highest) control rate is the chance rate, smoothed so it is never 0.
    rate = max((_laplace_rate(c["watermark_answers"], c["images"]) for c in chance.values()),
               default=_laplace_rate(0, 0))
    p_value = binomial_tail(hits, len(answers), rate) if has_class else 1.0
    owned = has_class and p_value < alpha
    wanted = f"class {vault.watermark_class}" if vault.issues_identities else "their trigger label"
    if not has_class:
        verdict = (f"not owned: the suspect has {suspect.num_outputs} outputs and no watermark class "
                   f"{vault.watermark_class}; class-N evidence cannot be gathered from it (see task_agreement for "
                   "what its answers share with the vault model's)")
    elif owned:
        verdict = f"owned: {hits}/{len(answers)} keys answered {wanted}, p = {p_value:.3g} < {alpha:g}"
    else:
        verdict = f"not owned: {hits}/{len(answers)} keys answered {wanted}, p = {p_value:.3g} >= {alpha:g}"
    return OwnershipReport(
        suspect=suspect.description,
        owned=owned,
        has_watermark_class=has_class,
        num_outputs=suspect.num_outputs,
        watermark_accuracy=hits / max(1, len(answers)),
        hits=hits,
        keys=int(len(answers)),
        chance_rate=rate,
        chance_rates=chance,
        p_value=p_value,
        threshold=alpha,
        verdict=verdict,
        task_agreement=agreement,
        method=("one-sided binomial test of the key hits; chance rate = the highest Laplace-smoothed rate "
                "(hits+1)/(n+2) of hits on the suspect's non-key controls; owned iff p < threshold"),
    )


@dataclasses.dataclass
class AuthResult:
    """The outcome for one image."""

    source: str
    authorized: bool
    reason: str
    user: str | None = None
    user_id: int | None = None
    key_index: int | None = None
    issued_at: int | None = None

    @property
    def message(self):
        return Reason.explain(self.reason)

    def to_dict(self):
        return {**dataclasses.asdict(self), "message": self.message}


@dataclasses.dataclass
class AuthReport:
    """Per-image results and a summary."""

    results: list
    model_checked: bool

    @property
    def authorized_count(self):
        return sum(result.authorized for result in self.results)

    @property
    def by_reason(self):
        return dict(collections.Counter(result.reason for result in self.results))

    def to_dict(self):
        return {
            "model_checked": self.model_checked,
            "results": [result.to_dict() for result in self.results],
            "summary": {
                "images": len(self.results),
                "authorized": self.authorized_count,
                "identity_auth_rate": self.authorized_count / max(1, len(self.results)),
                "refused": len(self.results) - self.authorized_count,
                "by_reason": self.by_reason,
            },
        }


def _load(item, input_shape):
    """Returns (source name, uint8 array or None, refusal reason or None)."""
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            return "<array>", None, Reason.WRONG_MODE
        array = item.reshape(item.shape + (1,)) if item.ndim == 2 else item
        return "<array>", (array if array.shape == input_shape else None), (
            None if array.shape == input_shape else Reason.WRONG_SIZE
        )
    name = os.fspath(item)
    try:
        return name, image_io.read_image(name, input_shape), None
    except ImageInputError as error:
        return name, None, error.reason


def authenticate(vault, items, classify=None, log=True):
    """Authenticates identity images against a vault.

    Args:
        vault: an opened `Vault`.
        items: image file paths and/or uint8 arrays of the vault's input shape.
        classify: optional callable mapping a uint8 batch (B, H, W, C) to the
            model's top-1 class ids; None skips the model check.
        log: record every attempt in the vault's audit log.

    Returns:
        An `AuthReport` with one `AuthResult` per item, in order.
    """
    codec = vault.codec()
    results = []
    for start in range(0, len(items), AUTH_BATCH_SIZE):
        results.extend(_authenticate_batch(vault, codec, items[start : start + AUTH_BATCH_SIZE], classify))
    if log and results:
        vault.registry.log_many(
            ("authenticate", r.user_id, r.user, "ok" if r.authorized else "refused", r.reason, r.source)
            for r in results
        )
    return AuthReport(results, model_checked=classify is not None)


def _authenticate_batch(vault, codec, items, classify):
    loaded = [_load(item, vault.input_shape) for item in items]
    results = [AuthResult(name, False, reason or Reason.OK) for name, _, reason in loaded]
    readable = [i for i, (_, array, _) in enumerate(loaded) if array is not None]
    if not readable:
        return results
    decoded = codec.decode_batch(np.stack([loaded[i][1] for i in readable]))
    users = vault.registry.by_ids(d.payload.user_id for d in decoded if d.ok)
    passed = []
    for index, outcome in zip(readable, decoded):
        result = results[index]
        result.reason = outcome.reason
        if not outcome.ok:
            continue
        payload = outcome.payload
        result.user_id, result.key_index, result.issued_at = payload.user_id, payload.key_index, payload.issued_at
        user = users.get(payload.user_id)
        if user is None:
            result.reason = Reason.UNKNOWN_USER
            continue
        result.user = user.name
        if not user.active:
            result.reason = Reason.REVOKED
            continue
        passed.append(index)
    if classify is not None and passed:
        predicted = np.asarray(classify(np.stack([loaded[i][1] for i in passed])))
        for index, label in zip(passed, predicted):
            if int(label) != vault.watermark_class:
                results[index].reason = Reason.MODEL_REJECTS
    for index in passed:
        results[index].authorized = results[index].reason == Reason.OK
    return results
