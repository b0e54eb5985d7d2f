"""Model extraction: the thief labels its own images by querying the stolen model and trains a fresh one.

Knockoff/Copycat-style: the queries are the attacker's half of the test split
(and, optionally, images of another dataset); the answers come through the
truncated N-class output, as probabilities (soft labels, distillation) or as
top-1 labels only (hard labels); the surrogate is a fresh model of the same
architecture or of another of the zoo, trained on those answers alone. From
its own task images the surrogate never sees a key, so only what the keys
share with the task's decision function can carry over; a thief that also
queries the key source's public dataset draws some keys by chance
(`keys_among`), and the report scores the code on the keys it did not ask.
With `--mark-rate R` the thief asks through the licence gateway serving with
`ipguard serve --mark-rate R`: the answers carry the gateway's served marks
(`served_marks`), and every surrogate is tested on them too.

Written here rather than with the Adversarial Robustness Toolbox's CopycatCNN
/ KnockoffNets: those need both models wrapped as ART TensorFlowV2Classifiers
with a custom train step, and a victim exposing its full output; ours may be
a Keras 3 model, a truncated output or top-1 labels, and the attack is the
few lines of `extract_model`.
"""

import dataclasses

import numpy as np

from .. import batches
from ..errors import IPGuardError
from ..settings import setting
from .base import Attack
from .common import AttackReport, Timer, measure

LABELS = ("hard", "soft")
SURROGATES = ("same", "other")
# "other": a different architecture of the zoo for the same input.
OTHER_ARCHITECTURE = {"small_cnn": "resnet20_s2", "resnet20": "small_cnn", "resnet20_s2": "small_cnn",
                      "vgg11": "small_cnn", "base_model": "small_cnn"}
DEFAULT_EPOCHS = 10
_BATCH = 64


@dataclasses.dataclass
class Answers:
    """What the thief got for its images: each class's median probability over its asks (renormalised), how many
    of its asks each class topped, and the marks the gateway recorded (None without a marking gateway)."""

    probabilities: np.ndarray
    votes: np.ndarray
    marks: object = None

    def targets(self, labels="hard"):
        """The surrogate's training targets: one-hot majority top-1 labels (hard), or the probabilities (soft)."""
        if labels == "soft":
            return self.probabilities.astype(np.float32)
        # The majority answer. A tie goes to the larger median probability: a marked ask swaps the true class's
        # probability with the mark's, so where two asks of three were marked differently the median keeps the
        # truth (a mean would hand it to a mark).
        winner = np.argmax(self.votes + 1e-3 * self.probabilities, axis=-1)
        return np.eye(self.probabilities.shape[1], dtype=np.float32)[winner]


def ask(model, images, num_classes, marks=None, votes=1, seed=0):
    """The thief's `Answers` for `images` through the N task outputs (renormalised probabilities); with `marks`
    (a `served_marks.MarkPolicy`), through a gateway that marks them. With `votes` > 1 the thief, knowing that a
    mark is keyed to exact pixels, asks about each image `votes` times, every ask after the first with +-1 noise
    on its pixels, and keeps the majority (the median probabilities for soft labels)."""
    from ..served_marks import Marks

    rng = np.random.default_rng(seed)
    asks, counts, recorded = [], np.zeros((len(images), num_classes)), []
    for vote in range(votes):
        asked = images if vote == 0 else np.clip(images.astype(np.int16) + rng.integers(-1, 2, images.shape),
                                                 0, 255).astype(np.uint8)
        scores = np.maximum(batches.scores(model, asked)[:, :num_classes].astype(np.float64), 0)
        probabilities = scores / np.maximum(scores.sum(axis=-1, keepdims=True), 1e-12)
        if marks is not None:
            probabilities, got = marks.apply(asked, probabilities)
            recorded.append(got)
        asks.append(probabilities)
        counts[np.arange(len(images)), np.argmax(probabilities, axis=-1)] += 1
    if recorded:
        recorded = Marks(np.concatenate([m.images for m in recorded]),
                         np.concatenate([m.model_classes for m in recorded]),
                         np.concatenate([m.served_classes for m in recorded]))
    median = np.median(asks, axis=0)
    median /= np.maximum(median.sum(axis=-1, keepdims=True), 1e-12)
    return Answers(median, counts, recorded or None)


def keys_among(keys, images):
    """bool (K,): which key images are, pixel for pixel, among `images` (a thief querying the key source's public
    dataset asks about some keys by chance)."""
    asked = {np.asarray(image).tobytes() for image in images}
    return np.array([np.asarray(key).tobytes() in asked for key in keys], bool)


def surrogate_architecture(vault_architecture, surrogate):
    """The zoo architecture of the surrogate: the vault's ("same"; a base model's twin is its clone) or another."""
    if surrogate == "same":
        return vault_architecture
    return OTHER_ARCHITECTURE.get(vault_architecture, "small_cnn")


def extract_model(model, images, num_classes, arch, labels="hard", epochs=DEFAULT_EPOCHS, seed=0, answers=None):
    """A fresh N-class model of architecture `arch` ("base_model": a re-initialised clone of `model`'s layers up to
    its last Dense layer) trained on `model`'s answers to `images` (`answers`: what the thief got, as `ask` gives
    them; default the model's own answers)."""
    from ..backend import keras as tf_keras
    from ..backend import keras_of
    from ..models import as_functional, build_plain_classifier, fresh_twin

    targets = (answers or ask(model, images, num_classes)).targets(labels)
    stolen = as_functional(model)
    keras = keras_of(stolen) if arch == "base_model" else tf_keras()  # the zoo is tf_keras
    keras.utils.set_random_seed(seed)
    if arch == "base_model":
        surrogate = fresh_twin(stolen, num_classes, name="surrogate")
    else:
        surrogate = build_plain_classifier(arch, images.shape[1:], num_classes)
    surrogate.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    batches.fit(surrogate, images, targets, _BATCH, epochs)
    return surrogate


def extra_queries(vault, dataset, count, data_dir, seed):
    """`count` train images of another tfds `dataset`, converted to the vault's input shape (seeded choice)."""
    from .. import data

    images, _ = data.load_split(dataset, "train", data_dir)
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), min(count, len(images)), replace=False))
    return data.convert_images(images[chosen], tuple(vault.input_shape))


@dataclasses.dataclass
class ExtractConfig:
    labels: tuple = setting(LABELS, "hard: top-1 labels only; soft: the N task probabilities (distillation); "
                            "repeatable.", choices=LABELS, flag="--labels")
    surrogates: tuple = setting(SURROGATES, "The surrogate's architecture: same as the stolen model's, or other (a "
                                "different one of the zoo); repeatable.", choices=SURROGATES, flag="--surrogate")
    queries: int = setting(5000, "Query budget: images of the attacker's split labelled by the stolen model (at "
                           "most the split's size).", kind=int, low=1)
    epochs: int = setting(DEFAULT_EPOCHS, "Surrogate training epochs.", kind=int, low=1)
    query_dataset: str | None = setting(None, "Also query train images of this other tfds dataset, e.g. mnist "
                                        "(converted to the model's input; TFDS_DATA_DIR).", kind=str)
    query_dataset_images: int = setting(0, "How many images of --query-dataset join the queries.", kind=int, low=0)
    mark_rate: float = setting(0.0, "Ask through the licence gateway serving with `ipguard serve --mark-rate R`: "
                               "this fraction of the answers carries the owner's served marks (0: the stolen model "
                               "itself).", kind=float, low=0, high=1)
    votes: int = setting(1, "With --mark-rate: ask about each image this many times, every ask after the first "
                         "with +-1 noise on its pixels (a mark is keyed to exact pixels), and keep the majority "
                         "answer (a thief who knows the method; each ask is a query the gateway sees).",
                         kind=int, low=1)


class Extract(Attack):
    name = "extract"
    summary = "Model extraction: a fresh model trained on the stolen model's hard or soft answers."
    Config = ExtractConfig

    def run(self, threat, model):
        """Every label kind with every surrogate architecture, on the same queries."""
        params, settings = self.config, []
        vault = threat.vault
        images = threat.attack_x[: params.queries]
        if params.query_dataset and not params.query_dataset_images:
            raise IPGuardError(f"--query-dataset {params.query_dataset} adds no images; give "
                               "--query-dataset-images N as well")
        if params.query_dataset:
            images = np.concatenate([images, extra_queries(vault, params.query_dataset, params.query_dataset_images,
                                                           None, seed=0)])
        from ..models import task_classes

        arch = vault.config.get("architecture") or "small_cnn"
        queried = keys_among(vault.key_images, images)
        codes = None if vault.key_codes is None else np.asarray(vault.key_codes)
        policy = None
        if params.mark_rate:
            from ..served_marks import MarkPolicy

            policy = MarkPolicy(vault.owner_key(), params.mark_rate, vault.num_classes)
        elif params.votes > 1:
            raise IPGuardError("--votes only matters against a marking gateway; give --mark-rate R as well")
        with Timer() as total:
            got = ask(model, images, vault.num_classes, policy, params.votes)
            baseline = measure(threat, model, {"labels": "none"})
            for labels in params.labels:
                for surrogate in params.surrogates:
                    chosen = surrogate_architecture(arch, surrogate)
                    with Timer() as timer:
                        stolen = extract_model(model, images, vault.num_classes, chosen, labels, params.epochs,
                                               answers=got)
                    extra = {"queries": int(len(images)), "surrogate_epochs": params.epochs,
                             "seconds": round(timer.seconds, 2), "keys_queried": int(queried.sum())}
                    if policy is not None:
                        extra.update(mark_rate=params.mark_rate, votes=params.votes)
                    if codes is not None and queried.any() and not queried.all():
                        # The code on the keys the thief never asked about: what carried over without a key.
                        answers = task_classes(stolen, vault.key_images[~queried], vault.num_classes)
                        extra["key_code_accuracy_unqueried"] = round(float(np.mean(answers == codes[~queried])), 4)
                    settings.append(measure(threat, stolen, {"labels": labels, "surrogate": chosen}, extra=extra,
                                            marks=got.marks))
        seen = (f"{int(queried.sum())} of the vault's {len(queried)} key images were among its queries (drawn from "
                "the same public dataset as the keys; key_code_accuracy_unqueried: the key code on the others)"
                if queried.any() else "it never saw a key")
        if policy is not None:
            asks = f", each {params.votes} times (the majority kept)" if params.votes > 1 else ""
            seen += (f"; it asked through the licence gateway marking {params.mark_rate:g} of the answers{asks} "
                     f"({len(got.marks) if got.marks else 0} of its asks got a served mark, which verify "
                     "then tests)")
        notes = [f"the thief queried the stolen model's N task outputs with {len(images)} of its own images "
                 f"(hard: top-1 labels; soft: probabilities) and trained a fresh model on the answers alone; {seen}"]
        return AttackReport(self.name, threat.to_dict(), baseline.to_dict(), settings, total.seconds, notes=notes)
