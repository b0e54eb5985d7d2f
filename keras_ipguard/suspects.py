"""Suspect models as the owner can query them: top-1 class ids for a batch of images.

A suspect can be a Keras model (in memory, a `.keras`/`.h5` file or a directory
holding one), a TensorFlow SavedModel directory, or a TF Serving REST endpoint
(`http://host:port/v1/models/NAME`, queried with the standard `:predict` API).
Black-box use needs only the top-1 label.
"""

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .backend import tensorflow
from .errors import IPGuardError

# Images per request to a REST endpoint (TF Serving's default gRPC/HTTP limits are far above this).
REST_BATCH = 128
REST_TIMEOUT_SECONDS = 30


class Suspect:
    """A model under test. `classify(uint8 batch) -> int class ids`; `num_outputs` when known."""

    description = "model"
    num_outputs = None

    def classify(self, images):
        raise NotImplementedError


class KerasSuspect(Suspect):
    """A Keras model in memory."""

    def __init__(self, model, description="Keras model"):
        self.model = model
        self.description = description
        # A subclassed WatermarkedClassifier has no static output_shape; it knows its size.
        watermark_class = getattr(model, "watermark_class", None)
        self.num_outputs = watermark_class + 1 if watermark_class is not None else int(model.output_shape[-1])

    def classify(self, images):
        from .models import predict_classes  # pylint: disable=import-outside-toplevel  (imports tf_keras)

        return predict_classes(self.model, images)


class TransformedSuspect(Suspect):
    """A suspect reached through a query path that alters every image first (a filter, a re-encoding)."""

    def __init__(self, suspect, transform_images, description=None):
        self.suspect = suspect
        self.transform_images = transform_images
        self.description = description or f"{suspect.description} behind a query transform"
        self.num_outputs = suspect.num_outputs

    def classify(self, images):
        return self.suspect.classify(self.transform_images(np.asarray(images)))


class SavedModelSuspect(Suspect):
    """A TensorFlow SavedModel directory, called through its `serving_default` signature."""

    def __init__(self, path):
        tf = tensorflow()
        self.description = f"SavedModel {path}"
        try:
            loaded = tf.saved_model.load(str(path))
        except (OSError, ValueError) as error:
            raise IPGuardError(f"cannot load SavedModel {path}: {str(error).splitlines()[0][:200]}") from None
        self._keep = loaded
        if "serving_default" not in loaded.signatures:
            raise IPGuardError(f"SavedModel {path} has no serving_default signature")
        self._signature = loaded.signatures["serving_default"]
        (self._input_name, spec), = self._signature.structured_input_signature[1].items()
        self._input_dtype = spec.dtype
        outputs = self._signature.structured_outputs
        self._output_name = "probabilities" if "probabilities" in outputs else sorted(outputs)[0]
        self.num_outputs = outputs[self._output_name].shape[-1]

    def classify(self, images):
        tf = tensorflow()
        classes = []
        for start in range(0, len(images), 512):
            batch = tf.cast(tf.convert_to_tensor(np.asarray(images[start : start + 512])), self._input_dtype)
            scores = self._signature(**{self._input_name: batch})[self._output_name]
            classes.append(np.argmax(scores.numpy(), axis=-1))
        return np.concatenate(classes)


class RestSuspect(Suspect):
    """A TF Serving model behind its REST API: POST {url}:predict {"instances": [...]}."""

    def __init__(self, url):
        self.url = url.rstrip("/")
        self.description = f"TF Serving REST {self.url}"

    def _predict(self, batch):
        body = json.dumps({"instances": batch.tolist()}).encode()
        request = urllib.request.Request(f"{self.url}:predict", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=REST_TIMEOUT_SECONDS) as response:
                return json.loads(response.read())["predictions"]
        except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
            raise IPGuardError(f"TF Serving at {self.url} did not answer a :predict request ({error})") from None

    def classify(self, images):
        images = np.asarray(images)
        classes = []
        for start in range(0, len(images), REST_BATCH):
            for prediction in self._predict(images[start : start + REST_BATCH]):
                if isinstance(prediction, dict):  # named outputs: prefer the top-1 class if served
                    if "classes" in prediction:
                        classes.append(int(np.asarray(prediction["classes"]).reshape(-1)[0]))
                        continue
                    prediction = prediction.get("probabilities", next(iter(prediction.values())))
                scores = np.asarray(prediction, np.float64).reshape(-1)
                self.num_outputs = len(scores) if len(scores) > 1 else self.num_outputs
                classes.append(int(np.argmax(scores)))
        return np.asarray(classes)


def open_suspect(source):
    """A `Suspect` from a Keras model, a path (Keras file/dir or SavedModel dir) or an http(s) URL."""
    if isinstance(source, Suspect):
        return source
    if hasattr(source, "predict") and hasattr(source, "output_shape"):
        return KerasSuspect(source)
    text = str(source)
    if text.startswith(("http://", "https://")):
        return RestSuspect(text)
    path = Path(text)
    if not path.exists():
        raise IPGuardError(f"no model at {path}; give a Keras model file, a SavedModel directory or a TF Serving URL")
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return SavedModelSuspect(path)
    from .models import load_model  # pylint: disable=import-outside-toplevel

    try:
        return KerasSuspect(load_model(path), description=f"Keras model {path}")
    except (OSError, ValueError, ImportError) as error:
        raise IPGuardError(f"cannot load model {path}: {str(error).splitlines()[0][:200]}") from None
