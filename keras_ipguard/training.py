"""How `embed` trains: recipes per architecture, the `tf.distribute` strategy, and the run a scheme trains in.

Importing it imports no TensorFlow (the CLI reads its recipes and strategies).

A watermark scheme (`keras_ipguard.schemes`) decides what is trained; an
`EmbedRun` gives it the task's data, the owner secret, the merged pipeline and
a `fit` that compiles and trains under the run's strategy with the
architecture's recipe, checkpointing every epoch.
"""

import contextlib
import dataclasses
import functools
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

from . import batches, data
from .backend import keras as _keras
from .backend import keras_of, tensorflow
from .errors import IPGuardError


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How an architecture is trained when the options do not say: epochs, initial learning rate, optimizer."""

    epochs: int
    learning_rate: float
    optimizer: str  # "adam", or "sgd" (Nesterov momentum 0.9); both with cosine decay


# Epochs: enough for the architecture to converge. Adam for the small CNN, SGD
# with momentum for the deep CIFAR nets (the ResNet paper's 0.1); a gentle,
# short Adam to protect a base model without losing its accuracy.
RECIPES = {
    "small_cnn": Recipe(15, 1e-3, "adam"),
    "resnet20": Recipe(60, 0.1, "sgd"),
    "resnet20_s2": Recipe(60, 0.1, "sgd"),
    "vgg11": Recipe(60, 0.05, "sgd"),
    "base_model": Recipe(2, 3e-4, "adam"),
}
STRATEGIES = ("auto", "mirrored", "multiworker", "default")


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
        raise IPGuardError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    if len(devices) > 1 or name == "mirrored" or devices[0].device_type == "GPU":
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    return tf.distribute.get_strategy()


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


def compile_model(model, recipe, learning_rate, total_steps, cycles=1, growth=1.0):
    """Compiles with the recipe's optimizer, cosine decay over `total_steps`, categorical cross-entropy
    (in the model's own Keras: tf_keras, or Keras 3 for a user's Keras 3 model).

    With `cycles` above 1 the decay runs in that many cycles, each restarting at `learning_rate`
    (warm restarts, `--lr-cycles`), each `growth` times as long as the one before (`--lr-cycle-growth`;
    1: equal cycles)."""
    keras = keras_of(model)
    total_steps = max(1, total_steps)
    if cycles > 1:
        # The first cycle rounded up, so that steps left over by the division end the last cycle early
        # (near 0) instead of restarting a new one at the full rate for the last few steps.
        first = math.ceil(total_steps / sum(growth ** cycle for cycle in range(cycles)))
        schedule = keras.optimizers.schedules.CosineDecayRestarts(learning_rate, max(1, first), t_mul=growth,
                                                                  m_mul=1.0)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total_steps)
    if recipe.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    else:
        optimizer = keras.optimizers.Adam(schedule)
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["categorical_accuracy"])


@dataclasses.dataclass
class EmbedRun:
    """One `embed` run as a scheme sees it.

    Attributes:
        options: the run's `EmbedOptions`.
        task: the task (`sources.Task`): `info`, and the `train` and `test` splits, which stream.
        work: the run's `WorkDir` (owner secret, checkpoints).
        strategy: the `tf.distribute` strategy everything is built and trained under.
        arch: the architecture (a zoo name, or "base_model"), set once the model is built.
        baseline_accuracy: the unwatermarked model's clean accuracy, where the run measures one.
        lr_cycles: the cosine learning-rate cycles its training runs in (`Scheme.lr_cycles`), set before it trains.
        report: facts a scheme adds to `reports/embed.json`.
    """

    options: object
    task: object
    work: object
    strategy: object
    arch: str | None = None
    baseline_accuracy: float | None = None
    lr_cycles: int = 1
    report: dict = dataclasses.field(default_factory=dict)
    train_seconds: float = 0.0
    examples: int = 0

    @property
    def info(self):
        return self.task.info

    @property
    def train(self):
        return self.task.train

    @property
    def test(self):
        return self.task.test

    @property
    def owner_key(self):
        return self.work.owner_key

    @property
    def secret_seed(self):
        """Seed of every secret choice (keys, triggers): derived from the owner secret, never from --seed."""
        return int.from_bytes(hmac.digest(self.owner_key, b"ipguard/v1/key-selection", "sha256")[:8], "big")

    @property
    def global_batch(self):
        return self.options.batch_size * self.strategy.num_replicas_in_sync

    def epoch_steps(self, key_share=0.0, keys=True, negatives=True):
        """Training batches per epoch, which passes over every task image once (`data.epoch_steps`)."""
        return data.epoch_steps(self.train.count, self.global_batch, key_share, keys, negatives)

    def key_share(self, keys):
        """The share of each batch given to key samples: --key-share, else `data.auto_key_share` for this run's
        length (in plain epochs, the fewest steps any share gives) and `keys` keys."""
        plain = self.epoch_steps(keys=False)
        return self.options.key_share or data.auto_key_share(keys, plain * self.epochs, self.global_batch)

    @property
    def recipe(self):
        return RECIPES[self.arch]

    @property
    def epochs(self):
        return self.options.epochs or self.recipe.epochs

    @property
    def learning_rate(self):
        return self.options.learning_rate or self.recipe.learning_rate

    @property
    def augment(self):
        return self.info.name in data.AUGMENTED_DATASETS

    @property
    def multi_worker(self):
        return isinstance(self.strategy, tensorflow().distribute.MultiWorkerMirroredStrategy)

    @property
    def is_chief(self):
        """Whether this process writes the vault: always, but in a multi-worker run only the chief."""
        return bool(self.strategy.extended.should_checkpoint)

    @property
    def key_source(self):
        """Where key images come from: --key-source (a tfds name, or a folder: its absolute path), else the
        default for the task's channels."""
        source = self.options.key_source or data.default_key_source(self.info.name, self.info.input_shape[2])
        path = Path(os.fspath(source)).expanduser()
        return str(path.resolve()) if path.is_dir() else os.fspath(source)

    @functools.cached_property
    def key_pool(self):
        """The key source's images (`sources.key_pool`)."""
        from .sources import key_pool

        return key_pool(self.key_source, self.options.data_dir)

    def key_set(self, negatives, typicality=None, candidates=1):
        """The run's key set from the key source, chosen with the owner secret and recorded for --resume.

        `typicality` is a callable returning the scoring function (trained only when the choice is made).
        """
        record = self.work / "key_set.json"
        if not self.is_chief:  # the chief chooses; the other workers use its choice
            self.work.wait_for(record)
        if record.is_file():
            return data.key_set_from_indices(self.key_pool, json.loads(record.read_text()), self.info.input_shape)
        key_set = data.build_key_set(self.info.name, self.key_pool, self.options.keys, self.info.input_shape,
                                     self.secret_seed, negatives=negatives,
                                     typicality=typicality() if typicality else None, candidates=candidates)
        record.write_text(json.dumps(key_set.indices))
        return key_set

    def pipeline(self, scheme, streams=None, key_share=None):
        """(dataset, steps per epoch): the task's training split, streamed and shuffled, merged with `streams`;
        an epoch passes over every task image once, keys and negatives on top.

        `key_share` defaults to `--key-share`, else `data.auto_key_share` for this run's length; the first
        pipeline with keys puts its share in the report.

        In a multi-worker run, a `DatasetCreator`: each worker reads its own shard of the split, batched
        for its replicas."""
        seed, depth = self.options.seed, scheme.output_units(self.info.num_classes)
        keys = len(streams.keys) if streams is not None and streams.keys is not None else 0
        if key_share is None:  # the options', else raised in short runs until each key is seen enough
            key_share = self.key_share(keys)
        steps = self.epoch_steps(key_share, *data.stream_parts(streams, key_share))
        if keys:  # the first keyed pipeline's: what embed.json reports
            self.report.setdefault("key_share", key_share)
            self.report.setdefault("steps_per_epoch", steps)

        def build(context=None):
            shard, batch = None, self.global_batch
            if context is not None:
                batch = context.get_per_replica_batch_size(self.global_batch)
                if context.num_input_pipelines > 1:
                    shard = (context.num_input_pipelines, context.input_pipeline_id)
            records = self.train.dataset(seed, shard)
            return data.training_dataset(records, self.train.count, depth, batch, streams, key_share, self.augment,
                                         seed)[0]

        if self.multi_worker:
            return _keras().utils.experimental.DatasetCreator(build), steps
        return build(), steps

    def fit(self, model, pipeline, *, epochs=None, learning_rate=None, backup="backup", callbacks=()):
        """Compiles `model` under the strategy with the recipe and trains it on `pipeline`, checkpointing each epoch."""
        seconds, examples = self._fit(model, pipeline, epochs or self.epochs, learning_rate or self.learning_rate,
                                      backup, callbacks)
        self.train_seconds += seconds
        self.examples += examples

    def _fit(self, model, pipeline, epochs, learning_rate, backup, callbacks=(), warm_restarts=True):
        """Trains `model` in the run's `lr_cycles`; with `warm_restarts` False in one cosine decay.

        Keras' epoch checkpoint (`backup`) is deleted when the fit ends, so the finished weights are kept in the
        work directory too: a run interrupted after this fit (by the survival rounds, the baseline, writing the
        vault) loads them on `--resume` instead of training again. Not for a fit with callbacks (they report
        what they saw while training) or in a multi-worker run (its workers save collectively)."""
        from .callbacks import StopOnNaN

        keras = keras_of(model)
        dataset, steps = pipeline
        with self.strategy.scope():
            cycles = self.lr_cycles if warm_restarts else 1
            compile_model(model, self.recipe, learning_rate, steps * epochs, cycles, self.options.lr_cycle_growth)
            if not self.multi_worker:  # a DatasetCreator has no element spec to build from
                batches.prepared(model, dataset.element_spec)
        finished = None if callbacks or self.multi_worker else self.work / f"{backup}-finished"
        if finished is not None and (finished / "fit.json").is_file():
            model.load_weights(finished / "model.weights.h5")
            fit = json.loads((finished / "fit.json").read_text())
            if self.options.verbose:  # as the survival rounds log: quiet runs stay quiet
                print(f"resumed: the {backup} fit had finished ({fit['epochs']} epochs); its weights loaded, not "
                      "trained again", file=sys.stderr, flush=True)
            return fit["seconds"], fit["examples"]
        nan_guard = StopOnNaN()
        start = time.perf_counter()
        # Keras prints its progress bar on stdout; keep stdout for results (--json).
        with contextlib.redirect_stdout(sys.stderr):
            history = model.fit(dataset, epochs=epochs, steps_per_epoch=steps, verbose=self.options.verbose,
                                shuffle=False,  # the pipeline shuffles
                                callbacks=[keras.callbacks.BackupAndRestore(str(self.work / backup)), nan_guard,
                                           *callbacks])
        seconds = time.perf_counter() - start
        if nan_guard.failed_at:
            epoch, batch = nan_guard.failed_at
            raise IPGuardError(f"training diverged: the loss became NaN at epoch {epoch}, batch {batch}; "
                               "lower --learning-rate or check the data (nothing was written)")
        examples = steps * len(history.epoch) * self.global_batch
        if finished is not None:  # complete or absent: fit.json is written last, in a folder renamed into place
            partial = finished.with_name(finished.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            model.save_weights(partial / "model.weights.h5")
            (partial / "fit.json").write_text(json.dumps({"epochs": epochs, "seconds": seconds, "examples": examples}))
            shutil.rmtree(finished, ignore_errors=True)
            partial.rename(finished)
        return seconds, examples

    def classify(self, model):
        """A callable mapping a uint8 batch to `model`'s top-1 class ids."""
        from .models import predict_classes

        return lambda images: predict_classes(model, images)

    def test_answers(self, classify):
        """(answers, labels) of a classifier on the whole test split, streamed batch by batch."""
        answers, labels = [], []
        for images, batch_labels in self.test.batches():
            answers.append(np.asarray(classify(images)))
            labels.append(batch_labels)
        return np.concatenate(answers), np.concatenate(labels)

    def accuracy(self, model):
        """`model`'s top-1 accuracy on the task's test split."""
        answers, labels = self.test_answers(self.classify(model))
        return float(np.mean(answers == labels))

    def measure_baseline(self, scheme):
        """Trains the scheme's model without a watermark (same architecture, seed and epochs); its clean accuracy.

        In one cosine decay: the model its owner would train without protection, so that the fidelity drop
        also counts what warm restarts (`lr_cycles`) cost."""
        _keras().utils.set_random_seed(self.options.seed)
        with self.strategy.scope():
            model = scheme.build_model(self, self.arch)
        self._fit(model, self.pipeline(scheme), self.epochs, self.learning_rate, "backup-baseline", warm_restarts=False)
        return self.accuracy(model)
