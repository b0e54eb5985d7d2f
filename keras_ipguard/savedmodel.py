"""SavedModel export for TF Serving (`ipguard export`).

`DIR/N/` gets a SavedModel with three signatures, all taking `images`: uint8
of the task's shape, any batch size:

- `serving_default` -> `probabilities` (B, N+1) over all classes, `classes` (B,) top-1:
  the model as trained (what a thief would copy);
- `classify` -> `probabilities` (B, N) over the task classes with the watermark
  class removed and renormalised, `classes` (B,): for deployments that must not
  show class N (a scheme without a watermark class: the N outputs as they are);
- `identity`, only where the vault's scheme issues identity images ->
  `is_watermark_class` (B,) bool, `lsb_plane` (B, H*W*C) uint8: the raw
  least-significant-bit plane computed in-graph (the same bits as
  `stego.lsb_plane`), so a gateway can check identity payloads (the MAC check,
  which needs the owner secret, stays outside the SavedModel).

The export holds the model's weights only: no owner secret, key image or registry data.
"""

import dataclasses
import re
import shutil
import tempfile
from pathlib import Path

from . import atomic, schemes
from .backend import tensorflow
from .errors import ImageInputError, IPGuardError, Reason


@dataclasses.dataclass
class ExportResult:
    """Where the SavedModel went and which signatures it has."""

    path: Path
    signatures: tuple

    @property
    def version(self):
        return int(self.path.name)

    def to_dict(self):
        return {"saved_model": str(self.path), "version": self.version, "signatures": list(self.signatures)}


def lsb_plane_tf(images):
    """TensorFlow ops giving `stego.lsb_plane(images, batch=True)` for a batch (B, H, W[, C]).

    Returns:
        A uint8 tensor of shape (B, H*W*C) holding each value's LSB.
    """
    import tensorflow as tf  # a plain import: AutoGraph traces this inside the signatures
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8:
        raise ImageInputError(Reason.WRONG_MODE, f"expected uint8 pixels, got {images.dtype.name}")
    plane = tf.bitwise.bitwise_and(images, tf.constant(1, tf.uint8))
    return tf.reshape(plane, [tf.shape(images)[0], -1])


def _next_version(out):
    if not out.is_dir():
        return 1
    versions = [int(p.name) for p in out.iterdir() if p.is_dir() and re.fullmatch(r"\d+", p.name)]
    return max(versions, default=0) + 1


def serving_module(model, num_classes, input_shape):
    """A `tf.Module` whose tf.functions are the export's signatures."""
    tf = tensorflow()
    spec = tf.TensorSpec([None, *input_shape], tf.uint8, name="images")

    class ServingModule(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def _all(self, images):
            return self.model(tf.cast(images, tf.float32), training=False)

        @tf.function(input_signature=[spec])
        def serving_default(self, images):
            probabilities = self._all(images)
            return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1)}

        @tf.function(input_signature=[spec])
        def classify(self, images):
            task = self._all(images)[:, :num_classes]
            task = task / tf.reduce_sum(task, axis=-1, keepdims=True)
            return {"probabilities": task, "classes": tf.argmax(task, axis=-1)}

        @tf.function(input_signature=[spec])
        def identity(self, images):
            predicted = tf.argmax(self._all(images), axis=-1)
            return {"is_watermark_class": tf.equal(predicted, num_classes), "lsb_plane": lsb_plane_tf(images)}

    return ServingModule()


def signature_names(scheme):
    """The signatures an export of a `scheme` vault has: `identity` only where the scheme issues identities."""
    return ("serving_default", "classify") + (("identity",) if scheme.issues_identities else ())


def export(vault, out, version=None, model=None):
    """Writes the vault's model (or `model`) as a SavedModel at `out/<version>/`.

    Args:
        vault: an opened `Vault` (gives N and the input shape).
        out: the TF Serving model base path.
        version: integer version; default one more than the highest existing.
        model: a Keras model to export instead of the vault's (e.g. a pruned copy).

    Returns:
        An `ExportResult`.

    Raises:
        IPGuardError: the version exists (never overwritten) or the vault has no model.
    """
    from .models import load_model

    tf = tensorflow()
    out = Path(out)
    if model is None:
        if not vault.has_model:
            raise IPGuardError(f"vault {vault.path} holds no model; run `ipguard embed` first")
        model = load_model(vault.model_path)
    version = _next_version(out) if version is None else int(version)
    if version < 1:
        raise IPGuardError(f"--version must be a positive integer, got {version}")
    target = out / str(version)
    if target.exists():
        raise IPGuardError(f"{target} already exists; versions are never overwritten, choose another --version")
    out.mkdir(parents=True, exist_ok=True)
    module = serving_module(model, vault.num_classes, vault.input_shape)
    signatures = {name: getattr(module, name) for name in signature_names(schemes.of_vault(vault))}
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{version}.", suffix=".tmp"))
    try:
        tf.saved_model.save(module, str(tmp / "model"), signatures=signatures)
        atomic.fsync_directory(tmp / "model")
        (tmp / "model").replace(target)
        atomic.fsync_directory(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(target, tuple(signatures))
