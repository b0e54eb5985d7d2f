import math

import numpy as np
import pytest

from keras_ipguard import Vault
from keras_ipguard.suspects import Suspect
from keras_ipguard.verify import OWNERSHIP_ALPHA, binomial_tail, verify

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
        controls={"key_source": synthetic_keys(500, (28, 28, 1), seed=1), "task": synthetic_keys(500, (28, 28, 1), seed=2)},
    )


def test_binomial_tail_matches_the_direct_sum():
    for hits, trials, rate in [(0, 10, 0.3), (3, 10, 0.3), (10, 10, 0.3), (55, 100, 0.5), (100, 100, 0.002)]:
        direct = sum(math.comb(trials, i) * rate**i * (1 - rate) ** (trials - i) for i in range(hits, trials + 1))
        assert binomial_tail(hits, trials, rate) == pytest.approx(direct, rel=1e-9, abs=1e-300)


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
