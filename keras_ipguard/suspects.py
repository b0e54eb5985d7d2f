"""Suspect models as the owner can query them: top-1 class ids for a batch of images.

A suspect can be a Keras model, tf_keras or Keras 3 (in memory, a `.keras`/`.h5`
file or a directory holding one), a TensorFlow SavedModel directory, a TF
Serving REST endpoint (`http://host:port/v1/models/NAME`, queried with the
standard `:predict` API), or any Python callable from images to scores or labels.
Black-box use needs only the top-1 label.

A suspect answers a batch with scores (B, outputs) where it exposes them, or
with top-1 labels (B,) where it does not (`answers`); `classify` is the top-1
class, `task_classify` the top-1 among the N task classes (a watermark class
beyond them ignored), which the hidden key code is tested on.
"""

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from . import batches
from .backend import tensorflow
from .errors import IPGuardError

# Images per request to a REST endpoint (TF Serving's default gRPC/HTTP limits are far above this).
REST_BATCH = 128
REST_TIMEOUT_SECONDS = 30


class Suspect:
    """A model under test: implement `answers` (scores or labels) or `classify` (labels); `num_outputs` when known."""

    description = "model"
    num_outputs = None

    def answers(self, images):
        """Scores (B, outputs), or top-1 labels (B,) where the suspect exposes nothing more."""
        return self.classify(images)

    def classify(self, images):
        """Top-1 class ids."""
        return top1(self.answers(images))

    def task_classify(self, images, num_classes):
        """Top-1 class among the first `num_classes` outputs; a label-only suspect's labels as they are."""
        return task_top1(self.answers(images), num_classes)


def top1(answers):
    """Top-1 class ids of `answers`: scores (B, outputs) or labels (B,)."""
    answers = np.asarray(answers)
    return np.argmax(answers, axis=-1) if answers.ndim == 2 else answers.reshape(len(answers)).astype(np.int64)


def task_top1(answers, num_classes):
    """Top-1 among the first `num_classes` scores; labels (B,) as they are (an answer of class N is no task class)."""
    answers = np.asarray(answers)
    return np.argmax(answers[:, :num_classes], axis=-1) if answers.ndim == 2 else top1(answers)


class KerasSuspect(Suspect):
    """A Keras model in memory."""

    def __init__(self, model, description="Keras model"):
        self.model = model
        self.description = description
        # A subclassed WatermarkedClassifier has no static output_shape; it knows its size.
        watermark_class = getattr(model, "watermark_class", None)
        self.num_outputs = watermark_class + 1 if watermark_class is not None else int(model.output_shape[-1])

    def answers(self, images):
        return batches.scores(self.model, images)


class TransformedSuspect(Suspect):
    """A suspect reached through a query path that alters every image first (a filter, a re-encoding)."""

    def __init__(self, suspect, transform_images, description=None):
        self.suspect = suspect
        self.transform_images = transform_images
        self.description = description or f"{suspect.description} behind a query transform"
        self.num_outputs = suspect.num_outputs

    def answers(self, images):
        return self.suspect.answers(self.transform_images(np.asarray(images)))


class SavedModelSuspect(Suspect):
    """A TensorFlow SavedModel directory, called through one of its signatures (`serving_default` unless named)."""

    def __init__(self, path, signature=None):
        tf = tensorflow()
        self.description = f"SavedModel {path}" + (f" (signature {signature})" if signature else "")
        try:
            loaded = tf.saved_model.load(str(path))
        except (OSError, ValueError) as error:
            raise IPGuardError(f"cannot load SavedModel {path}: {str(error).splitlines()[0][:200]}") from None
        self._keep = loaded
        signature = signature or "serving_default"
        if signature not in loaded.signatures:
            raise IPGuardError(f"SavedModel {path} has no {signature} signature; it has "
                               f"{', '.join(sorted(loaded.signatures)) or 'none'}")
        self._signature = loaded.signatures[signature]
        (self._input_name, spec), = self._signature.structured_input_signature[1].items()
        self._input_dtype = spec.dtype
        outputs = self._signature.structured_outputs
        self._output_name = "probabilities" if "probabilities" in outputs else sorted(outputs)[0]
        self.num_outputs = outputs[self._output_name].shape[-1]

    def answers(self, images):
        tf = tensorflow()
        scores = []
        for start in range(0, len(images), 512):
            batch = tf.cast(tf.convert_to_tensor(np.asarray(images[start : start + 512])), self._input_dtype)
            scores.append(self._signature(**{self._input_name: batch})[self._output_name].numpy())
        return np.concatenate(scores) if scores else np.zeros((0, self.num_outputs), np.float32)


def rest_predictions(url, batch):
    """The `predictions` of TF Serving's REST API for one batch: POST {url}:predict {"instances": [...]}.

    Raises:
        IPGuardError: the endpoint did not answer, or not in TF Serving's format.
    """
    body = json.dumps({"instances": np.asarray(batch).tolist()}).encode()
    request = urllib.request.Request(f"{url}:predict", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REST_TIMEOUT_SECONDS) as response:
            return json.loads(response.read())["predictions"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
        raise IPGuardError(f"TF Serving at {url} did not answer a :predict request ({error})") from None


class RestSuspect(Suspect):
    """A TF Serving model behind its REST API: POST {url}:predict {"instances": [...]}."""

    def __init__(self, url):
        self.url = url.rstrip("/")
        self.description = f"TF Serving REST {self.url}"

    def answers(self, images):
        """Scores where the endpoint serves them for every image; else top-1 labels (label-only endpoints)."""
        images = np.asarray(images)
        rows = []
        for start in range(0, len(images), REST_BATCH):
            for prediction in rest_predictions(self.url, images[start : start + REST_BATCH]):
                if isinstance(prediction, dict):  # named outputs: prefer the top-1 class if served
                    if "classes" in prediction:
                        rows.append(int(np.asarray(prediction["classes"]).reshape(-1)[0]))
                        continue
                    prediction = prediction.get("probabilities", next(iter(prediction.values())))
                scores = np.asarray(prediction, np.float64).reshape(-1)
                if len(scores) > 1:
                    self.num_outputs = len(scores)
                    rows.append(scores)
                else:  # a bare label
                    rows.append(int(scores[0]))
        if rows and all(isinstance(row, np.ndarray) for row in rows):
            return np.stack(rows)
        return np.asarray([int(np.argmax(row)) if isinstance(row, np.ndarray) else row for row in rows], np.int64)


class CallableSuspect(Suspect):
    """Any Python callable mapping a uint8 batch to scores (B, outputs) or to top-1 labels (B,)."""

    def __init__(self, function, description=None):
        self.function = function
        self.description = description or f"Python callable {getattr(function, '__name__', type(function).__name__)}"

    def answers(self, images):
        answers = np.asarray(self.function(np.asarray(images)))
        if answers.ndim == 2:
            self.num_outputs = int(answers.shape[-1])
            return answers
        return answers.reshape(len(answers)).astype(np.int64)


def open_suspect(source, signature=None):
    """A `Suspect` from a Keras model (tf_keras or Keras 3), a path (Keras file/dir or SavedModel dir, called
    through `signature`, by default serving_default), an http(s) URL of a TF Serving model, or any callable
    `images -> scores or labels`."""
    if isinstance(source, Suspect):
        return source
    if hasattr(source, "predict") and hasattr(source, "output_shape"):
        return KerasSuspect(source)
    if callable(source):
        return CallableSuspect(source)
    text = str(source)
    if text.startswith(("http://", "https://")):
        return RestSuspect(text)
    path = Path(text)
    if not path.exists():
        raise IPGuardError(f"no model at {path}; give a Keras model file, a SavedModel directory or a TF Serving URL")
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return SavedModelSuspect(path, signature)
    if signature:
        raise IPGuardError(f"--signature names a SavedModel signature; {path} is no SavedModel directory")
    from .models import load_model

    return KerasSuspect(load_model(path), description=f"Keras model {path}")
