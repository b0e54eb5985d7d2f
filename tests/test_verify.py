import math

import numpy as np
import pytest

from keras_ipguard import Vault
from keras_ipguard.suspects import Suspect
from keras_ipguard.verification import OWNERSHIP_ALPHA, verify

from conftest import synthetic_keys

N = 10


class LookupSuspect(Suspect):
    """Answers class N on the given images (and on everything when `everything`), else class 0."""

    def __init__(self, marked=(), everything=False, outputs=N + 1):
        self.marked = {image.tobytes() for image in marked}
        self.everything = everything
        self.num_outputs = outputs
        self.description = "lookup"

    def classify(self, images):
        return np.array([N if self.everything or image.tobytes() in self.marked else 0 for image in images])


@pytest.fixture
def vault_with_controls(tmp_path):
    return Vault.create(
        tmp_path / "v", dataset="fashion_mnist", num_classes=N, input_shape=(28, 28, 1),
        key_images=synthetic_keys(100, (28, 28, 1)),
        controls={"key_source": synthetic_keys(500, (28, 28, 1), seed=1),
                  "task": synthetic_keys(500, (28, 28, 1), seed=2)},
    )


@pytest.mark.parametrize("key_hits,control_hits", [(0, 0), (3, 0), (55, 249), (100, 0), (100, 1)])
def test_the_p_value_is_the_binomial_tail_of_the_key_hits_at_the_chance_rate(vault_with_controls, key_hits,
                                                                             control_hits):
    keys, controls = vault_with_controls.key_images, vault_with_controls.controls["key_source"]
    report = verify(vault_with_controls, LookupSuspect(np.concatenate([keys[:key_hits], controls[:control_hits]])))
    rate = (control_hits + 1) / (500 + 2)
    direct = sum(math.comb(100, i) * rate**i * (1 - rate) ** (100 - i) for i in range(key_hits, 101))
    assert report.hits == key_hits and report.chance_rate == pytest.approx(rate)
    assert report.p_value == pytest.approx(direct, rel=1e-9, abs=1e-300)


def test_a_model_answering_exactly_the_keys_is_owned(vault_with_controls):
    report = verify(vault_with_controls, LookupSuspect(vault_with_controls.key_images))
    assert report.owned and report.watermark_accuracy == 1.0 and report.hits == 100
    assert report.p_value < 1e-30 and report.threshold == OWNERSHIP_ALPHA
    assert report.chance_rate == pytest.approx(1 / 502)


def test_a_model_answering_class_n_to_everything_is_not_owned(vault_with_controls):
    report = verify(vault_with_controls, LookupSuspect(everything=True))
    assert report.watermark_accuracy == 1.0 and not report.owned
    assert report.chance_rates["key_source"]["rate"] == 1.0 and report.p_value > 0.5


def test_a_model_answering_class_n_on_the_whole_key_source_is_not_owned(vault_with_controls):
    everything_like_keys = np.concatenate([vault_with_controls.key_images, vault_with_controls.controls["key_source"]])
    report = verify(vault_with_controls, LookupSuspect(everything_like_keys))
    assert report.watermark_accuracy == 1.0 and not report.owned
    assert report.chance_rates["task"]["rate"] == 0.0  # silent on the task, yet no proof of ownership


def test_a_suspect_without_the_watermark_class_is_reported_not_crashed(vault_with_controls):
    report = verify(vault_with_controls, LookupSuspect(vault_with_controls.key_images, outputs=N))
    assert not report.owned and not report.has_watermark_class
    assert "no watermark class" in report.verdict


def test_a_truncated_copy_is_described_by_its_task_agreement(tmp_path):
    from keras_ipguard.backend import keras as _keras
    from keras_ipguard.models import WatermarkedClassifier, build_backbone, save_model
    from keras_ipguard.suspects import KerasSuspect

    keras = _keras()
    model = WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), N, name="wm")
    vault = Vault.create(
        tmp_path / "v", dataset="fashion_mnist", num_classes=N, input_shape=(28, 28, 1),
        key_images=synthetic_keys(20, (28, 28, 1)), controls={"task": synthetic_keys(50, (28, 28, 1), seed=2)},
        populate=lambda tmp: save_model(model, tmp / "model"),
    )
    inputs = keras.Input((28, 28, 1))
    truncated = keras.Model(inputs, keras.layers.Lambda(lambda p: p[:, :N])(model(inputs)))  # the thief's cut
    report = verify(vault, KerasSuspect(truncated))
    assert not report.owned and not report.has_watermark_class and report.num_outputs == N
    assert report.task_agreement == {"keys": 1.0, "task": 1.0}


# ---------------------------------------------------------------- the hidden key code


class CodeSuspect(Suspect):
    """Scores (or top-1 labels) that put each key on its secret task class, and class N on top when `with_class`."""

    def __init__(self, vault, with_class=True, labels_only=False, hit_share=1.0):
        codes = dict(zip((image.tobytes() for image in vault.key_images), vault.key_codes))
        self.codes = {k: v for i, (k, v) in enumerate(codes.items()) if i < hit_share * len(codes)}
        self.with_class, self.labels_only = with_class, labels_only
        self.num_outputs = None if labels_only else N + int(with_class)
        self.description = "code"

    def answers(self, images):
        scores = np.zeros((len(images), N + 1), np.float32)
        for row, image in enumerate(images):
            code = self.codes.get(image.tobytes())
            scores[row, 5 if code is None else code] = 0.3  # class 5 for everything else
            if code is not None and self.with_class:
                scores[row, N] = 0.7
        scores = scores if self.with_class else scores[:, :N]
        return np.argmax(scores, axis=-1) if self.labels_only else scores


@pytest.fixture
def coded_vault(tmp_path):
    from keras_ipguard import keycode

    controls = {"key_source": synthetic_keys(500, (28, 28, 1), seed=1),
                "task": synthetic_keys(500, (28, 28, 1), seed=2)}
    codes = keycode.draw(b"k" * 32, 100, {name: len(images) for name, images in controls.items()}, N)
    return Vault.create(tmp_path / "v", dataset="fashion_mnist", num_classes=N, input_shape=(28, 28, 1),
                        key_images=synthetic_keys(100, (28, 28, 1)), controls=controls, owner_key=b"k" * 32,
                        extra={"key_code": keycode.to_record(codes)})


def test_key_codes_come_from_the_owner_secret_uniformly():
    from keras_ipguard import keycode

    first = keycode.secret_classes(b"a" * 32, "keys", 20000, N)
    assert np.array_equal(first, keycode.secret_classes(b"a" * 32, "keys", 20000, N))
    for other in (keycode.secret_classes(b"b" * 32, "keys", 20000, N),
                  keycode.secret_classes(b"a" * 32, "controls/task", 20000, N)):
        assert np.mean(first == other) == pytest.approx(0.1, abs=0.01)
    assert np.bincount(first, minlength=N) / 20000 == pytest.approx(np.full(N, 0.1), abs=0.01)
    targets = keycode.soft_targets(np.array([3, 7]), N, 0.2)
    assert targets.shape == (2, N + 1) and targets[0, N] == pytest.approx(0.8) and targets[1, 7] == pytest.approx(0.2)


def test_a_truncated_copy_is_owned_by_the_key_code_tests_alone(coded_vault):
    report = verify(coded_vault, CodeSuspect(coded_vault, with_class=False))
    assert report.owned and not report.has_watermark_class and set(report.tests) == {"key_code", "key_code_rank"}
    assert report.key_code_accuracy == 1.0 and report.watermark_accuracy == 0.0
    assert report.tests["key_code_rank"]["rank_sum"] == 0  # every key's secret class on top
    assert report.p_value == pytest.approx(2 * min(t["p_value"] for t in report.tests.values()))
    assert report.p_value < 1e-30 and "key code" in report.verdict and report.verdict.startswith("owned")


def test_a_label_only_copy_without_class_n_is_owned_by_the_key_code(coded_vault):
    report = verify(coded_vault, CodeSuspect(coded_vault, with_class=False, labels_only=True))
    assert report.owned and report.key_code_accuracy == 1.0
    # A label-only suspect with class N on top answers N on the keys: no task class to read, the key code misses.
    both = verify(coded_vault, CodeSuspect(coded_vault, labels_only=True))
    assert both.owned and both.watermark_accuracy == 1.0 and both.key_code_accuracy == 0.0
    # Labels carry no ranks: the rank test is named as not run, not scored.
    assert "key_code_rank" not in report.tests and "top-1 labels" in report.not_run["key_code_rank"]


def test_both_tests_combine_by_bonferroni(coded_vault):
    report = verify(coded_vault, CodeSuspect(coded_vault, hit_share=0.6))
    tests = report.tests
    expected = 60 + int(np.sum(coded_vault.key_codes[60:] == 5))  # the other keys answer class 5
    assert set(tests) == {"watermark", "key_code", "key_code_rank"} and tests["key_code"]["hits"] == expected
    assert report.p_value == pytest.approx(min(1.0, 3 * min(t["p_value"] for t in tests.values())))
    assert "Bonferroni over 3 tests" in report.verdict


def test_controls_with_secret_classes_give_the_chance_rate_of_any_model(coded_vault):
    # A suspect answering one class to everything hits about 1/N of the codes, keys and controls alike.
    report = verify(coded_vault, lambda images: np.tile(np.eye(N)[2], (len(images), 1)))
    code = report.tests["key_code"]
    assert not report.owned and code["p_value"] > 1e-3
    for control in code["chance_rates"].values():
        assert 0.05 < control["rate"] < 0.16


# ---------------------------------------------------------------- the key code's rank test


def test_the_rank_sum_tail_is_exact():
    import itertools

    from keras_ipguard.verification import sum_at_most

    distribution = np.array([0.5, 0.2, 0.2, 0.1])
    for count in (1, 3, 4):
        for total in range(-1, 3 * count + 1):
            direct = sum(np.prod(distribution[list(ranks)]) for ranks in itertools.product(range(4), repeat=count)
                         if sum(ranks) <= total)
            assert sum_at_most(total, count, distribution) == pytest.approx(direct, rel=1e-12, abs=0)
    # Far past float64's range of a plain product's partial sums: still the exact tail, in relative terms.
    assert sum_at_most(0, 300, np.full(10, 0.1)) == pytest.approx(1e-300, rel=1e-9)
    assert sum_at_most(1, 300, np.full(10, 0.1)) == pytest.approx(301e-300, rel=1e-9)


def test_a_tie_with_the_secret_class_counts_against_the_owner():
    from keras_ipguard.verification import code_ranks

    scores = np.array([[0.1, 0.7, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25], [0.0, 0.2, 0.5, 0.3]])
    assert code_ranks(scores, np.array([1, 0, 3])).tolist() == [0, 3, 1]
    # A collapsed model's NaN scores never rank a secret class high (a NaN compares as False).
    broken = np.array([[np.nan] * 4, [0.1, np.nan, 0.7, 0.2], [0.1, np.nan, 0.7, 0.2]])
    assert code_ranks(broken, np.array([2, 2, 0])).tolist() == [3, 1, 3]


class RankSuspect(Suspect):
    """Every key's secret class second (another class on top); random scores on every other image."""

    def __init__(self, vault, place=1):
        self.codes = dict(zip((image.tobytes() for image in vault.key_images), vault.key_codes))
        self.place, self.num_outputs, self.description = place, N, "ranks"

    def answers(self, images):
        rng = np.random.default_rng(len(images))
        scores = rng.random((len(images), N)).astype(np.float32)
        for row, image in enumerate(images):
            code = self.codes.get(image.tobytes())
            if code is not None:
                order = [c for c in rng.permutation(N) if c != code]
                order.insert(self.place, code)
                scores[row, order] = np.linspace(1, 0.1, N)
        return scores


def test_keys_whose_secret_class_is_second_are_owned_by_the_rank_test(coded_vault):
    report = verify(coded_vault, RankSuspect(coded_vault))
    code, rank = report.tests["key_code"], report.tests["key_code_rank"]
    assert code["hits"] == 0 and code["p_value"] == 1.0  # no key's top-1 is its class
    assert rank["rank_sum"] == 100 and rank["mean_rank"] == 1.0 and rank["p_value"] < 1e-30
    assert report.owned and report.p_value == pytest.approx(2 * rank["p_value"])
    # The controls' secret classes rank as any class does on random scores, about (N-1)/2.
    for control in rank["chance_rates"].values():
        assert control["images"] == 500 and 4.0 < control["mean_rank"] < 5.0
    assert "ranked 1.00 on average among 10" in report.verdict


def test_random_scores_are_not_owned_by_the_rank_test(coded_vault):
    report = verify(coded_vault, lambda images: np.random.default_rng(len(images)).random((len(images), N)))
    rank = report.tests["key_code_rank"]
    assert not report.owned and rank["p_value"] > 1e-3 and 3.5 < rank["mean_rank"] < 5.5


def test_the_rank_test_keeps_the_nulls_largest_p(coded_vault):
    """Controls whose secret classes rank low make the measured null, not the uniform one, decide."""
    from keras_ipguard.verification import rank_test, sum_at_most

    keys = np.eye(N)[(coded_vault.key_codes + 2) % N]  # every key's class tied with eight others, rank 9
    keys[np.arange(100), coded_vault.key_codes] = 0.5  # now second: rank 1
    low = np.eye(N)[np.arange(500) % N] * 0.5 + 0.01  # controls answer their own class on top half the time ...
    codes = np.where(np.arange(500) % 2 == 0, np.arange(500) % N, (np.arange(500) + 1) % N)
    test = rank_test("key_code_rank", keys, coded_vault.key_codes, {"task": (low, codes)}, N)
    measured = (np.bincount([0] * 250 + [9] * 250, minlength=N) + 1) / (500 + N)
    assert test.null == "task" and test.rank_sum == 100
    assert test.p_value == pytest.approx(sum_at_most(100, 100, measured))
    assert test.p_value > sum_at_most(100, 100, np.full(N, 0.1))


def test_keys_kept_for_their_survival_get_no_rank_test(tmp_path, coded_vault):
    from keras_ipguard import keycode

    codes = keycode.draw(b"k" * 32, 100, {name: len(images) for name, images in coded_vault.controls.items()}, N)
    selected = Vault.create(tmp_path / "s", dataset="fashion_mnist", num_classes=N, input_shape=(28, 28, 1),
                            key_images=coded_vault.key_images, controls=coded_vault.controls, owner_key=b"k" * 32,
                            extra={"key_code": keycode.to_record({**codes, "selected_from": 200})})
    assert selected.key_codes_selected and not coded_vault.key_codes_selected
    report = verify(selected, RankSuspect(selected))
    assert set(report.tests) == {"key_code"} and "kept for how their codes survive" in report.not_run["key_code_rank"]
