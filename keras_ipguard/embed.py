"""Training the watermark into a classifier under a `tf.distribute` strategy (`ipguard embed`)."""

import contextlib
import dataclasses
import hmac
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from . import baselines, data, metrics
from .backend import keras as _keras
from .backend import tensorflow
from .errors import IPGuardError
from .identity import IdentityCodec
from .models import (DEFAULT_KERNEL_SCALE, WatermarkedClassifier, auto_architecture, build_backbone,
                     build_plain_classifier, harden_kernel_scale, predict_classes, save_model)
from .vault import OWNER_KEY_BYTES, OWNER_KEY_FILE, Vault

# Epochs when --epochs is not given: enough for the architecture to converge.
DEFAULT_EPOCHS = {"small_cnn": 15, "resnet20": 60, "vgg11": 60, "base_model": 2}
# The pruning-robustness term's weight when --prune-robustness is not given. On
# Fashion-MNIST it keeps the keys through pruning at 0.8 for 0.4 points of
# fidelity; at weight 1 it cost 0.65 on one seed. On a reduced CIFAR-10
# ResNet-20 run it made training 42% slower and did not reach the pruning
# target, so it stays off there (and for base models) until measured on a
# full run. See docs/results/README.md, "Pruning robustness".
DEFAULT_PRUNE_ROBUSTNESS = {"small_cnn": 0.3, "resnet20": 0.0, "vgg11": 0.0, "base_model": 0.0}
# The term joins for the last third of the steps: on from the first step, it
# cost 0.5-0.8 points of clean accuracy on Fashion-MNIST.
PRUNE_ROBUSTNESS_FROM = 2 / 3
DEFAULT_KEYS = 100  # the paper's key-set size
DEFAULT_BATCH_SIZE = 128  # per replica
# Optimisers: Adam for the small CNN, SGD with momentum for the deep CIFAR nets
# (the ResNet paper's 0.1), both with cosine decay; a gentle Adam to fine-tune a
# base model without losing its accuracy.
DEFAULT_LEARNING_RATE = {"small_cnn": 1e-3, "resnet20": 0.1, "vgg11": 0.05, "base_model": 3e-4}
IDENTITIES_PER_KEY = 2  # fresh identity images per key for identity_watermark_accuracy
# Stealthy keys: an autoencoder trained this long on this many of the owner's training images scores candidates.
STEALTH_AUTOENCODER_EXAMPLES = 5000
STEALTH_AUTOENCODER_EPOCHS = 5
# Frontier stitching: after plain training, fine-tune with the keys until every key gets its label
# (Le Merrer et al.), at most this many epochs, at this fraction of the initial learning rate.
STITCH_MAX_EPOCHS = 5
STITCH_LEARNING_RATE_FACTOR = 0.3
# Keys are "boosted" while stitching (many copies among the training data, as in reference implementations).
STITCH_KEY_SHARE = 0.25


@dataclasses.dataclass
class EmbedOptions:
    """Settings of one `embed` run (the CLI's options)."""

    dataset: str
    data_dir: str | None = None
    epochs: int | None = None
    keys: int = DEFAULT_KEYS
    key_source: str | None = None
    arch: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    base_model: str | None = None
    strategy: str = "auto"
    baseline: bool = False
    max_train_examples: int | None = None
    max_test_examples: int | None = None
    key_share: float = data.DEFAULT_KEY_SHARE
    key_jitter: bool = False
    negatives: int = data.DEFAULT_NEGATIVES
    negative_weight: float = data.DEFAULT_NEGATIVE_WEIGHT
    negative_class: int | None = None  # None: a uniform target over the task classes
    stealthy_keys: bool = True
    learning_rate: float | None = None
    scheme: str = baselines.EXTRA_CLASS
    kernel_scale: float = DEFAULT_KERNEL_SCALE  # 1: off
    prune_robustness: float | None = None  # None: by architecture; 0: off; the extra-class scheme only
    verbose: int = 1


@dataclasses.dataclass
class EmbedResult:
    """The vault written and the figures of `reports/embed.json`."""

    vault_path: Path
    report: dict

    def to_dict(self):
        return {"vault": str(self.vault_path), **self.report}


def make_strategy(name="auto"):
    """`auto`: MirroredStrategy over all visible GPUs (or several logical CPUs), else the default.

    `mirrored` forces MirroredStrategy, `multiworker` uses MultiWorkerMirroredStrategy
    configured by TF_CONFIG, `default` the no-op default strategy.
    """
    tf = tensorflow()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise IPGuardError("--strategy multiworker needs TF_CONFIG describing the cluster; see tf.distribute docs")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name not in ("auto", "mirrored"):
        raise IPGuardError(f"unknown strategy {name!r}; choose auto, mirrored, multiworker or default")
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    if len(devices) > 1 or name == "mirrored" or devices[0].device_type == "GPU":
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    return tf.distribute.get_strategy()


class StopOnNaN(_keras().callbacks.Callback):
    """Stops training at the first non-finite loss and remembers where."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.failed_at = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.failed_at = (self.epoch + 1, batch + 1)
            self.model.stop_training = True


class StopWhenKeysLearnt(_keras().callbacks.Callback):
    """Ends training after the first epoch at which every key image gets its label."""

    def __init__(self, keys, labels):
        super().__init__()
        self.keys, self.labels = keys, np.asarray(labels)
        self.epochs = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs = epoch + 1
        if np.all(predict_classes(self.model, self.keys) == self.labels):
            self.model.stop_training = True


def _compile(model, arch, learning_rate, total_steps):
    keras = _keras()
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, total_steps))
    if arch in ("resnet20", "vgg11"):
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    else:
        optimizer = keras.optimizers.Adam(schedule)
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["categorical_accuracy"])


def _load_base_model(path):
    keras = _keras()
    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError, ImportError) as error:
        raise IPGuardError(f"cannot load --base-model {path}: {str(error).splitlines()[0][:200]}") from None


def _base_model_classifier(path, info, test_x, test_y):
    """Wraps a user's N-class model as a WatermarkedClassifier, fixing its input scale.

    Returns (model, the base model's own clean accuracy, input scale note).
    """
    keras = _keras()
    base = _load_base_model(path)
    if tuple(base.input_shape[1:]) != info.input_shape:
        raise IPGuardError(f"--base-model takes inputs of shape {base.input_shape[1:]}, {info.name} has {info.input_shape}")
    if base.output_shape[-1] != info.num_classes:
        raise IPGuardError(f"--base-model has {base.output_shape[-1]} outputs, {info.name} has {info.num_classes} classes")
    # Our models take raw pixels 0..255; many trained models expect 0..1. Pick the scale it was trained on.
    raw = float(np.mean(predict_classes(base, test_x) == test_y))
    unit = float(np.mean(predict_classes(base, test_x / 255.0) == test_y))
    model = WatermarkedClassifier.from_base_model(base, info.num_classes)
    if unit > raw:
        inputs = keras.Input(shape=info.input_shape, name="images")
        features = model.backbone(keras.layers.Rescaling(1 / 255.0)(inputs))
        model = WatermarkedClassifier(
            keras.Model(inputs, features, name="base_backbone_rescaled"), info.num_classes, head=model.head,
            name="watermarked_classifier",
        )
        return model, unit, "base model expects inputs in [0, 1]; a Rescaling(1/255) layer was prepended"
    return model, raw, "base model takes raw pixel values 0..255"


def _secret_seed(owner_key):
    return int.from_bytes(hmac.digest(owner_key, b"ipguard/v1/key-selection", "sha256")[:8], "big")


def _task_controls(test_x, seed, count=data.DEFAULT_CONTROLS):
    """A seeded sample of clean test images kept in the vault as verification controls."""
    chosen = np.random.default_rng(seed).choice(len(test_x), size=min(count, len(test_x)), replace=False)
    return test_x[np.sort(chosen)]


def machine_info():
    """Platform, CPU and GPU names: recorded with every measured figure."""
    tf = tensorflow()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
                 for gpu in tf.config.list_physical_devices("GPU")],
    }


def _work_dir(out):
    out = Path(out)
    return out.parent / f".{out.name}.embed-work"


def _prepare_work_dir(work, options, resume, force):
    """Checkpoint directory of an unfinished run: created, reused with --resume, or refused."""
    settings = json.dumps(dataclasses.asdict(options) | {"verbose": None}, sort_keys=True)
    if work.exists():
        if resume and (work / "options.json").is_file() and (work / "options.json").read_text() == settings:
            return (work / OWNER_KEY_FILE).read_bytes()
        if resume:
            raise IPGuardError(f"the checkpoint at {work} was made with other options; rerun with the same options, or with --force to start over")
        if not force:
            raise IPGuardError(f"an interrupted embed left a checkpoint at {work}; pass --resume to continue it or --force to start over")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    owner_key = os.urandom(OWNER_KEY_BYTES)
    key_file = work / OWNER_KEY_FILE
    key_file.write_bytes(owner_key)
    os.chmod(key_file, 0o600)
    (work / "options.json").write_text(settings)
    return owner_key


def _key_set(work, info, key_source, train_x, options, secret_seed, stealthy):
    """The run's key set, chosen once and recorded in the work directory so that --resume reuses it."""
    record = work / "key_set.json"
    if record.is_file():
        return data.key_set_from_indices(key_source, json.loads(record.read_text()), info.input_shape, options.data_dir)
    typicality = None
    if stealthy:
        from .autoencoder import reconstruction_errors, train_autoencoder  # pylint: disable=import-outside-toplevel

        autoencoder = train_autoencoder(train_x[:STEALTH_AUTOENCODER_EXAMPLES], STEALTH_AUTOENCODER_EPOCHS,
                                        seed=options.seed)

        def typicality(images):
            return reconstruction_errors(autoencoder, images)

    key_set = data.build_key_set(info.name, key_source, options.keys, info.input_shape, secret_seed, options.data_dir,
                                 negatives=options.negatives, typicality=typicality)
    record.write_text(json.dumps(key_set.indices))
    return key_set


def _fit(model, dataset, steps, epochs, backup_dir, verbose, callbacks=()):
    keras = _keras()
    nan_guard = StopOnNaN()
    callbacks = [keras.callbacks.BackupAndRestore(str(backup_dir)), nan_guard, *callbacks]
    start = time.perf_counter()
    # Keras prints its progress bar on stdout; keep stdout for results (--json).
    with contextlib.redirect_stdout(sys.stderr):
        model.fit(dataset, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=verbose)
    seconds = time.perf_counter() - start
    if nan_guard.failed_at:
        epoch, batch = nan_guard.failed_at
        raise IPGuardError(
            f"training diverged: the loss became NaN at epoch {epoch}, batch {batch}; "
            "lower --learning-rate or check the data (nothing was written)"
        )
    return seconds


def embed(out, options, force=False, resume=False):
    """Trains a watermarked classifier and writes a new vault at `out`.

    Args:
        out: the vault directory to create.
        options: an `EmbedOptions`.
        force: replace an existing vault (and any stale checkpoint).
        resume: continue an interrupted run from its last epoch checkpoint.

    Returns:
        An `EmbedResult`; the vault is written atomically only when training succeeds.
    """
    keras = _keras()
    out = Path(out)
    if (out / "vault.json").exists() and not force:
        raise IPGuardError(f"{out} already holds a vault; choose another --out or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise IPGuardError(f"{out} exists and is not a directory")
    scheme = baselines.check_scheme(options.scheme)
    ours = scheme == baselines.EXTRA_CLASS
    stealthy = options.stealthy_keys and ours  # only our keys are chosen by typicality
    if not options.kernel_scale >= 1:
        raise IPGuardError(f"--kernel-scale must be at least 1 (1 turns it off), got {options.kernel_scale}")
    if options.prune_robustness is not None and not options.prune_robustness >= 0:
        raise IPGuardError(f"--prune-robustness must be at least 0 (0 turns it off), got {options.prune_robustness}")
    if options.base_model and not ours:
        raise IPGuardError(f"--base-model protects with the extra-class scheme only, not {scheme!r}; drop --scheme")
    info = data.dataset_info(options.dataset, options.data_dir)
    channels = info.input_shape[2]
    uses_key_source = scheme in (baselines.EXTRA_CLASS, "unrelated")
    key_source = (options.key_source or data.default_key_source(info.name, channels)) if uses_key_source else None
    if uses_key_source:
        data.check_key_source(info.name, key_source, options.keys, options.negatives + data.DEFAULT_CONTROLS,
                              options.data_dir, data.STEALTH_CANDIDATES if stealthy else 1)
    train_x, train_y = data.load_split(info.name, "train", options.data_dir, options.max_train_examples)
    test_x, test_y = data.load_split(info.name, "test", options.data_dir, options.max_test_examples)

    work = _work_dir(out)
    owner_key = _prepare_work_dir(work, options, resume, force)
    secret_seed = _secret_seed(owner_key)
    # The key choice derives from the owner secret, not --seed: every vault gets its own secret keys.
    key_set = _key_set(work, info, key_source, train_x, options, secret_seed, stealthy) if uses_key_source else None
    identities = None
    if ours:
        keys, key_labels = key_set.keys, None
        identities = metrics.evaluation_identities(IdentityCodec(owner_key), keys, IDENTITIES_PER_KEY)
        controls = {"key_source": key_set.controls, "task": _task_controls(test_x, options.seed)}
    elif scheme != "frontier-stitching":
        triggers = baselines.build_triggers(scheme, info, (train_x, train_y), (test_x, test_y), options.keys,
                                            secret_seed, key_set)
        keys, key_labels, controls = triggers.images, triggers.labels, triggers.controls

    strategy = make_strategy(options.strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch = options.batch_size * replicas
    augment = info.name in data.AUGMENTED_DATASETS
    keras.utils.set_random_seed(options.seed)

    def build(arch_name):
        if not ours:
            return build_plain_classifier(arch_name, info.input_shape, info.num_classes)
        backbone = build_backbone(arch_name, info.input_shape)
        return WatermarkedClassifier(backbone, info.num_classes, name="watermarked_classifier")

    def pipeline(key_images=None, labels=None, key_share=options.key_share):
        return data.training_dataset(
            train_x, train_y, key_images, info.num_classes, global_batch, key_share, augment, options.seed,
            negatives=key_set.negatives if ours else None, key_jitter=options.key_jitter, key_labels=labels,
            extra_class=ours, negative_weight=options.negative_weight, negative_class=options.negative_class,
        )

    base_note = None
    baseline_accuracy = None
    with strategy.scope():
        if options.base_model:
            arch = "base_model"
            model, baseline_accuracy, base_note = _base_model_classifier(options.base_model, info, test_x, test_y)
        else:
            arch = auto_architecture(info.input_shape) if options.arch == "auto" else options.arch
            model = build(arch)
    epochs = options.epochs or DEFAULT_EPOCHS[arch]
    learning_rate = options.learning_rate or DEFAULT_LEARNING_RATE[arch]
    prune_robustness = 0.0 if not ours else (
        DEFAULT_PRUNE_ROBUSTNESS[arch] if options.prune_robustness is None else options.prune_robustness)

    def classify(batch):
        return predict_classes(model, batch)

    trigger_details = None
    if scheme == "frontier-stitching":
        # Le Merrer et al.: train, make adversaries of the trained model, then stitch them in.
        pretrained = work / "pretrained.weights.h5"
        dataset, steps = pipeline()
        with strategy.scope():
            _compile(model, arch, learning_rate, steps * epochs)
        if pretrained.is_file():
            model.load_weights(pretrained)
            train_seconds = 0.0
        else:
            train_seconds = _fit(model, dataset, steps, epochs, work / "backup", options.verbose)
            model.save_weights(pretrained)
        baseline_accuracy = float(np.mean(classify(test_x) == test_y))
        triggers = baselines.frontier_triggers(model, (train_x, train_y), options.keys, secret_seed)
        keys, key_labels, controls, trigger_details = triggers.images, triggers.labels, triggers.controls, triggers.details
        dataset, steps = pipeline(keys, key_labels, STITCH_KEY_SHARE)
        with strategy.scope():
            _compile(model, arch, learning_rate * STITCH_LEARNING_RATE_FACTOR, steps * STITCH_MAX_EPOCHS)
        stitched = StopWhenKeysLearnt(keys, key_labels)
        train_seconds += _fit(model, dataset, steps, STITCH_MAX_EPOCHS, work / "backup-stitch", options.verbose,
                              [stitched])
        trigger_details.update(stitch_epochs=stitched.epochs, stitch_key_share=STITCH_KEY_SHARE)
    else:
        dataset, steps = pipeline(keys, key_labels)
        if ours:
            model.set_prune_robustness(prune_robustness, int(steps * epochs * PRUNE_ROBUSTNESS_FROM))
        with strategy.scope():
            _compile(model, arch, learning_rate, steps * epochs)
        train_seconds = _fit(model, dataset, steps, epochs, work / "backup", options.verbose)
        trigger_details = None if ours else triggers.details
    rescaled = harden_kernel_scale(model, options.kernel_scale) if options.kernel_scale != 1 else 0

    figures = metrics.watermark_metrics(classify, info.num_classes, test_x, test_y, keys, identities, key_labels)
    # The highest hit rate on images made like the keys but never trained on (verification's chance rate).
    control_sets = [(key_set.controls, info.num_classes)] if ours else list(controls.values())
    figures["control_watermark_rate"] = max(float(np.mean(classify(x) == y)) for x, y in control_sets)
    if options.baseline and not options.base_model and scheme != "frontier-stitching":
        keras.utils.set_random_seed(options.seed)
        plain, plain_steps = data.training_dataset(
            train_x, train_y, None, info.num_classes, global_batch, 0.0, augment, options.seed
        )
        with strategy.scope():
            baseline_model = build(arch)
            _compile(baseline_model, arch, learning_rate, plain_steps * epochs)
        _fit(baseline_model, plain, plain_steps, epochs, work / "backup-baseline", options.verbose)
        baseline_accuracy = float(np.mean(predict_classes(baseline_model, test_x) == test_y))
    if baseline_accuracy is not None:
        figures["baseline_clean_accuracy"] = baseline_accuracy
        figures["fidelity_drop"] = round(100 * (baseline_accuracy - figures["clean_accuracy"]), 4)
        figures["fidelity_drop_unit"] = "percentage points"

    key_selection = None
    if key_set:
        key_selection = (f"stealthy: the {options.keys} of {options.keys * data.STEALTH_CANDIDATES} seeded candidates "
                         "an autoencoder trained on the task's images reconstructs best") if stealthy else "seeded uniform choice"
    examples = steps * epochs * global_batch
    report = {
        **figures,
        "train_seconds": round(train_seconds, 2),
        "examples_per_second": round(examples / train_seconds, 1),
        "dataset": info.name,
        "num_classes": info.num_classes,
        "input_shape": list(info.input_shape),
        "train_examples": int(len(train_x)),
        "architecture": arch,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "batch_size_per_replica": options.batch_size,
        "global_batch_size": global_batch,
        "replicas": replicas,
        "strategy": type(strategy).__name__,
        "scheme": scheme,
        "trigger": trigger_details,
        "key_source": key_source,
        "keys": options.keys,
        "negatives": int(len(key_set.negatives)) if ours else 0,
        "negative_class": options.negative_class if ours else None,
        "key_selection": key_selection,
        "negative_weight": options.negative_weight if ours else None,
        "key_share": options.key_share,
        "key_jitter": options.key_jitter,
        "kernel_scale": options.kernel_scale,
        "kernels_rescaled": rescaled,
        "prune_robustness": prune_robustness,
        "augmentation": augment,
        "seed": options.seed,
        "base_model": options.base_model,
        "base_model_note": base_note,
        "machine": machine_info(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

    def populate(tmp):
        save_model(model, tmp / "model")
        (tmp / "reports" / "embed.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    Vault.create(
        out,
        dataset=info.name,
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        key_images=keys,
        key_source=key_source,
        architecture=arch,
        seed=options.seed,
        extra={"key_source_split": "train", "key_source_indices": key_set.indices} if ours else {
            "scheme": scheme, "watermark_class": None, "key_labels": [int(label) for label in key_labels],
            "trigger": trigger_details,
            **({"key_source_split": "train", "key_source_indices": key_set.indices} if key_set else {})},
        controls=controls,
        populate=populate,
        owner_key=owner_key,
        force=force,
    )
    shutil.rmtree(work, ignore_errors=True)
    return EmbedResult(out, report)
