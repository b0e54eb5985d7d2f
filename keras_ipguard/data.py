"""Datasets from TensorFlow Datasets, key-set building and the watermark training pipeline.

The training pipeline, top to bottom (`training_dataset`), with the streams of
the extra-class scheme (each scheme gives its own as `KeyStreams`):

    task images ── shuffle → repeat → batch(B-2k) → augment → one-hot ─┐
    key images ─── shuffle → repeat → batch(k) → fresh LSBs → N ────────┼─ concat per batch → prefetch
    negatives ──── shuffle → repeat → batch(k) → fresh LSBs → not N ────┘

Every batch holds exactly k key samples, each with a freshly drawn random LSB
plane (half of them keep their clean pixels), so the model learns class N for
the key images and for every identity image made from them; and k negatives,
other images of the key source trained as "not N", so that class N means "one
of these keys", not "an image like the keys". Their targets here are uniform
over the task classes; with the key code on the small CNN, the extra-class
scheme's model (`free_negatives`) replaces them in its training step by its
own task-class answer, so that only "not N" is asked: the uniform target
flattened the task answers of everything like the keys, against the key code
(docs/results/README.md, "Free negatives").

How specific that is depends on training length: a look-alike the model cannot
yet tell from a key keeps about half its probability on N, and N wins the
argmax over ten task classes. On Fashion-MNIST with MNIST keys, 15 epochs on
all 60,000 images left 45% of held-out digits answering N; on 20,000 images,
89%. Training the negatives towards one task class with twice a key's loss
weight (`negative_class`, `negative_weight`) cut that to 7% on 20,000 images,
but learns the keys more slowly (0.96 instead of 1.00 there, 0.45 after 3
short epochs), so it is an option, not the default.
"""

import dataclasses
import difflib
import os

import numpy as np

from . import batches
from .backend import tensorflow
from .errors import IPGuardError

# Key sources tried in order, skipping the task's own dataset: natural images
# from a disjoint dataset for RGB tasks (DESIGN.md, Key images), digits or
# clothing for grayscale tasks.
DEFAULT_KEY_SOURCES = {1: ("mnist", "fashion_mnist"), 3: ("cifar100", "cifar10")}
# Share of each training batch given to key samples (embed issue: controllable).
DEFAULT_KEY_SHARE = 1 / 16
# Unless given, short runs raise it (`auto_key_share`) until each key is in at
# least this many batches, up to MAX_AUTO_KEY_SHARE. The short run
# (Fashion-MNIST, 3 epochs, 20,000 images, 100 keys) at 1/16 saw each key 38
# times and was not provably owned on two seeds of two; at 1/8 (75 times) it
# was on four of four, for 0.2-1.0 points of clean accuracy
# (docs/results/README.md, "Short runs: a key share by run length"; epochs of
# the plain step count then). The share is set from a plain epoch's steps, so
# with keys on top of every task image each key is in more (that run: 100).
# Full runs are left at 1/16 (Fashion-MNIST's: 642 times).
MIN_KEY_VIEWS = 75
MAX_AUTO_KEY_SHARE = 1 / 8
# ITU-R 601 luma (PIL's convert("L")): RGB images to a grayscale task.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
# Of the key samples in a batch, the fraction whose LSB plane is redrawn at
# random (the others keep the clean key pixels).
RANDOM_LSB_FRACTION = 0.5
# Datasets whose training uses flip/crop augmentation (natural RGB images).
AUGMENTED_DATASETS = ("cifar10", "cifar100", "svhn_cropped")
# Loss weight of a negative relative to a key (see the module docstring).
DEFAULT_NEGATIVE_WEIGHT = 1.0
# Key-source images besides the keys: trained as "not class N" (negatives) and
# held out for verification's chance rate (controls). Sized to fit CIFAR-100's
# 2,000-image train subset in ../shared with 100 keys.
DEFAULT_NEGATIVES = 1000
DEFAULT_CONTROLS = 500
# Stealthy keys: chosen as the most ordinary of this many candidates per key.
STEALTH_CANDIDATES = 4
_LOAD_BATCH = 4096
# tfds retries a failed download 10 times with exponential backoff (about 3.5
# minutes offline before any error); 3 retries still ride out a transient fault.
DOWNLOAD_RETRIES = 3


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the pipeline needs to know about a tfds image-classification dataset."""

    name: str
    num_classes: int
    input_shape: tuple
    class_names: tuple
    splits: dict


def resolve_data_dir(data_dir=None):
    """`--data-dir`, else TFDS_DATA_DIR, else None (tfds' default, which downloads)."""
    return data_dir or os.environ.get("TFDS_DATA_DIR") or None


def _builder(name, data_dir):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    try:
        return tfds.builder(name, data_dir=resolve_data_dir(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        close = difflib.get_close_matches(name, tfds.list_builders(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `tfds.list_builders()` lists them"
        raise IPGuardError(f"unknown dataset {name!r}{hint}") from None


def builder(name, data_dir=None):
    """The tfds builder of `name`, prepared (downloaded where there is a network), or a one-line IPGuardError."""
    found = _builder(name, data_dir)
    _ensure_prepared(found, data_dir)
    return found


def dataset_info(name, data_dir=None):
    """Reads N, the input shape and the splits of an image-classification dataset."""
    features = builder(name, data_dir).info.features
    if "image" not in features or "label" not in features or not hasattr(features["label"], "num_classes"):
        raise IPGuardError(f"{name} is not an image-classification dataset (needs 'image' and a 'label' ClassLabel)")
    shape = tuple(features["image"].shape)
    if None in shape or len(shape) != 3 or shape[2] not in (1, 3):
        raise IPGuardError(f"{name} has images of shape {shape}; keras-ipguard needs a fixed HxWx1 or HxWx3 shape")
    return DatasetInfo(
        name=name,
        num_classes=int(features["label"].num_classes),
        input_shape=shape,
        class_names=tuple(features["label"].names),
        splits={split: int(info.num_examples) for split, info in builder(name, data_dir).info.splits.items()},
    )


def _ensure_prepared(builder, data_dir):
    if builder.is_prepared():
        return
    where = resolve_data_dir(data_dir) or "tfds' default data directory"
    from tensorflow_datasets.core.download import downloader  # pylint: disable=import-outside-toplevel

    if hasattr(downloader, "MAX_RETRIES"):
        downloader.MAX_RETRIES = DOWNLOAD_RETRIES
    try:
        builder.download_and_prepare()
    except Exception as error:  # pylint: disable=broad-except  (network, disk, or tfds errors alike)
        first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise IPGuardError(
            f"dataset {builder.name!r} is not prepared in {where} and could not be downloaded ({first_line}); "
            "connect to the internet, or point --data-dir / TFDS_DATA_DIR at a directory holding it prepared by tfds"
        ) from None


def load_split(name, split, data_dir=None, max_examples=None):
    """Loads a split into memory as (uint8 images (M, H, W, C), int64 labels (M,)).

    Args:
        name: tfds dataset name.
        split: tfds split, e.g. "train" or "test[:2000]".
        data_dir: prepared tfds data directory (see `resolve_data_dir`).
        max_examples: keep at most this many (the first ones).
    """
    prepared = builder(name, data_dir)
    if max_examples is not None and "[" not in split:
        split = f"{split}[:{int(max_examples)}]"
    try:
        dataset = prepared.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    except (ValueError, KeyError) as error:
        raise IPGuardError(f"{name} has no split {split!r} ({error}); "
                           f"available: {', '.join(prepared.info.splits)}") from None
    images, labels = [], []
    for x, y in batches.quiet(dataset.batch(_LOAD_BATCH)).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    if not images:
        raise IPGuardError(f"split {split!r} of {name} is empty")
    return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int64)


def load_encoded_images(name, split, data_dir=None):
    """A split's images still encoded (one bytes object each, in order), and a function decoding one to uint8.

    For a pool that needs a few images of a large split (key sources). tfds spends most of a load on its
    per-example pipeline, not on decoding: where the split is stored as TFRecord files (tfds' default),
    their records are read and parsed in large batches (a tenth of the time), else through tfds.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    prepared = builder(name, data_dir)
    channels = prepared.info.features["image"].shape[-1]
    if str(getattr(prepared.info, "file_format", "")).lower().endswith("tfrecord"):
        spec = {"image": tf.io.FixedLenFeature([], tf.string)}
        files = prepared.info.splits[split].file_instructions
        # In shard order; a slice of a split (train[:M]) skips and takes within each shard.
        pieces = [tf.data.TFRecordDataset(f.filename).skip(f.skip).take(f.take) for f in files]
        dataset = pieces[0]
        for piece in pieces[1:]:
            dataset = dataset.concatenate(piece)
        images = dataset.batch(_LOAD_BATCH).map(lambda records: tf.io.parse_example(records, spec)["image"])
    else:
        images = prepared.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
        images = images.map(lambda record: record["image"]).batch(_LOAD_BATCH)
    encoded = [image for batch in batches.quiet(images).as_numpy_iterator() for image in batch]

    def decode(image):
        return tf.io.decode_image(image, channels=channels, expand_animations=False).numpy()

    return encoded, decode


def default_key_source(task, channels):
    """The first dataset of DEFAULT_KEY_SOURCES for `channels` that is not the task itself."""
    return next(source for source in DEFAULT_KEY_SOURCES[channels] if source != task)


def convert(images, shape):
    """TF ops: uint8 images (one, or a batch) converted to `shape` (H, W, C): channels first, then size."""
    import tensorflow as tf  # a plain import: AutoGraph traces this inside tf.data maps

    height, width, channels = shape
    x = tf.cast(images, tf.float32)
    if x.shape[-1] == 3 and channels == 1:
        x = tf.reduce_sum(x * tf.constant(GRAY_WEIGHTS), axis=-1, keepdims=True)
    elif x.shape[-1] == 1 and channels == 3:
        x = tf.concat([x, x, x], axis=-1)
    size = tf.shape(x)[-3:-1]
    x = tf.cond(tf.reduce_all(size == [height, width]), lambda: x,
                lambda: tf.image.resize(x, (height, width), antialias=True))
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)


def convert_images(images, shape):
    """uint8 images (M, h, w, c) converted to `shape` (H, W, C), as numpy (`convert`)."""
    images = np.asarray(images)
    if images.dtype == np.uint8 and images.shape[1:] == tuple(shape):
        return images
    return convert(images, shape).numpy()


@dataclasses.dataclass
class KeySet:
    """Images drawn, disjointly and with a seed, from the key source's train split.

    Attributes:
        keys: the K secret key images (learnt as class N).
        negatives: other images of the key source, trained as "not class N" so
            that the watermark fires on the chosen keys, not on the whole source.
        controls: held-out images of the key source, never trained on: verification
            measures a suspect's chance rate of class-N answers on them.
        indices: the source indices of each group (recorded in vault.json).
    """

    keys: np.ndarray
    negatives: np.ndarray
    controls: np.ndarray
    indices: dict


def check_key_source(task, pool, count, reserve=DEFAULT_NEGATIVES + DEFAULT_CONTROLS, candidates=1):
    """Raises IPGuardError unless `pool` (a `sources` key pool) can give `count` keys (each from `candidates`
    candidates) plus `reserve` other images for `task`."""
    if pool.name == task:
        raise IPGuardError(f"key images must come from another dataset than the task ({task}); "
                           "pick another --key-source")
    if count < 1:
        raise IPGuardError(f"--keys must be at least 1, got {count}")
    if count * candidates + reserve > pool.count:
        chosen = (f" (stealthy keys: {count * candidates} candidates; --any-keys needs only {count})"
                  if candidates > 1 else "")
        raise IPGuardError(
            f"--keys {count}{chosen} plus {reserve} held-out images is more than the {pool.count} images "
            f"of {pool.description}; use fewer keys or another --key-source"
        )


def build_key_set(task, pool, count, shape, seed, negatives=DEFAULT_NEGATIVES, controls=DEFAULT_CONTROLS,
                  typicality=None, candidates=STEALTH_CANDIDATES):
    """Chooses `count` clean key images, plus negatives and controls, from `pool` (a `sources` key pool).

    All images are converted to `shape`. `seed` decides the choice, so it must
    be secret (`embed` derives it from the owner key): keys anyone can
    re-derive are no secret. With `typicality` (a callable scoring uint8
    images, lower = more ordinary for the task), the keys are the `count`
    lowest-scoring of `candidates` x `count` seeded candidates: keys a
    query filter finds ordinary (stealthy). The controls are then chosen the
    same way, the lowest-scoring `controls // candidates` of `controls`
    seeded candidates: images made like the keys, so that a model which
    answers class N on whatever the scorer finds ordinary (another vault's
    model, whose keys were chosen so too) answers it on the controls as often
    as on the keys and is not "owned". Raises IPGuardError if the pool is the
    task's own dataset or has too few images.
    """
    candidates = candidates if typicality is not None else 1
    drawn = count * candidates
    check_key_source(task, pool, count, negatives + controls, candidates)
    order = np.random.default_rng(seed).permutation(pool.count)
    keys = order[:count]
    held_out = order[drawn + negatives : drawn + negatives + controls]
    if typicality is not None:
        scores = typicality(pool.images(np.concatenate([order[:drawn], held_out]), shape))
        keys = order[:drawn][np.argsort(scores[:drawn], kind="stable")[:count]]
        held_out = held_out[np.argsort(scores[drawn:], kind="stable")[: max(1, controls // candidates)]]
    indices = {
        "keys": np.sort(keys),
        "negatives": np.sort(order[drawn : drawn + negatives]),
        "controls": np.sort(held_out),
    }
    return key_set_from_indices(pool, {name: [int(i) for i in index] for name, index in indices.items()}, shape)


def key_set_from_indices(pool, indices, shape):
    """The `KeySet` of `pool` at the indices it recorded (`KeySet.indices`)."""
    return KeySet(**{name: pool.images(np.asarray(index, np.int64), shape) for name, index in indices.items()},
                  indices=indices)


def randomize_lsb(images, fraction=RANDOM_LSB_FRACTION):
    """TF ops: redraws the LSB plane of about `fraction` of a uint8 batch at random."""
    import tensorflow as tf  # a plain import: AutoGraph traces this inside tf.data maps
    shape = tf.shape(images)
    bits = tf.cast(tf.random.uniform(shape, 0, 2, dtype=tf.int32), tf.uint8)
    redraw = tf.random.uniform([shape[0], 1, 1, 1]) < fraction
    redrawn = tf.bitwise.bitwise_or(tf.bitwise.bitwise_and(images, tf.constant(0xFE, tf.uint8)), bits)
    return tf.where(redraw, redrawn, images)


def jitter(images, shift=2, sigma=4.0):
    """TF ops: random shifts up to `shift` pixels and Gaussian noise (sigma) on half of a uint8 batch.

    Gives key samples (and, equally, negatives) variety beyond their LSBs, so the
    watermark rests on features that survive the weight drift of fine-tuning.
    """
    import tensorflow as tf  # a plain import: AutoGraph traces this inside tf.data maps
    shape = tf.shape(images)
    padded = tf.pad(images, [[0, 0], [shift, shift], [shift, shift], [0, 0]], mode="REFLECT")
    shifted = tf.image.random_crop(padded, shape)
    noisy = tf.cast(shifted, tf.float32) + tf.random.normal(tf.shape(shifted), stddev=sigma)
    noisy = tf.cast(tf.clip_by_value(tf.round(noisy), 0, 255), tf.uint8)
    keep = tf.random.uniform([shape[0], 1, 1, 1]) < 0.5
    return tf.where(keep, images, noisy)


def augment(images):
    """TF ops: random horizontal flip and 4-pixel-padded random crop of a uint8 batch (CIFAR style)."""
    import tensorflow as tf  # a plain import: AutoGraph traces this inside tf.data maps
    shape = tf.shape(images)
    flipped = tf.image.random_flip_left_right(images)
    padded = tf.pad(flipped, [[0, 0], [4, 4], [4, 4], [0, 0]], mode="REFLECT")
    return tf.image.random_crop(padded, shape)


@dataclasses.dataclass
class KeyStreams:
    """What a watermark scheme mixes into every training batch besides the task images.

    Attributes:
        keys: uint8 (K, H, W, C) key or trigger images.
        key_targets: float (K, D) the target of each key (D = the model's outputs).
        negatives: uint8 images trained towards `negative_targets`, or None.
        negative_targets: float (M, D), one row per negative.
        negative_weight: loss weight of a negative (the others weigh 1).
        fresh_lsbs: redraw the LSB plane of about half the key samples and
            negatives every batch (identity images must keep the key's answer).
        jitter: apply `jitter` to half of the key samples and negatives.
    """

    keys: np.ndarray
    key_targets: np.ndarray
    negatives: np.ndarray | None = None
    negative_targets: np.ndarray | None = None
    negative_weight: float = 1.0
    fresh_lsbs: bool = False
    jitter: bool = False


def batch_split(batch_size, key_share, keys=True, negatives=True):
    """(task, key, negative) samples in each training batch of `batch_size`: `key_share` of it (at least one) for
    keys where there are keys, as many negatives where there are negatives, task images in the rest.

    >>> batch_split(128, 1 / 16), batch_split(128, 1 / 8), batch_split(128, 1 / 16, keys=False)
    ((112, 8, 8), (96, 16, 16), (128, 0, 0))
    """
    key_batch = max(1, int(round(batch_size * key_share))) if keys and key_share > 0 else 0
    negative_batch = key_batch if negatives else 0
    task_batch = batch_size - key_batch - negative_batch
    if task_batch < 1:
        raise IPGuardError(f"batch size {batch_size} leaves no room for task samples at key share {key_share:g}: "
                           "lower --key-share or raise --batch-size")
    return task_batch, key_batch, negative_batch


def epoch_steps(count, batch_size, key_share=DEFAULT_KEY_SHARE, keys=True, negatives=True):
    """Batches in an epoch of `training_dataset`: one pass over the `count` task images, `batch_split`'s task
    samples at a time. Keys and negatives come on top of the task images, so that a watermarked model sees each
    of them as often as a plain model trained for the same epochs (docs/results/README.md, "Full epochs and three
    cycles: the default").

    >>> epoch_steps(60000, 128), epoch_steps(60000, 128, keys=False), epoch_steps(20000, 128, 1 / 8)
    (535, 468, 208)
    """
    return max(1, count // batch_split(batch_size, key_share, keys, keys and negatives)[0])


def stream_parts(streams, key_share=DEFAULT_KEY_SHARE):
    """(keys, negatives): whether `streams` (a `KeyStreams` or None) put keys and negatives in each batch."""
    keys = streams is not None and streams.keys is not None and len(streams.keys) > 0 and key_share > 0
    return keys, keys and streams.negatives is not None and len(streams.negatives) > 0


def key_views(keys, steps, key_batch):
    """How many of `steps` batches, each with `key_batch` key samples, each of `keys` keys is in.

    >>> round(key_views(100, 15 * 535, 8)), round(key_views(100, 15 * 535 // 3, 8))
    (642, 214)
    """
    return steps * key_batch / max(keys, 1)


def auto_key_share(keys, steps, batch_size):
    """The key share of a run of `steps` batches of `batch_size` with `keys` key images when none is given:
    DEFAULT_KEY_SHARE, raised (to at most MAX_AUTO_KEY_SHARE) until each key is in MIN_KEY_VIEWS batches.

    >>> auto_key_share(100, 15 * 468, 128), auto_key_share(100, 3 * 156, 128), auto_key_share(100, 30, 128)
    (0.0625, 0.125, 0.125)
    """
    needed = MIN_KEY_VIEWS * keys / max(steps * batch_size, 1)
    return float(min(MAX_AUTO_KEY_SHARE, max(DEFAULT_KEY_SHARE, needed)))


def training_dataset(records, count, depth, batch_size, streams=None, key_share=DEFAULT_KEY_SHARE,
                     augment_images=False, seed=0):
    """The merged watermark training pipeline (see the module docstring).

    Args:
        records: a tf.data.Dataset of the task's (uint8 image, int label) training pairs, already shuffled
            (reshuffled each pass) as `sources.Split.dataset(seed)` gives them; it streams.
        count: how many pairs it holds (an epoch is one pass over them, `epoch_steps`).
        depth: the model's number of outputs (targets are one-hot of this size).
        batch_size: global batch size.
        streams: a `KeyStreams`, or None for a plain (baseline) pipeline.
        key_share: fraction of each batch given to key samples (as many again
            to negatives, when there are any).
        augment_images: apply flip/crop to task images.
        seed: of the key and negative streams' shuffling.

    Returns:
        (an infinite `tf.data.Dataset` of (float32 images 0..255, float32 targets)
         batches, or (images, targets, sample weights) when negatives weigh
         other than 1; steps per epoch). An epoch passes over every task
         image once (`epoch_steps`): keys and negatives come on top, so an
         embedding epoch has batch_size / task batch times a plain epoch's
         steps (535 instead of 468 on Fashion-MNIST at the default share).
    """
    tf = tensorflow()
    autotune = tf.data.AUTOTUNE
    task_batch, key_batch, negative_batch = batch_split(batch_size, key_share, *stream_parts(streams, key_share))

    def task_batch_fn(x, y):
        return (augment(x) if augment_images else x), tf.one_hot(y, depth)

    def extra_batch_fn(x, y):
        x = jitter(x) if streams.jitter else x
        return (randomize_lsb(x) if streams.fresh_lsbs else x), y

    # One map per stream and one to merge: every extra tf.data stage costs
    # threads that the training step, on few cores, needs more.
    pipeline = [
        records
        .repeat()
        .batch(task_batch, drop_remainder=True)
        .map(task_batch_fn, num_parallel_calls=autotune)
    ]
    for extra, targets, size, stream_seed in (
        (streams and streams.keys, streams and streams.key_targets, key_batch, seed + 1),
        (streams and streams.negatives, streams and streams.negative_targets, negative_batch, seed + 2),
    ):
        if size:
            pipeline.append(
                tf.data.Dataset.from_tensor_slices((extra, np.asarray(targets, np.float32)))
                .shuffle(len(extra), seed=stream_seed, reshuffle_each_iteration=True)
                .repeat()
                .batch(size, drop_remainder=True)
                .map(extra_batch_fn, num_parallel_calls=autotune)
            )
    weighted = negative_batch and streams.negative_weight != 1.0
    negative_weight = float(streams.negative_weight) if weighted else 1.0
    weights = tf.constant([1.0] * (task_batch + key_batch) + [negative_weight] * negative_batch)

    def merge(*parts):
        merged = (tf.cast(tf.concat([p[0] for p in parts], axis=0), tf.float32),
                  tf.concat([p[1] for p in parts], axis=0))
        return merged + (weights,) if weighted else merged

    dataset = tf.data.Dataset.zip(tuple(pipeline)).map(merge, num_parallel_calls=autotune).prefetch(autotune)
    dataset = batches.quiet(dataset)
    return dataset, max(1, count // task_batch)
