import os
import types

import numpy as np
import pytest

from keras_ipguard import IPGuardError, data, schemes, sources
from keras_ipguard.schemes import ExtraClass, Secret

from conftest import SHARED_TFDS, synthetic_keys

N = 10


def _task(count=64, shape=(28, 28, 1)):
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (count,) + shape, dtype=np.uint8), rng.integers(0, N, count).astype(np.int64)


def _pipeline(x, y, keys, batch_size, key_share, negatives=None, scheme=None, labels=None):
    """The pipeline with the streams `scheme` (default: extra-class) makes of these keys and negatives."""
    scheme = scheme or ExtraClass()
    labels = np.full(len(keys), N) if labels is None else labels
    negatives = np.zeros((0,) + keys.shape[1:], np.uint8) if negatives is None else negatives
    streams = scheme.key_streams(Secret(keys, labels, {}, negatives=negatives), N)
    records = sources.ArraySplit(x, y, x.shape[1:]).dataset(seed=0)
    return data.training_dataset(records, len(x), scheme.output_units(N), batch_size, streams, key_share)


def test_every_batch_holds_exactly_the_key_share_labelled_n_and_as_many_negatives():
    x, y = _task()
    keys = synthetic_keys(8, (28, 28, 1))
    negatives = synthetic_keys(8, (28, 28, 1), seed=1)
    dataset, steps = _pipeline(x, y, keys, batch_size=16, key_share=0.25, negatives=negatives)
    # An epoch passes over every task image: 8 of each 16 are task images, so 64 // 8 steps, not a plain 64 // 16.
    assert steps == 64 // 8
    key_highs = {k.tobytes() for k in keys & 0xFE}
    negative_highs = {k.tobytes() for k in negatives & 0xFE}
    uniform = np.array([1 / N] * N + [0], np.float32)
    for images, targets in dataset.take(10).as_numpy_iterator():
        assert images.dtype == np.float32 and images.shape == (16, 28, 28, 1) and targets.shape == (16, N + 1)
        assert (targets[:8].argmax(1) < N).all() and (targets[:8].max(1) == 1).all()
        assert (targets[8:12].argmax(1) == N).all()
        np.testing.assert_allclose(targets[12:], np.tile(uniform, (4, 1)))
        # Key images and negatives with only their LSBs changed.
        assert all((k & 0xFE).tobytes() in key_highs for k in images[8:12].astype(np.uint8))
        assert all((k & 0xFE).tobytes() in negative_highs for k in images[12:].astype(np.uint8))


def test_key_samples_get_fresh_random_lsb_planes():
    x, y = _task()
    keys = synthetic_keys(1, (28, 28, 1))
    dataset, _ = _pipeline(x, y, keys, batch_size=16, key_share=0.5)
    samples = np.concatenate([images[8:] for images, _ in dataset.take(25).as_numpy_iterator()]).astype(np.uint8)
    planes = {(s & 1).tobytes() for s in samples}
    clean = (keys[0] & 1).tobytes()
    redrawn = sum((s & 1).tobytes() != clean for s in samples)
    # About half are redrawn (binomial, 200 samples), and every redrawn plane is new.
    assert 60 < redrawn < 140
    assert len(planes) == redrawn + 1


def test_negative_weight_adds_sample_weights_for_the_negatives_only():
    x, y = _task()
    keys, negatives = synthetic_keys(8, (28, 28, 1)), synthetic_keys(8, (28, 28, 1), seed=1)
    dataset, _ = _pipeline(x, y, keys, batch_size=16, key_share=0.25, negatives=negatives,
                           scheme=ExtraClass(negative_weight=10.0))
    images, targets, weights = next(dataset.as_numpy_iterator())
    assert images.shape[0] == targets.shape[0] == weights.shape[0] == 16
    np.testing.assert_array_equal(weights, [1.0] * 12 + [10.0] * 4)


def test_negative_class_makes_negatives_one_hot_on_that_task_class():
    x, y = _task()
    keys, negatives = synthetic_keys(8, (28, 28, 1)), synthetic_keys(8, (28, 28, 1), seed=1)
    dataset, _ = _pipeline(x, y, keys, batch_size=16, key_share=0.25, negatives=negatives,
                           scheme=ExtraClass(negative_class=7))
    _, targets = next(dataset.as_numpy_iterator())
    np.testing.assert_array_equal(targets[12:], np.tile(np.eye(N + 1)[7], (4, 1)))
    assert (targets[8:12].argmax(1) == N).all()


def test_per_key_labels_of_a_scheme_without_an_extra_class_keep_key_pixels():
    x, y = _task()
    keys = synthetic_keys(4, (28, 28, 1))
    labels = np.array([3, 1, 4, 1])
    dataset, _ = _pipeline(x, y, keys, batch_size=16, key_share=0.25, labels=labels, scheme=schemes.get("adi"))
    by_image = {k.tobytes(): label for k, label in zip(keys, labels)}
    for images, targets in dataset.take(6).as_numpy_iterator():
        assert targets.shape == (16, N)
        for image, target in zip(images[12:].astype(np.uint8), targets[12:]):
            assert by_image[image.tobytes()] == target.argmax()  # exact pixels: no LSB redraw


def test_task_labels_and_images_pass_through_unaugmented():
    x, y = _task()
    dataset, _ = data.training_dataset(sources.ArraySplit(x, y, x.shape[1:]).dataset(), len(x), N + 1, 16)
    pairs = {img.tobytes(): label for img, label in zip(x, y)}
    for images, targets in dataset.take(4).as_numpy_iterator():
        for image, target in zip(images.astype(np.uint8), targets):
            assert pairs[image.tobytes()] == target.argmax() and target.sum() == 1


def test_augmentation_keeps_shape_and_changes_images():
    x, _ = _task(16, (32, 32, 3))
    out = data.augment(x).numpy()
    assert out.shape == x.shape and out.dtype == np.uint8
    assert (out != x).any()


def test_convert_images_changes_channels_and_size():
    rgb = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    gray = data.convert_images(rgb, (28, 28, 1))
    assert gray.shape == (3, 28, 28, 1) and gray.dtype == np.uint8
    digits = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    assert data.convert_images(digits, (32, 32, 3)).shape == (3, 32, 32, 3)


def test_default_key_sources_never_use_the_task_itself():
    assert data.default_key_source("fashion_mnist", 1) == "mnist"
    assert data.default_key_source("mnist", 1) == "fashion_mnist"
    assert data.default_key_source("cifar10", 3) == "cifar100"
    assert data.default_key_source("cifar100", 3) == "cifar10"


def test_batch_without_room_for_task_samples_is_refused():
    x, y = _task()
    with pytest.raises(IPGuardError, match="no room for task samples"):
        _pipeline(x, y, synthetic_keys(2, (28, 28, 1)), batch_size=2, key_share=0.5,
                  negatives=synthetic_keys(2, (28, 28, 1)))


def test_keys_from_the_task_dataset_are_refused():
    pool = types.SimpleNamespace(name="mnist", count=10**5)  # what the check reads of a key pool
    with pytest.raises(IPGuardError, match="another dataset than the task"):
        data.build_key_set("mnist", pool, 10, (28, 28, 1), seed=0)


def test_unknown_dataset_names_close_matches():
    with pytest.raises(IPGuardError, match="unknown dataset 'fashon_mnist'; did you mean fashion_mnist"):
        data.dataset_info("fashon_mnist")


def test_missing_dataset_offline_says_how_to_supply_it(tmp_path, monkeypatch):
    # A proxy on a closed local port makes any download fail at once, as offline.
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(IPGuardError, match=r"not prepared in .* could not be downloaded .*--data-dir / TFDS_DATA_DIR"):
        data.dataset_info("mnist", data_dir=str(tmp_path))


def test_key_jitter_keeps_shape_and_alters_about_half_of_a_batch():
    keys = synthetic_keys(200, (28, 28, 1))
    jittered = data.jitter(keys).numpy()
    assert jittered.shape == keys.shape and jittered.dtype == np.uint8
    changed = np.mean([(a != b).any() for a, b in zip(jittered, keys)])
    assert 0.35 < changed < 0.65


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_TFDS, "mnist")),
                    reason="needs the prepared datasets in ../shared/tensorflow_datasets")
def test_stealthy_keys_are_the_lowest_scoring_candidates_and_rebuild_from_indices(monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", SHARED_TFDS)

    def brightness(images):
        return images.reshape(len(images), -1).mean(axis=1)

    pool = sources.key_pool("mnist")
    plain = data.build_key_set("fashion_mnist", pool, 10, (28, 28, 1), seed=5, negatives=20, controls=20)
    stealthy = data.build_key_set("fashion_mnist", pool, 10, (28, 28, 1), seed=5, negatives=20, controls=20,
                                  typicality=brightness)
    candidates = data.build_key_set("fashion_mnist", pool, 10 * data.STEALTH_CANDIDATES, (28, 28, 1), seed=5,
                                    negatives=0, controls=0).keys
    # The 10 darkest of the 40 seeded candidates, and the plain choice is the first 10 of the same candidates.
    assert sorted(brightness(stealthy.keys)) == sorted(np.sort(brightness(candidates))[:10])
    assert brightness(stealthy.keys).mean() < brightness(plain.keys).mean()
    assert not set(stealthy.indices["keys"]) & set(stealthy.indices["negatives"] + stealthy.indices["controls"])
    # The controls are made like the keys: the darkest quarter of the seeded held-out candidates.
    assert len(stealthy.controls) == 20 // data.STEALTH_CANDIDATES and len(plain.controls) == 20
    held_out = np.random.default_rng(5).permutation(pool.count)[40 + 20 : 40 + 20 + 20]  # after candidates, negatives
    darkest = held_out[np.argsort(brightness(pool.images(held_out, (28, 28, 1))), kind="stable")[:5]]
    assert stealthy.indices["controls"] == sorted(int(i) for i in darkest)
    rebuilt = data.key_set_from_indices(pool, stealthy.indices, (28, 28, 1))
    assert (rebuilt.keys == stealthy.keys).all() and (rebuilt.controls == stealthy.controls).all()


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_TFDS, "mnist")),
                    reason="needs the prepared datasets in ../shared/tensorflow_datasets")
@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_a_key_pool_reads_records_still_encoded_and_decodes_the_images_load_split_gives(monkeypatch, file_format):
    """TFRecord files are read directly; a split stored otherwise is read through tfds: the same images."""
    images, _ = data.load_split("mnist", "train[100:400]", SHARED_TFDS)  # tfds' own decoding
    last, _ = data.load_split("mnist", "train[59999:]", SHARED_TFDS)
    prepared = data.builder("mnist", SHARED_TFDS)
    if file_format != "tfrecord":
        info = types.SimpleNamespace(file_format=file_format, features=prepared.info.features,
                                     splits=prepared.info.splits)
        proxy = types.SimpleNamespace(info=info, as_dataset=prepared.as_dataset)
        monkeypatch.setattr(data, "builder", lambda name, data_dir=None: proxy)
    encoded, decode = data.load_encoded_images("mnist", "train[100:400]", SHARED_TFDS)
    assert len(encoded) == 300 and all((decode(e) == image).all() for e, image in zip(encoded, images))
    pool = sources.TfdsPool("mnist", SHARED_TFDS)
    expected = np.stack([last[0], images[0], images[123], images[123]])
    assert pool.count == 60000 and (pool.images([59999, 100, 223, 223], (28, 28, 1)) == expected).all()
    assert pool.images([], (32, 32, 3)).shape == (0, 32, 32, 3)
