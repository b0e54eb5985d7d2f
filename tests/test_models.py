import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_ipguard import IPGuardError
from keras_ipguard.backend import keras as _keras
from keras_ipguard.models import WatermarkedClassifier, build_backbone, load_model, save_model

keras = _keras()


@pytest.fixture(scope="module")
def tiny_inputs():
    return np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1)).astype(np.float32)


def test_head_has_n_plus_one_outputs_and_task_probabilities_drop_class_n(tiny_inputs):
    model = WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), num_classes=10)
    probabilities = model(tiny_inputs).numpy()
    assert probabilities.shape == (6, 11)
    task = model.task_probabilities(tiny_inputs).numpy()
    assert task.shape == (6, 10)
    np.testing.assert_allclose(task.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(task, probabilities[:, :10] / probabilities[:, :10].sum(1, keepdims=True), rtol=1e-5)


@pytest.mark.parametrize("arch, shape", [("small_cnn", (28, 28, 1)), ("resnet20", (32, 32, 3)), ("vgg11", (32, 32, 3))])
def test_zoo_architectures_build(arch, shape):
    backbone = build_backbone(arch, shape)
    assert backbone.input_shape[1:] == shape and len(backbone.output_shape) == 2


def test_auto_architecture_picks_by_input_shape():
    assert build_backbone("auto", (28, 28, 1)).name == "small_cnn_backbone"
    assert build_backbone("auto", (32, 32, 3)).name == "resnet20_backbone"
    with pytest.raises(IPGuardError, match="unknown architecture"):
        build_backbone("alexnet", (32, 32, 3))


def test_config_round_trip_rebuilds_the_same_structure():
    model = WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), num_classes=10, name="wm")
    clone = WatermarkedClassifier.from_config(model.get_config())
    assert clone.num_classes == 10 and clone.count_params() == model.count_params()


def test_saved_model_loads_in_a_fresh_process_with_identical_outputs(tmp_path, tiny_inputs):
    model = WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), num_classes=10, name="wm")
    save_model(model, tmp_path)
    np.save(tmp_path / "x.npy", tiny_inputs)
    np.save(tmp_path / "y.npy", model.predict(tiny_inputs, verbose=0))
    script = textwrap.dedent(
        f"""
        import numpy as np
        from keras_ipguard.models import load_model, WatermarkedClassifier
        model = load_model({str(tmp_path)!r})
        assert isinstance(model, WatermarkedClassifier), type(model)
        difference = np.abs(model.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0) - np.load({str(tmp_path / 'y.npy')!r}))
        print(difference.max())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-6


def _base_model():
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inputs))
    x = keras.layers.Dense(32, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def test_growing_a_base_model_keeps_its_task_predictions(tiny_inputs):
    base = _base_model()
    grown = WatermarkedClassifier.from_base_model(base, num_classes=10)
    assert grown(tiny_inputs).shape == (6, 11)
    np.testing.assert_allclose(grown.task_probabilities(tiny_inputs).numpy(), base(tiny_inputs).numpy(), atol=1e-5)


def test_base_model_with_wrong_output_size_is_refused():
    with pytest.raises(IPGuardError, match="10 outputs, the dataset has 7 classes"):
        WatermarkedClassifier.from_base_model(_base_model(), num_classes=7)


def test_loaded_model_of_a_missing_file_is_an_error(tmp_path):
    with pytest.raises((OSError, ValueError)):
        load_model(tmp_path / "nothing.keras")
