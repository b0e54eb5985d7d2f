"""What the gateway serves: the vault's model in process, or an upstream TF Serving REST endpoint.

A backend answers two questions for a uint8 batch (B, H, W, C):
`task_probabilities` (B, N), what customers get (the `classify` signature:
class N removed and the rest renormalised), and `top_classes` (B,) over all
outputs, which the licence check asks of an identity image (class N or not).
"""

import urllib.error
import urllib.request

import numpy as np

from ..backend import tensorflow
from ..errors import IPGuardError
from ..suspects import rest_predictions


class BackendError(RuntimeError):
    """The model could not answer (an upstream down or answering garbage): the gateway says 502."""


def task_part(scores, num_classes):
    """The N task-class probabilities of (B, N+1) scores, renormalised; (B, N) scores as they are."""
    scores = np.asarray(scores, np.float64)
    if scores.shape[-1] == num_classes:
        return scores
    task = scores[:, :num_classes]
    return task / np.maximum(task.sum(axis=-1, keepdims=True), 1e-12)


class InProcessBackend:
    """The export's `classify` and `serving_default` signatures, loaded in this process.

    Args:
        vault: the opened vault (N, input shape).
        model_dir: a SavedModel directory (`ipguard export`'s `DIR/N`), or None for the vault's own model
            wrapped in the same serving functions.
    """

    def __init__(self, vault, model_dir=None):
        tf = tensorflow()
        self.num_classes = vault.num_classes
        if model_dir is None:
            from ..models import load_model
            from ..savedmodel import serving_module

            if not vault.has_model:
                raise IPGuardError(f"vault {vault.path} holds no model; run `ipguard embed` or give --model")
            self._module = serving_module(load_model(vault.model_path), vault.num_classes, vault.input_shape)
            self._classify, self._all = self._module.classify, self._module.serving_default
            self.description = f"the model of vault {vault.path}"
        else:
            try:
                self._module = tf.saved_model.load(str(model_dir))
                self._classify = self._module.signatures["classify"]
                self._all = self._module.signatures["serving_default"]
            except (OSError, ValueError, KeyError) as error:
                raise IPGuardError(f"--model {model_dir}: not an `ipguard export` SavedModel with a classify "
                                   f"signature ({str(error).splitlines()[0][:200]})") from None
            self.description = f"SavedModel {model_dir}"
        self._tf = tf

    def task_probabilities(self, images):
        return self._classify(images=self._tf.constant(images, self._tf.uint8))["probabilities"].numpy()

    def top_classes(self, images):
        return self._all(images=self._tf.constant(images, self._tf.uint8))["classes"].numpy()

    def status(self):
        return "AVAILABLE"


class UpstreamBackend:
    """A TF Serving model behind its REST API (`http://host:port/v1/models/NAME`), queried with `:predict`.

    The upstream should serve all N+1 outputs (the export's `serving_default`): customers still get only the N
    task classes, and the licence check can see class N.
    """

    def __init__(self, vault, url):
        if not url.startswith(("http://", "https://")):
            raise IPGuardError(f"--upstream must be an http(s) URL of a TF Serving model, got {url!r}")
        self.url = url.rstrip("/")
        self.num_classes = vault.num_classes
        self.description = f"TF Serving at {self.url}"

    def _scores(self, images):
        try:
            predictions = rest_predictions(self.url, images)
        except IPGuardError as error:
            raise BackendError(f"upstream: {error}") from None
        rows = [p.get("probabilities", p) if isinstance(p, dict) else p for p in predictions]
        try:
            scores = np.asarray(rows, np.float64)
        except ValueError:
            raise BackendError(f"upstream {self.url} answered something other than scores") from None
        if scores.ndim != 2 or len(scores) != len(images) or scores.shape[1] not in (self.num_classes,
                                                                                   self.num_classes + 1):
            raise BackendError(f"upstream {self.url} answered scores of shape {scores.shape} for "
                               f"{len(images)} images of an {self.num_classes}-class task")
        return scores

    def task_probabilities(self, images):
        return task_part(self._scores(images), self.num_classes)

    def top_classes(self, images):
        return np.argmax(self._scores(images), axis=-1)

    def status(self):
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:
                return "AVAILABLE" if response.status == 200 else "UNAVAILABLE"
        except (urllib.error.URLError, OSError):
            return "UNAVAILABLE"
