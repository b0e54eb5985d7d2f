"""Task data from image folders, arrays and tf.data, streamed; key images from the owner's own folder."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from keras_ipguard import IPGuardError, data, sources
from keras_ipguard.backend import tensorflow
from keras_ipguard_cli.main import cli

from conftest import synthetic_keys

FORMATS = (("png", "RGB"), ("jpg", "RGB"), ("bmp", "L"), ("gif", "RGB"), ("png", "L"))


def write_folder(root, classes=3, per_class=10, sizes=((40, 30), (40, 30), (33, 47)), modes=FORMATS, seed=0):
    """Class folders of images whose brightness tells the class, in mixed formats, modes and sizes."""
    rng = np.random.default_rng(seed)
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            height, width = sizes[index % len(sizes)]
            suffix, mode = modes[index % len(modes)]
            level = 40 + 80 * label
            pixels = np.clip(rng.normal(level, 10, (height, width, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).convert(mode).save(folder / f"{index:03d}.{suffix}")
    return root


def test_a_folder_of_mixed_sizes_and_formats_streams_as_one_shape(tmp_path):
    task = sources.open_task(write_folder(tmp_path / "shapes"), seed=1)
    assert task.info.class_names == ("class_0", "class_1", "class_2") and task.info.num_classes == 3
    assert task.info.input_shape == (40, 30, 3)  # the most common size; color because some images are
    assert (task.train.count, task.test.count) == (24, 6)  # 2 of each class's 10 held out
    images, labels = task.train.take(task.train.count)
    assert images.shape == (24, 40, 30, 3) and images.dtype == np.uint8
    brightness = images.reshape(24, -1).mean(axis=1)
    assert all(abs(b - (40 + 80 * label)) < 25 for b, label in zip(brightness, labels))  # each image kept its label
    assert sorted(np.bincount(labels)) == [8, 8, 8]
    test_images, _ = task.test.take(6)
    assert not {i.tobytes() for i in test_images} & {i.tobytes() for i in images}
    assert task.record["kind"] == "folder" and "3 sizes" not in task.notes[0] and "2 sizes" in task.notes[0]


def test_image_size_and_grayscale_are_chosen_or_detected(tmp_path):
    root = write_folder(tmp_path / "gray", modes=(("png", "L"), ("bmp", "L")))
    assert sources.open_task(root).info.input_shape == (40, 30, 1)
    resized = sources.open_task(root, image_size=(64, 64), channels=3)
    assert resized.info.input_shape == (64, 64, 3)
    images, _ = resized.train.take(4)
    assert images.shape == (4, 64, 64, 3) and (images[..., 0] == images[..., 1]).all()


def test_train_and_test_folders_are_used_as_they_are(tmp_path):
    write_folder(tmp_path / "split" / "train", per_class=6)
    write_folder(tmp_path / "split" / "test", per_class=2, seed=1)
    task = sources.open_task(tmp_path / "split")
    assert (task.train.count, task.test.count) == (18, 6) and task.record["test_fraction"] is None


def test_the_training_stream_is_reshuffled_every_pass_and_samples_are_seeded(tmp_path):
    task = sources.open_task(write_folder(tmp_path / "f", per_class=20))
    stream = task.train.dataset(seed=3)
    first, second = ([y for _, y in stream.as_numpy_iterator()] for _ in range(2))
    assert sorted(first) == sorted(second) and first != second
    assert (task.test.sample(5, seed=2)[0] == task.test.sample(5, seed=2)[0]).all()
    only_two, labels = task.train.of_classes([2], 100)
    assert len(only_two) == 16 and set(labels) == {2}


@pytest.mark.parametrize("make, message", [
    (lambda root: root.mkdir(), "holds no class folders"),
    (lambda root: write_folder(root, classes=1), "a single class folder"),
    (lambda root: (write_folder(root), (root / "class_9").mkdir()), r"class folder .*class_9 holds no readable image"),
    (lambda root: (write_folder(root), (root / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nno")),
     r"class_1/broken.png: not a readable image .*--skip-bad-images"),
])
def test_bad_folders_are_refused_with_one_line_saying_what_to_do(tmp_path, make, message):
    make(tmp_path / "data")
    with pytest.raises(IPGuardError, match=message):
        sources.open_task(tmp_path / "data")


def test_unreadable_files_can_be_skipped_and_are_counted(tmp_path):
    root = write_folder(tmp_path / "data")
    (root / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    task = sources.open_task(root, skip_bad_images=True)
    assert task.train.count + task.test.count == 30 and "skipped 1 unreadable image" in task.notes[1]


def test_a_dataset_that_is_neither_a_tfds_name_nor_a_folder_is_refused(tmp_path):
    with pytest.raises(IPGuardError, match="neither a tfds dataset name nor a directory"):
        sources.open_task(str(tmp_path / "no-such-folder"))
    result = CliRunner().invoke(cli, ["embed", "--dataset", "./no-such-folder", "--out", str(tmp_path / "v")])
    assert result.exit_code == 2 and "neither a tfds dataset name nor a directory" in result.stderr
    assert not (tmp_path / "v").exists()


def test_arrays_and_tf_data_datasets_are_tasks_too():
    tf = tensorflow()
    x = synthetic_keys(50, (28, 28, 1))
    y = np.arange(50) % 5
    arrays = sources.open_task((x, y), seed=0)
    assert arrays.info.num_classes == 5 and (arrays.train.count, arrays.test.count) == (40, 10)
    dataset = sources.open_task({"train": tf.data.Dataset.from_tensor_slices((x, y)), "test": (x[:7], y[:7])},
                                image_size=(32, 32), channels=3)
    assert dataset.info.input_shape == (32, 32, 3) and dataset.train.count == 50 and dataset.test.count == 7
    assert dataset.train.take(3)[0].shape == (3, 32, 32, 3)


def test_a_key_source_folder_gives_keys_converted_to_the_task(tmp_path):
    folder = tmp_path / "mine" / "nested"
    folder.mkdir(parents=True)
    for index, image in enumerate(synthetic_keys(30, (50, 40, 3))):
        Image.fromarray(image).save(folder / f"{index}.{'png' if index % 2 else 'jpg'}")
    pool = sources.key_pool(tmp_path / "mine")
    key_set = data.build_key_set("fashion_mnist", pool, 5, (28, 28, 1), seed=1, negatives=10, controls=10)
    assert key_set.keys.shape == (5, 28, 28, 1) and key_set.controls.shape == (10, 28, 28, 1)
    rebuilt = data.key_set_from_indices(pool, key_set.indices, (28, 28, 1))
    assert (rebuilt.keys == key_set.keys).all()
    with pytest.raises(IPGuardError, match="more than the 30 images of the key-source folder"):
        data.build_key_set("fashion_mnist", pool, 20, (28, 28, 1), seed=1, negatives=10, controls=10)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(IPGuardError, match="broken.png: not a readable image .*key-source folder"):
        sources.key_pool(tmp_path / "mine")
