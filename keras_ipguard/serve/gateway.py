"""The licence gate itself, without HTTP: licences for identity images, checked tokens, validated batches.

`Gateway` holds what every request shares (the vault, the token signer, the
backend, the audit writer, a view of the registry's users) and answers in
plain values or `GatewayError`s carrying the HTTP status and reason the app
returns. Every licence attempt and every prediction request is audited.
"""

import io
import os
import threading
import time

import numpy as np

from .. import images as image_io
from ..authentication import authenticate
from ..errors import ImageInputError, Reason
from ..served_marks import MarkPolicy, fingerprint
from .audit import AuditWriter
from .tokens import DEFAULT_TOKEN_TTL_SECONDS, TokenError, TokenSigner

# Request limits: far above a normal batch, low enough that one request cannot exhaust the server.
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_INSTANCES = 1024
# Refusals of an identity image that say the request itself is malformed (400), not that it is no licence.
_INPUT_REASONS = {Reason.NOT_AN_IMAGE, Reason.WRONG_MODE, Reason.WRONG_SIZE, Reason.TOO_LARGE}


class GatewayError(Exception):
    """A refused request: `status` (4xx), `reason` (a short code) and a one-line message."""

    def __init__(self, status, reason, message):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    def to_dict(self):
        return {"error": self.message, "reason": self.reason}


class _Users:
    """The registry's users by id, re-read only when the database file changes (revocations included)."""

    def __init__(self, registry):
        self.registry = registry
        self._stamp, self._by_id = None, {}
        self._lock = threading.Lock()

    def get(self, user_id):
        stat = os.stat(self.registry.path)
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            with self._lock:
                self._by_id = {user.id: user for user in self.registry.users()}
                self._stamp = stamp
        return self._by_id.get(user_id)

    def invalidate(self):
        self._stamp = None


class _RateLimiter:
    """A token bucket per user: `rate` requests per second, bursts of up to max(1, rate)."""

    def __init__(self, rate):
        self.rate, self.burst = float(rate), max(1.0, float(rate))
        self._buckets = {}
        self._lock = threading.Lock()

    def allow(self, user_id, now=None):
        now = time.monotonic() if now is None else now
        with self._lock:
            level, then = self._buckets.get(user_id, (self.burst, now))
            level = min(self.burst, level + (now - then) * self.rate)
            allowed = level >= 1.0
            self._buckets[user_id] = (level - 1.0 if allowed else level, now)
            return allowed


class Gateway:
    """Licences and predictions for one vault and one backend.

    Args:
        vault: the opened `Vault`.
        backend: an `InProcessBackend` or `UpstreamBackend`.
        name: the model's name in the URLs (`/v1/models/NAME`).
        version: the model version reported by the status endpoint.
        token_ttl: seconds a licence token lives.
        rate: requests per second per user (None: unlimited).
        flush_seconds: the audit writer's interval.
        mark_rate: the fraction of images whose answer is marked (`served_marks`; None or 0: none).
    """

    def __init__(self, vault, backend, name, version=1, token_ttl=DEFAULT_TOKEN_TTL_SECONDS, rate=None,
                 flush_seconds=None, mark_rate=None):
        self.vault, self.backend, self.name, self.version = vault, backend, name, int(version)
        self.signer = TokenSigner(vault.owner_key(), token_ttl)
        self.users = _Users(vault.registry)
        self.rate = _RateLimiter(rate) if rate else None
        self.audit = AuditWriter(vault.registry, **({} if flush_seconds is None else {"flush_seconds": flush_seconds}))
        self.admin_token = os.urandom(16).hex()
        self.marks = MarkPolicy(vault.owner_key(), mark_rate, vault.num_classes) if mark_rate else None

    # -------------------------------------------------------------- licences

    def licence(self, body):
        """A bearer token for the identity image in `body` (PNG bytes); raises `GatewayError` on refusal."""
        try:
            image = image_io.read_image(io.BytesIO(body), self.vault.input_shape)
        except ImageInputError as error:
            self.audit.record("licence", None, None, "refused", error.reason, None)
            raise _licence_refused(error.reason) from None
        result = authenticate(self.vault, [image], classify=self.backend.top_classes, log=False).results[0]
        self.audit.record("licence", result.user_id, result.user, "ok" if result.authorized else "refused",
                          result.reason, None)
        if not result.authorized:
            raise _licence_refused(result.reason)
        now = int(time.time())
        token = self.signer.issue(result.user_id, result.user, now)
        return {"token": token, "token_type": "Bearer", "user": result.user, "issued_at": now,
                "expires_at": now + self.signer.ttl_seconds}

    # ----------------------------------------------------------- predictions

    def authorise(self, header):
        """The active user an `Authorization: Bearer` header belongs to; raises `GatewayError` otherwise."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self.audit.record("predict", None, None, "refused", "no-token", None)
            raise GatewayError(401, "no-token", "send `Authorization: Bearer TOKEN`; POST an identity image to "
                                                "/v1/licences for a token")
        try:
            claims = self.signer.check(token.strip())
        except TokenError as error:
            self.audit.record("predict", None, None, "refused", f"token-{error.reason}", None)
            raise GatewayError(401, f"token-{error.reason}", str(error)) from None
        user = self.users.get(claims.user_id)
        if user is None or not user.active:
            reason = Reason.REVOKED if user is not None else Reason.UNKNOWN_USER
            self.audit.record("predict", claims.user_id, claims.user, "refused", reason, None)
            raise GatewayError(403, reason, Reason.explain(reason))
        if self.rate is not None and not self.rate.allow(user.id):
            self.audit.record("predict", user.id, user.name, "refused", "rate-limited", None)
            raise GatewayError(429, "rate-limited", f"more than {self.rate.rate:g} requests per second; slow down")
        return user

    def batch(self, request):
        """The uint8 batch of a TF Serving `:predict` body (`instances` or `inputs`), and the answer's key."""
        if not isinstance(request, dict) or ("instances" in request) == ("inputs" in request):
            raise GatewayError(400, "bad-request", 'the body must be a JSON object with "instances" (row format) '
                                                   'or "inputs" (columnar format)')
        key = "instances" if "instances" in request else "inputs"
        rows = request[key]
        if isinstance(rows, dict) and len(rows) == 1:  # columnar format with the input named
            rows = next(iter(rows.values()))
        if not isinstance(rows, list) or not rows:
            raise GatewayError(400, "bad-request", f'"{key}" must be a non-empty list of images')
        if len(rows) > MAX_INSTANCES:
            raise GatewayError(413, "too-many-instances", f"at most {MAX_INSTANCES} instances per request, got "
                                                          f"{len(rows)}; split the batch")
        return key, _pixels(rows, self.vault.input_shape)

    def predict(self, user, images):
        """The N task-class probabilities for a checked batch, audited as the user's (marked answers recorded)."""
        probabilities = self.backend.task_probabilities(images)
        if self.marks is not None:
            probabilities, marks = self.marks.apply(images, probabilities)
            now = time.time()
            self.audit.record_marks([(now, user.id, user.name, fingerprint(image), int(y), int(t), image.tobytes())
                                     for image, y, t in zip(marks.images, marks.model_classes, marks.served_classes)])
        self.audit.record("predict", user.id, user.name, "ok", None, str(len(images)))
        return probabilities

    def close(self):
        self.audit.close()


def _licence_refused(reason):
    """The refusal of a licence: 400 for an unusable image, 403 for a revoked user, 401 for no licence."""
    status = 403 if reason == Reason.REVOKED else 400 if reason in _INPUT_REASONS else 401
    return GatewayError(status, reason, Reason.explain(reason))


def _pixels(rows, shape):
    """A list of images as a uint8 batch of `shape`, or a `GatewayError` saying what was wrong."""
    try:
        array = np.asarray(rows)
    except ValueError:
        raise GatewayError(400, "wrong-shape", f"every instance must be an image of shape {list(shape)}") from None
    if array.dtype == object or array.dtype.kind not in "iuf":
        raise GatewayError(400, "wrong-dtype", "pixel values must be numbers (uint8, 0..255)")
    if array.ndim == 3 and shape[-1] == 1:
        array = array[..., None]
    if array.shape[1:] != tuple(shape):
        raise GatewayError(400, "wrong-shape", f"every instance must be an image of shape {list(shape)}, got "
                                               f"{list(array.shape[1:])}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise GatewayError(400, "not-finite", "pixel values must be finite (no NaN or infinity)")
    if array.min() < 0 or array.max() > 255 or (array.dtype.kind == "f" and np.any(array != np.round(array))):
        raise GatewayError(400, "wrong-dtype", "pixel values must be integers 0..255 (uint8)")
    return array.astype(np.uint8)


def model_name(model=None, upstream=None, vault_path=None):
    """TF Serving's name for the model: `--model serving/fm/3` -> fm, `--upstream .../v1/models/fm` -> fm."""
    if upstream:
        return upstream.rstrip("/").rsplit("/", 1)[-1]
    if model:
        path = os.path.abspath(os.fspath(model))
        base, last = os.path.split(path)
        return os.path.basename(base) if last.isdigit() else last
    return os.path.basename(os.path.abspath(os.fspath(vault_path)))


def model_version(model=None):
    """The version a `DIR/N` SavedModel path names (1 otherwise)."""
    last = os.path.basename(os.path.abspath(os.fspath(model))) if model else ""
    return int(last) if last.isdigit() else 1

