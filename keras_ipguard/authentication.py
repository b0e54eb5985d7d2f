"""Identity authentication: does an identity image belong to an active licensed user?

`authenticate` passes an identity image only if all hold (DESIGN.md): it is a
readable lossless image of the vault's input shape, its payload decodes, the
MAC verifies, the user exists and is not revoked, and, when a model is given,
the model predicts the watermark class for it. Every refusal names its reason.
It imports no TensorFlow: the model check is a callable the caller gives.
"""

import collections
import dataclasses
import os

import numpy as np

from . import images as image_io
from .errors import ImageInputError, Reason

# Images decoded and classified together; bounds memory for large directories.
AUTH_BATCH_SIZE = 1024


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
