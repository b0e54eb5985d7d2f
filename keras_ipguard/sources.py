"""Where a task's images come from: a tfds name, a folder of class subfolders, a tf.data.Dataset or numpy arrays.

Every source opens as the same `Task`: a `data.DatasetInfo` and two `Split`s
that stream (uint8 image, int64 label) pairs through tf.data, decoded and
converted to the task's input shape on the way (channels, then size), so no
split is held whole in memory. A split materialises only the small samples a
scheme asks for (`take`, `sample`, `of_classes`).

A folder holds one subfolder per class (their names, sorted, are the class
names), or `train/` and `test/` folders that each hold them; without `test/`,
a seeded `test_fraction` of each class's files is held out. Any mix of PNG,
JPEG, BMP and GIF files of any sizes: every file is checked once when the
folder is opened, so a corrupt one is named then, not met mid-training.
"""

import collections
import dataclasses
import os
from pathlib import Path

import numpy as np

from . import data
from .backend import tensorflow
from .batches import quiet
from .errors import IPGuardError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "MPO")  # MPO: multi-picture JPEG (many cameras)
# A streamed split shuffles through this many examples (a folder shuffles its whole file list first).
SHUFFLE_BUFFER = 10_000
DEFAULT_TEST_FRACTION = 0.2  # of each class, when a folder has no test/ subfolder
_BATCH = 512


def _arrays(dataset, shape):
    """(uint8 images, int64 labels) of a finite dataset of pairs."""
    images, labels = [], []
    for x, y in dataset.batch(_BATCH).as_numpy_iterator():  # from `Split.dataset`: already quiet
        images.append(x)
        labels.append(y)
    if not images:
        return np.zeros((0,) + tuple(shape), np.uint8), np.zeros(0, np.int64)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


class Split:
    """One split of a task: `count` (uint8 image, int64 label) pairs of the task's shape, streamed."""

    def __init__(self, count, shape):
        self.count, self.shape = int(count), tuple(shape)

    def _records(self, seed, shard):
        """The pairs, shuffled with `seed` (reshuffled each pass) or in their fixed order when None; with
        `shard` = (pipelines, index), only that input pipeline's share, taken before anything is decoded."""
        raise NotImplementedError

    def dataset(self, seed=None, shard=None):
        """A tf.data.Dataset of the pairs (shuffled when `seed` is given; one worker's shard with `shard`), with
        tf.data's autotuning off (`batches.quiet`)."""
        return quiet(self._records(seed, shard))

    def _slices(self, tensors, seed, shard):
        """In-memory tensors as a dataset: this worker's shard, shuffled whole with `seed`."""
        records = tensorflow().data.Dataset.from_tensor_slices(tensors)
        records = records if shard is None else records.shard(*shard)
        return records if seed is None else records.shuffle(self.count, seed=seed, reshuffle_each_iteration=True)

    def batches(self, size=_BATCH):
        """Numpy (images, labels) batches in the split's fixed order."""
        return self.dataset().batch(size).as_numpy_iterator()

    def take(self, count):
        """The first `count` pairs as arrays."""
        return _arrays(self.dataset().take(count), self.shape)

    def sample(self, count, seed):
        """`count` pairs chosen with `seed`, in the split's order, as arrays."""
        tf = tensorflow()
        chosen = np.zeros(self.count, bool)
        chosen[np.random.default_rng(seed).choice(self.count, min(count, self.count), replace=False)] = True
        mask = tf.constant(chosen)

        def is_chosen(index, pair):
            return tf.gather(mask, index)

        def without_index(index, pair):
            return pair

        return _arrays(self.dataset().enumerate().filter(is_chosen).map(without_index), self.shape)

    def of_classes(self, classes, count):
        """The first `count` pairs whose label is one of `classes`, as arrays."""
        tf = tensorflow()
        wanted = tf.constant(np.asarray(classes, np.int64))
        return _arrays(self.dataset().filter(lambda x, y: tf.reduce_any(tf.equal(y, wanted))).take(count),
                       self.shape)


class TfdsSplit(Split):
    """A split of a prepared tfds dataset (`train`, or `train[:M]`)."""

    def __init__(self, builder, split, count, shape):
        super().__init__(count, shape)
        self.builder, self.split = builder, split

    def _records(self, seed, shard):
        import tensorflow_datasets as tfds

        tf = tensorflow()
        split = self.split if shard is None else tfds.even_splits(self.split, n=shard[0])[shard[1]]
        records = self.builder.as_dataset(split=split, as_supervised=True, shuffle_files=seed is not None,
                                          read_config=tfds.ReadConfig(shuffle_seed=seed))
        if seed is not None:
            records = records.shuffle(min(SHUFFLE_BUFFER, self.count), seed=seed, reshuffle_each_iteration=True)
        native = tuple(records.element_spec[0].shape)
        shape = self.shape
        return records.map(lambda x, y: (x if native == shape else data.convert(x, shape), tf.cast(y, tf.int64)),
                           num_parallel_calls=tf.data.AUTOTUNE)


class FileSplit(Split):
    """Image files with their labels, decoded (any of PNG/JPEG/BMP/GIF, any size) and converted as they stream."""

    def __init__(self, paths, labels, shape):
        super().__init__(len(paths), shape)
        self.paths, self.labels = [str(p) for p in paths], np.asarray(labels, np.int64)

    def _records(self, seed, shard):
        tf = tensorflow()
        shape = self.shape
        files = self._slices((self.paths, self.labels), seed, shard)

        def decode(path, label):
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            return data.convert(image, shape), label

        return files.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


class ArraySplit(Split):
    """Images and labels already in memory (the Python API's numpy arrays)."""

    def __init__(self, images, labels, shape):
        super().__init__(len(images), shape)
        self.images, self.labels = np.asarray(images), np.asarray(labels, np.int64)

    def _records(self, seed, shard):
        tf = tensorflow()
        shape = self.shape
        records = self._slices((self.images, self.labels), seed, shard)
        if tuple(self.images.shape[1:]) == shape and self.images.dtype == np.uint8:
            return records
        return records.map(lambda x, y: (data.convert(x, shape), y), num_parallel_calls=tf.data.AUTOTUNE)


class DatasetSplit(Split):
    """A user's tf.data.Dataset of (image, label) pairs (finite); shuffled through `SHUFFLE_BUFFER` examples."""

    def __init__(self, dataset, count, shape):
        super().__init__(count, shape)
        self.source = dataset

    def _records(self, seed, shard):
        tf = tensorflow()
        shape = self.shape
        source = self.source if shard is None else self.source.shard(*shard)
        records = source.map(lambda x, y: (data.convert(x, shape), tf.cast(y, tf.int64)),
                                  num_parallel_calls=tf.data.AUTOTUNE)
        if seed is not None:
            records = records.shuffle(min(SHUFFLE_BUFFER, self.count), seed=seed, reshuffle_each_iteration=True)
        return records


@dataclasses.dataclass
class Task:
    """A task's description, its two splits, how to open it again (recorded in vault.json) and what was done."""

    info: data.DatasetInfo
    train: Split
    test: Split
    record: dict
    notes: list = dataclasses.field(default_factory=list)


def open_task(dataset, data_dir=None, image_size=None, channels=None, test_fraction=DEFAULT_TEST_FRACTION, seed=0,
              max_train=None, max_test=None, skip_bad_images=False):
    """Opens a task from a tfds name, a folder, `(images, labels)` arrays, a tf.data.Dataset of pairs, or a dict
    `{"train": ..., "test": ...}` of either.

    Args:
        image_size: (H, W) the images are resized to [default: the dataset's own, a folder's most common].
        channels: 1 or 3 [default: the dataset's own; a folder: 1 if every image is grayscale, else 3].
        test_fraction: held out of each class where the source has no test split (a folder without test/,
            arrays or a dataset without "test").
        seed: of that hold-out.
        max_train, max_test: keep at most this many of each split (the first; a folder's, after shuffling).
        skip_bad_images: skip unreadable image files of a folder (counted in `notes`) instead of refusing them.
    """
    if isinstance(dataset, (str, os.PathLike)):
        text = os.fspath(dataset)
        if Path(text).expanduser().is_dir():
            return _folder_task(Path(text).expanduser().resolve(), image_size, channels, test_fraction, seed,
                                max_train, max_test, skip_bad_images)
        if os.sep in text or text.startswith((".", "~")) or Path(text).exists():
            raise IPGuardError(f"--dataset {text}: neither a tfds dataset name nor a directory of class folders; "
                               "give a folder with one subfolder of images per class, or a tfds name")
        return _tfds_task(text, data_dir, image_size, channels, max_train, max_test)
    return _memory_task(dataset, image_size, channels, test_fraction, seed, max_train, max_test)


def _shape(native, image_size, channels):
    height, width = image_size or native[:2]
    return int(height), int(width), int(channels or native[2])


def _tfds_task(name, data_dir, image_size, channels, max_train, max_test):
    info = data.dataset_info(name, data_dir)
    prepared = data.builder(name, data_dir)
    shape = _shape(info.input_shape, image_size, channels)
    splits = {}
    for split, limit in (("train", max_train), ("test", max_test)):
        if split not in info.splits:
            raise IPGuardError(f"{name} has no {split!r} split (it has {', '.join(info.splits)})")
        count = info.splits[split] if limit is None else min(int(limit), info.splits[split])
        splits[split] = TfdsSplit(prepared, split if limit is None else f"{split}[:{count}]", count, shape)
    info = dataclasses.replace(info, input_shape=shape)
    return Task(info, splits["train"], splits["test"], {"kind": "tfds", "name": name, "image_size": list(shape[:2]),
                                                        "channels": shape[2]})


def _image_files(folder, class_names, skip_bad):
    """{class index: [paths]} of the readable image files, the (height, width, mode) of each, and the skipped."""
    from PIL import Image, UnidentifiedImageError

    files, sizes, modes, skipped = {}, collections.Counter(), collections.Counter(), []
    for index, name in enumerate(class_names):
        paths = sorted(p for p in (folder / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        files[index] = []
        for path in paths:
            try:
                with Image.open(path) as image:
                    image.load()
                    if image.format not in _PIL_FORMATS:
                        raise OSError(f"a {image.format} image named {path.suffix}")
                    sizes[image.size[::-1]] += 1
                    modes["gray" if image.mode in ("1", "L", "I;16", "I", "LA") else "color"] += 1
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
                if not skip_bad:
                    raise IPGuardError(f"{path}: not a readable image ({str(error).splitlines()[0][:80]}); fix or "
                                       "remove it, or pass --skip-bad-images to skip such files") from None
                skipped.append(str(path))
                continue
            files[index].append(path)
        if not files[index]:
            raise IPGuardError(f"class folder {folder / name} holds no readable image "
                               f"({', '.join(IMAGE_SUFFIXES)}); add images or remove the folder")
    return files, sizes, modes, skipped


def _class_folders(folder):
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise IPGuardError(f"{folder} holds no class folders; put each class's images in a subfolder named for it")
    if len(names) < 2:
        raise IPGuardError(f"{folder} holds a single class folder ({names[0]}); a classifier needs at least two")
    return names


def _folder_task(folder, image_size, channels, test_fraction, seed, max_train, max_test, skip_bad):
    has_splits = (folder / "train").is_dir() and (folder / "test").is_dir()
    roots = {"train": folder / "train", "test": folder / "test"} if has_splits else {"train": folder}
    class_names = _class_folders(roots["train"])
    if has_splits and _class_folders(roots["test"]) != class_names:
        raise IPGuardError(f"{roots['test']} must hold the same class folders as {roots['train']}")
    scanned = {split: _image_files(root, class_names, skip_bad) for split, root in roots.items()}
    sizes = sum((s[1] for s in scanned.values()), collections.Counter())
    modes = sum((s[2] for s in scanned.values()), collections.Counter())
    native = sizes.most_common(1)[0][0] + (1 if not modes["color"] else 3,)
    shape = _shape(native, image_size, channels)
    rng = np.random.default_rng(seed)
    pairs = {split: [(p, c) for c, paths in s[0].items() for p in paths] for split, s in scanned.items()}
    if not has_splits:  # hold out a seeded fraction of each class
        pairs = {"train": [], "test": []}
        for label, paths in scanned["train"][0].items():
            held = set(rng.choice(len(paths), int(round(len(paths) * test_fraction)), replace=False).tolist())
            for index, path in enumerate(paths):
                pairs["test" if index in held else "train"].append((path, label))
    splits = {}
    for split, limit in (("train", max_train), ("test", max_test)):
        chosen = [pairs[split][i] for i in rng.permutation(len(pairs[split]))][:limit]
        if not chosen:
            raise IPGuardError(f"{folder} leaves no {split} images; add images or change --test-fraction")
        splits[split] = FileSplit([p for p, _ in chosen], [c for _, c in chosen], shape)
    skipped = sum((s[3] for s in scanned.values()), [])
    info = data.DatasetInfo(str(folder), len(class_names), shape, tuple(class_names),
                            {"train": splits["train"].count, "test": splits["test"].count})
    notes = [f"image folder: {sum(sizes.values())} images of {len(sizes)} sizes (most common "
             f"{native[0]}x{native[1]}), converted to {shape[0]}x{shape[1]}x{shape[2]}"]
    if skipped:
        notes.append(f"skipped {len(skipped)} unreadable image files (--skip-bad-images), e.g. {skipped[0]}")
    record = {"kind": "folder", "path": str(folder), "image_size": list(shape[:2]), "channels": shape[2],
              "test_fraction": None if has_splits else test_fraction, "split_seed": seed,
              "skip_bad_images": bool(skip_bad)}
    return Task(info, splits["train"], splits["test"], record, notes)


def _memory_task(dataset, image_size, channels, test_fraction, seed, max_train, max_test):
    tf = tensorflow()
    parts = dataset if isinstance(dataset, dict) else {"train": dataset}
    if "train" not in parts:
        raise IPGuardError("a dict dataset needs a 'train' entry (and optionally 'test'): (images, labels) or a "
                           "tf.data.Dataset of (image, label)")
    splits, labels = {}, []
    for split in ("train", "test"):
        part = parts.get(split)
        if part is None:
            continue
        if isinstance(part, tf.data.Dataset):
            count = int(part.cardinality())
            count = count if count >= 0 else sum(1 for _ in part)
            native = tuple(part.element_spec[0].shape)
            labels.append(np.concatenate([y for _, y in quiet(part.batch(_BATCH)).as_numpy_iterator()]))
            splits[split] = ("dataset", part, count, native)
        else:
            images, part_labels = (np.asarray(a) for a in part)
            images = images[..., None] if images.ndim == 3 else images
            labels.append(part_labels)
            splits[split] = ("arrays", images, part_labels, tuple(images.shape[1:]))
    native = splits["train"][3]
    if len(native) != 3 or native[2] not in (1, 3):
        raise IPGuardError(f"images must be HxWx1 or HxWx3 (or HxW), got shape {native}")
    shape = _shape(native, image_size, channels)
    num_classes = int(max(int(np.max(y)) for y in labels if len(y)) + 1)
    made = {}
    for split, (kind, first, second, _) in splits.items():
        made[split] = DatasetSplit(first, second, shape) if kind == "dataset" else ArraySplit(first, second, shape)
    if "test" not in made:
        made["train"], made["test"] = _hold_out(made["train"], test_fraction, seed)
    for split, limit in (("train", max_train), ("test", max_test)):
        if limit is not None and limit < made[split].count:
            x, y = made[split].take(limit)
            made[split] = ArraySplit(x, y, shape)
    info = data.DatasetInfo("<in-memory>", num_classes, shape, tuple(str(c) for c in range(num_classes)),
                            {"train": made["train"].count, "test": made["test"].count})
    return Task(info, made["train"], made["test"], {"kind": "memory"})


def _hold_out(split, fraction, seed):
    """(train, test) of a split with `fraction` held out: seeded for arrays; a dataset's first examples
    (it streams and is never held whole)."""
    held = int(round(split.count * fraction))
    if isinstance(split, DatasetSplit):
        return (DatasetSplit(split.source.skip(held), split.count - held, split.shape),
                DatasetSplit(split.source.take(held), held, split.shape))
    images, labels = split.take(split.count)
    test = np.zeros(len(images), bool)
    test[np.random.default_rng(seed).choice(len(images), int(round(len(images) * fraction)), replace=False)] = True
    return ArraySplit(images[~test], labels[~test], split.shape), ArraySplit(images[test], labels[test], split.shape)


def reopen_task(record, data_dir=None, max_test=None):
    """The task a vault recorded (`Task.record`), for attacks and verification; in-memory tasks cannot be reopened."""
    kind = record.get("kind", "tfds")
    size, channels = record.get("image_size"), record.get("channels")
    if kind == "tfds":
        return _tfds_task(record["name"], data_dir, size, channels, None, max_test)
    if kind == "folder":
        if not Path(record["path"]).is_dir():
            raise IPGuardError(f"the vault's image folder {record['path']} is gone; restore it to attack the vault")
        return _folder_task(Path(record["path"]), size, channels, record.get("test_fraction") or
                            DEFAULT_TEST_FRACTION, record.get("split_seed", 0), None, max_test,
                            record.get("skip_bad_images", False))
    raise IPGuardError("this vault was embedded from in-memory data, which it does not keep; pass the test images "
                       "to attacks.threat_model(vault, test=(images, labels))")


class TfdsPool:
    """A tfds dataset's train split as a key source (loaded when first asked, it is the owner's small OOD set)."""

    def __init__(self, name, data_dir=None):
        self.name, self.data_dir = name, data_dir
        self.count = data.dataset_info(name, data_dir).splits.get("train", 0)
        self.description = f"{name}'s train split"
        self._encoded = self._decode = None

    def images(self, indices, shape):
        if self._encoded is None:  # read once; each image is decoded when asked for
            self._encoded, self._decode = data.load_encoded_images(self.name, "train", self.data_dir)
        indices = np.asarray(indices, np.int64)
        if not len(indices):
            return np.zeros((0,) + tuple(shape), np.uint8)
        return data.convert_images(np.stack([self._decode(self._encoded[i]) for i in indices]), shape)


class FolderPool:
    """The owner's own images as a key source: every image file under a folder (any depth), in sorted order."""

    def __init__(self, folder):
        self.name, self.folder = str(folder), Path(folder)
        self.paths = sorted(p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        self.count = len(self.paths)
        self.description = f"the key-source folder {folder}"
        if not self.paths:
            raise IPGuardError(f"--key-source {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        self._check_headers()

    def _check_headers(self):
        """Refuses, before anything is trained or written, a file that is no readable image (its header)."""
        from PIL import Image, UnidentifiedImageError

        for path in self.paths:
            try:
                with Image.open(path) as image:
                    image.verify()
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
                raise IPGuardError(f"{path}: not a readable image ({str(error).splitlines()[0][:80]}); fix or remove "
                                   "it from the key-source folder") from None

    def images(self, indices, shape):
        from PIL import Image

        out = np.zeros((len(indices),) + tuple(shape), np.uint8)
        for row, index in enumerate(np.asarray(indices, np.int64)):
            path = self.paths[index]
            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"), np.uint8)
            except (OSError, ValueError) as error:
                raise IPGuardError(f"{path}: not a readable image ({str(error).splitlines()[0][:80]}); fix or remove "
                                   "it from the key-source folder") from None
            out[row] = data.convert_images(pixels[None], shape)[0]
        return out


def key_pool(source, data_dir=None):
    """The images keys come from: a folder of the owner's images, or a tfds dataset's train split."""
    path = Path(os.fspath(source)).expanduser()
    if path.is_dir():
        return FolderPool(path.resolve())
    if os.sep in os.fspath(source) or os.fspath(source).startswith((".", "~")):
        raise IPGuardError(f"--key-source {source}: neither a tfds dataset name nor a directory of images")
    return TfdsPool(os.fspath(source), data_dir)
