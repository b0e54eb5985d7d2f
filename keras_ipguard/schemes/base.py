"""The `Scheme` base class and the registry every scheme joins when its class is defined.

A scheme owns what makes it that scheme: its keys or triggers and their
controls (`make_secret`), its training recipe (`train`), its capabilities
(a watermark class? identity images?) and its settings (`Config`,
`get_config`/`from_config`). `embed`, `verify`, `attack`, `export` and the CLI
ask the scheme; none of them compares scheme names.

This module imports no TensorFlow: the CLI reads the registry (names,
settings) before it knows whether a command needs TensorFlow at all.
"""

import dataclasses
from typing import ClassVar

import numpy as np

from ..lookup import Registered, Registry

REGISTRY = Registry("scheme")


@dataclasses.dataclass
class Secret:
    """What a scheme trains into a model and what verification needs of it.

    Attributes:
        keys: uint8 (K, H, W, C) key or trigger images.
        labels: int (K,) the answer each key must get.
        controls: {name: (uint8 images, int labels)} made like the keys but never
            trained on; a suspect's hit rate on them is its chance rate.
        details: JSON-serialisable facts recorded in vault.json (source and
            target classes, noise sigma, epsilon, ...).
        negatives: images trained away from the keys' answers, or None.
        identities: freshly issued evaluation identity images, or None.
        key_source: the dataset the keys come from, or None.
        key_source_indices: which of its images are keys, negatives, controls.
        key_codes: the hidden key code (`keycode.draw`: a secret task class per key
            and per control image), or None where the scheme trains none.
    """

    keys: np.ndarray
    labels: np.ndarray
    controls: dict
    details: dict = dataclasses.field(default_factory=dict)
    negatives: np.ndarray | None = None
    identities: np.ndarray | None = None
    key_source: str | None = None
    key_source_indices: dict | None = None
    key_codes: dict | None = None


class Scheme(Registered):
    """A watermark scheme: subclass, set `name`, and it is registered.

    Class attributes:
        name: the registry name (`--scheme NAME`).
        summary: one line: what the scheme is and whose it is.
        Config: a dataclass of the scheme's settings, fields made with `settings.setting`.
        has_watermark_class: the model gets one output more than the task, class N, that keys answer.
        issues_identities: licensed users get identity images (needs a watermark class).
        uses_key_source: keys come from an out-of-distribution dataset (`--key-source`).
        protects_base_models: can grow a user's trained model (`--base-model`) into a protected one.

    Example:

    >>> class Plain(Scheme):
    ...     name = "plain-example"
    ...     summary = "no watermark at all"
    >>> get("plain-example").output_units(10), get("plain-example").get_config()
    (10, {})
    """

    registry = REGISTRY
    has_watermark_class: ClassVar[bool] = False
    issues_identities: ClassVar[bool] = False
    uses_key_source: ClassVar[bool] = False
    protects_base_models: ClassVar[bool] = False

    # ------------------------------------------------------------------ what the scheme is

    def output_units(self, num_classes):
        """The model's number of outputs for an N-class task."""
        return num_classes + 1 if self.has_watermark_class else num_classes

    def watermark_class(self, num_classes):
        """The class keys answer (N), or None when keys carry task labels."""
        return num_classes if self.has_watermark_class else None

    def key_answer(self, num_classes):
        """What keys answer, in words (verify's verdict)."""
        return f"class {num_classes}" if self.has_watermark_class else "their trigger label"

    # ------------------------------------------------------------------ embedding (`embed` calls these)

    def check(self, run):
        """Refuses what the scheme cannot use (a key source without enough images, ...) before the data loads."""

    def build_model(self, run, arch):
        """A fresh model of architecture `arch` for the scheme (N task outputs by default)."""
        from ..models import build_plain_classifier

        return build_plain_classifier(arch, run.info.input_shape, run.info.num_classes)

    def protect_base_model(self, run, path):
        """(model, base accuracy, note): the user's trained model at `path`, ready to train the watermark into.

        Only for schemes with `protects_base_models`.
        """
        raise NotImplementedError

    def make_secret(self, run):
        """The `Secret` (keys or triggers, labels, controls) for this run, chosen with `run.secret_seed`."""
        raise NotImplementedError

    def key_streams(self, secret, num_classes):
        """The `data.KeyStreams` mixed into every training batch: the keys with their labels."""
        from ..data import KeyStreams

        targets = np.eye(self.output_units(num_classes), dtype=np.float32)[np.asarray(secret.labels)]
        return KeyStreams(secret.keys, targets)

    def train(self, run, model):
        """Trains the watermark into `model`; returns the `Secret`. One fit on the merged pipeline by default."""
        secret = self.make_secret(run)
        run.fit(model, run.pipeline(self, self.key_streams(secret, run.info.num_classes)))
        return secret

    def lr_cycles(self, run):
        """Cosine learning-rate cycles of the run's training (`training.compile_model`): --lr-cycles, else one
        decay."""
        return run.options.lr_cycles or 1

    def survival(self, run):
        """(rounds, share of the keys kept, owner images per round) of owner-side key selection (`survival`),
        or None: every key kept (the default)."""
        return None

    def finish(self, run, model):
        """A last step on the trained model (nothing by default); returns facts for the report."""
        return {}

    def control_watermark_rate(self, secret, classify):
        """The highest hit rate on the controls: images made like the keys but never trained on."""
        rates = [float(np.mean(np.asarray(classify(images)) == labels)) for images, labels in secret.controls.values()]
        return max(rates, default=None)


def get(identifier):
    """A scheme from a name (any case), a `{name, config}` dict or an instance."""
    return REGISTRY.get(identifier)


def names():
    """Every registered scheme's name, ours first."""
    return REGISTRY.names()


def of_vault(vault):
    """The scheme a vault was embedded with (vaults older than the `{name, config}` record included)."""
    record = vault.config.get("scheme")
    if isinstance(record, str):  # format 1 comparison vaults recorded only the name
        record = {"name": record, "config": {}}
    return get(record or {"name": "extra-class", "config": {}})
