import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_ipguard import IPGuardError
from keras_ipguard.backend import keras as _keras
from keras_ipguard.backend import tensorflow as _tensorflow
from keras_ipguard.models import (
    WatermarkedClassifier,
    as_functional,
    build_backbone,
    entanglement_taps,
    harden_kernel_scale,
    load_model,
    magnitude_pruned,
    prunable_layers,
    renormalize_kernels,
    save_model,
)
from keras_ipguard.schemes.extra_class import DEFAULT_KERNEL_SCALE

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


@pytest.mark.parametrize("arch, shape", [("small_cnn", (28, 28, 1)), ("resnet20", (32, 32, 3)), ("vgg11", (32, 32, 3)),
                                         ("resnet20_s2", (64, 64, 3)), ("resnet20_s2", (160, 128, 3))])
def test_zoo_architectures_build(arch, shape):
    backbone = build_backbone(arch, shape)
    assert backbone.input_shape[1:] == shape and len(backbone.output_shape) == 2


def test_auto_architecture_picks_by_input_shape():
    assert build_backbone("auto", (28, 28, 1)).name == "small_cnn_backbone"
    assert build_backbone("auto", (32, 32, 3)).name == "resnet20_backbone"
    assert build_backbone("auto", (64, 64, 3)).name == "resnet20_s2_backbone"
    stem = build_backbone("auto", (224, 224, 3))
    assert stem.name == "resnet20_s2_backbone" and stem.get_layer(index=-1).input_shape[1:3] == (14, 14)
    with pytest.raises(IPGuardError, match="no architecture of the zoo fits 512x512 inputs .*--base-model"):
        build_backbone("auto", (512, 512, 3))
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
        predicted = model.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0)
        difference = np.abs(predicted - np.load({str(tmp_path / 'y.npy')!r}))
        print(difference.max())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-6


def test_loaded_model_of_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(IPGuardError, match="cannot load model .*nothing.keras"):
        load_model(tmp_path / "nothing.keras")


def _normalized_kernel_norms(model):
    return [float(np.linalg.norm(layer.get_weights()[0])) for layer in model.backbone.layers
            if isinstance(layer, keras.layers.Conv2D)]


@pytest.mark.parametrize("arch, shape, kernels", [("small_cnn", (28, 28, 1), 4), ("resnet20", (32, 32, 3), 21)])
def test_kernel_scaling_keeps_every_output_and_survives_saving(tmp_path, arch, shape, kernels):
    model = WatermarkedClassifier(build_backbone(arch, shape), num_classes=10)
    rng = np.random.default_rng(1)
    for layer in model.backbone.layers:  # trained-looking statistics, so that the rescaled ones matter
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([gamma, beta, rng.normal(0, 0.5, mean.shape), rng.uniform(0.01, 3, variance.shape)])
    images = rng.integers(0, 256, (6,) + shape).astype(np.float32)
    before, norms = model.predict(images, verbose=0), _normalized_kernel_norms(model)
    penalty = float(sum(model.losses))  # ResNet-20's L2 weight decay; none in the small CNN
    assert harden_kernel_scale(model, DEFAULT_KERNEL_SCALE) == kernels
    assert float(sum(model.losses)) == pytest.approx(penalty, rel=1e-5)
    np.testing.assert_allclose(_normalized_kernel_norms(model), DEFAULT_KERNEL_SCALE * np.array(norms), rtol=1e-5)
    np.testing.assert_allclose(model.predict(images, verbose=0), before, atol=1e-5)
    loaded = load_model(save_model(model, tmp_path))  # the rescaled epsilon and decay are in the saved config
    np.testing.assert_allclose(loaded.predict(images, verbose=0), before, atol=1e-5)
    assert float(sum(loaded.losses)) == pytest.approx(penalty, rel=1e-5)
    # The attacker's undo: back to the original norms.
    assert renormalize_kernels(loaded, DEFAULT_KERNEL_SCALE) == kernels
    np.testing.assert_allclose(_normalized_kernel_norms(loaded), norms, rtol=1e-5)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), before, atol=1e-5)


def test_adam_turns_a_scaled_kernel_less_by_the_scale():
    """Why the scaling hardens against fine-tuning: one Adam step moves each weight by about the
    learning rate whatever its size, so the step turns a kernel 8 times longer 8 times less."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="norm")(x))
    model = WatermarkedClassifier(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)), num_classes=3)
    rng = np.random.default_rng(2)
    images, labels = rng.uniform(0, 255, (16, 8, 8, 3)).astype(np.float32), rng.integers(0, 3, 16)
    turned = []
    for scale in (1.0, 8.0):
        keras.utils.set_random_seed(0)
        copy = WatermarkedClassifier.from_config(model.get_config())
        copy.set_weights(model.get_weights())
        harden_kernel_scale(copy, scale)
        conv = copy.backbone.get_layer("conv")
        kernel = conv.get_weights()[0]
        copy.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        copy.fit(images, labels, batch_size=16, epochs=1, verbose=0)
        turned.append(np.linalg.norm(conv.get_weights()[0] - kernel) / np.linalg.norm(kernel))
    assert turned[0] > 0 and turned[1] / turned[0] == pytest.approx(1 / 8, rel=0.1)


def test_magnitude_pruned_calls_use_the_pruned_kernels_and_give_the_variables_back(tiny_inputs):
    tf = _tensorflow()
    model = WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), num_classes=10)
    variables = [layer.kernel for layer in prunable_layers(model)]
    trainable = len(model.trainable_weights)
    before = model(tiny_inputs, training=False).numpy()

    @tf.function
    def pruned_call():
        with magnitude_pruned(model, 0.5):
            return model(tiny_inputs, training=False), [layer.kernel for layer in prunable_layers(model)]

    outputs, kernels = pruned_call()
    for kernel in kernels:  # the threshold is a sampled quantile: close to the rate, not exact
        assert np.mean(kernel.numpy() == 0) == pytest.approx(0.5, abs=0.05)
    assert [layer.kernel for layer in prunable_layers(model)] == variables and len(model.trainable_weights) == trainable
    np.testing.assert_array_equal(model(tiny_inputs, training=False).numpy(), before)
    copy = WatermarkedClassifier.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    for layer, kernel in zip(prunable_layers(copy), kernels):
        layer.set_weights([kernel.numpy()] + layer.get_weights()[1:])
    np.testing.assert_allclose(outputs.numpy(), copy(tiny_inputs, training=False).numpy(), atol=1e-6)


@pytest.mark.parametrize("rate", [0.5, 0.97])
def test_one_shot_pruning_zeroes_exactly_the_weights_tfmot_s_constant_sparsity_does(tiny_inputs, rate):
    """The attack's one-shot pruning against TFMOT's own: prune_low_magnitude, one step at learning rate 0."""
    import tensorflow_model_optimization as tfmot

    from keras_ipguard.attacks.pruning import prune_model

    model = as_functional(WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), num_classes=10))
    sparsity = tfmot.sparsity.keras
    schedule = sparsity.ConstantSparsity(rate, begin_step=0, frequency=1)
    wrapped = keras.models.clone_model(model, clone_function=lambda layer: sparsity.prune_low_magnitude(
        layer.__class__.from_config(layer.get_config()), pruning_schedule=schedule) if layer in
        prunable_layers(model) else layer.__class__.from_config(layer.get_config()))
    for source, target in zip(model.layers, wrapped.layers):
        weights = source.get_weights()
        target.set_weights(weights + target.get_weights()[len(weights):])
    wrapped.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    wrapped.fit(tiny_inputs, np.arange(6), epochs=1, callbacks=[sparsity.UpdatePruningStep()], verbose=0)
    reference_model = sparsity.strip_pruning(wrapped)
    ours_model = prune_model(model, rate, tiny_inputs, np.arange(6))
    reference, ours = prunable_layers(reference_model), prunable_layers(ours_model)
    assert len(ours) == len(reference) == 6
    for mine, theirs in zip(ours, reference):
        np.testing.assert_array_equal(mine.kernel.numpy(), theirs.kernel.numpy())
        assert np.mean(mine.kernel.numpy() == 0) == pytest.approx(rate, abs=0.01)
    # TFMOT's step moved the first BatchNormalization's statistics (before any dropout) toward the batch; so did ours.
    norms = [next(layer for layer in pruned.layers if "BatchNormalization" in type(layer).__name__)
             for pruned in (ours_model, reference_model)]
    original = next(layer for layer in model.layers if "BatchNormalization" in type(layer).__name__).get_weights()
    for mine, theirs in zip(*(layer.get_weights() for layer in norms)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-5)
    assert not np.allclose(norms[0].get_weights()[2], original[2])  # the moving mean moved
    assert not any(np.mean(layer.kernel.numpy() == 0) for layer in prunable_layers(model))  # the original untouched


def test_prune_robustness_trains_the_pruned_model_s_answers_from_its_start_step():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (64, 28, 28, 1)).astype(np.float32)
    targets = np.eye(11, dtype=np.float32)[rng.integers(0, 11, 64)]
    history = {}
    for weight, start in ((0.0, 0), (1.0, 0), (1.0, 4)):  # 2 steps an epoch
        keras.utils.set_random_seed(0)
        model = WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), num_classes=10)
        model.set_prune_robustness(weight, start)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
        history[weight, start] = model.fit(images, targets, batch_size=32, epochs=4, verbose=0).history
    assert "pruned_loss" not in history[0.0, 0]
    pruned = history[1.0, 0]["pruned_loss"]
    assert all(np.isfinite(pruned)) and pruned[-1] < pruned[0]
    late = history[1.0, 4]["pruned_loss"]
    assert late[:2] == [0.0, 0.0] and min(late[2:]) > 0


def test_the_key_code_pull_is_a_margin_hinge_on_each_key_s_distance_to_its_secret_class_s_mean():
    from keras_ipguard import keycode
    from keras_ipguard.models import KEY_CODE_PULL_MARGIN

    model = WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), num_classes=10)
    tf = _tensorflow()
    task = np.eye(11, dtype=np.float32)[[1, 1, 2]]  # class 1 at (1, 0) and (0, 1): mean (0.5, 0.5); class 2 at (-1, 0)
    # Codes 1 and 2 far from their class, code 2 at its class's mean (within the margin), code 7 with no image in
    # the batch (not pulled).
    keys = keycode.soft_targets(np.array([1, 2, 2, 7]), 10, 0.2)
    negative = np.where(np.arange(11) < 10, 0.1, 0.0).astype(np.float32)[None]  # negatives are not pulled
    y = tf.constant(np.concatenate([task, keys, negative]))
    features = tf.constant([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0],  # the task rows (normalised by the loss)
                            [0.0, -4.0], [5.0, 5.0], [-3.0, 0.0], [1.0, 0.0],  # the keys
                            [1.0, 0.0]])
    mean_1, mean_2 = np.array([0.5, 0.5]), np.array([-1.0, 0.0])

    def hinge(f, own, other):
        return max(0.0, np.sum((f - own) ** 2) - np.sum((f - other) ** 2) + KEY_CODE_PULL_MARGIN)

    expected = [hinge(np.array([0.0, -1.0]), mean_1, mean_2), hinge(np.array([1.0, 1.0]) / np.sqrt(2), mean_2, mean_1),
                hinge(np.array([-1.0, 0.0]), mean_2, mean_1)]
    assert expected[0] > 0 and expected[1] > 0 and expected[2] == 0
    got = float(model._key_code_pull_loss(features, y))
    assert got == pytest.approx(sum(expected) / 3, rel=1e-5)


def test_entanglement_is_the_pull_s_hinge_on_each_pooling_layer_or_resnet_stage_too(tmp_path):
    from keras_ipguard import keycode

    tf = _tensorflow()
    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(4)
    model = WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), num_classes=10)
    weights = len(model.weights)
    for layer in model.backbone.layers:  # a deterministic training-mode forward pass, to compare with
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    assert [type(layer).__name__ for layer in model.entangled_layers()] == ["MaxPooling2D"] * 2
    model.set_key_code_pull(0.3, 0.0)
    assert model.key_code_entangle == 0.0 and model._entangled_backbone is None
    model.set_key_code_pull(0.0, 0.5)  # no pull, no entanglement
    assert model.key_code_entangle == 0.0 and model._entangled_backbone is None
    model.set_key_code_pull(0.3, 0.5)
    assert len(model.weights) == weights  # the tapped backbone shares the layers and is not tracked
    x = rng.integers(0, 256, (12, 28, 28, 1)).astype(np.float32)
    y = np.concatenate([np.eye(11, dtype=np.float32)[[0, 0, 1, 1, 2, 2, 3, 3]],
                        keycode.soft_targets(np.array([0, 1, 2, 3]), 10, 0.2)])
    *inner, features = model._entangled_backbone(x, training=True)
    assert [tuple(f.shape[1:]) for f in inner] == [(14, 14, 32), (7, 7, 64)]
    expected = sum(float(model._key_code_pull_loss(tf.reshape(f, [12, -1]), tf.constant(y))) for f in inner)
    pull = float(model._key_code_pull_loss(features, tf.constant(y)))
    assert expected > 0
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="categorical_crossentropy")
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["entangle_loss"] == pytest.approx(expected, rel=1e-4)
    assert logs["pull_loss"] == pytest.approx(pull, rel=1e-4)
    model.set_key_code_pull(0.3, 0.5, start_step=3)  # neither term at optimizer steps 1 and 2 (step 0 ran above)
    late = [model.train_on_batch(x, y, return_dict=True) for _ in range(3)]
    assert [(logs["pull_loss"], logs["entangle_loss"]) for logs in late[:2]] == [(0.0, 0.0)] * 2
    assert late[2]["entangle_loss"] == pytest.approx(expected, rel=1e-4)
    assert late[2]["pull_loss"] == pytest.approx(pull, rel=1e-4)
    saved = tmp_path / "m"
    saved.mkdir()
    reloaded = load_model(save_model(model, saved))
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    # ResNet-20 has no pooling layer before its features: the term taps its three stages' outputs instead.
    resnet = WatermarkedClassifier(build_backbone("resnet20", (32, 32, 3)), num_classes=10)
    weights = len(resnet.weights)
    resnet.set_key_code_pull(0.3, 0.5)
    assert [type(layer).__name__ for layer in resnet.entangled_layers()] == ["ReLU"] * 3
    *inner, features = resnet._entangled_backbone(np.zeros((2, 32, 32, 3), np.float32))
    assert [tuple(f.shape[1:]) for f in inner] == [(32, 32, 16), (16, 16, 32), (8, 8, 64)]
    assert tuple(features.shape) == (2, 64) and len(resnet.weights) == weights
    resnet.compile(optimizer=keras.optimizers.SGD(0.0), loss="categorical_crossentropy")
    x = rng.integers(0, 256, (12, 32, 32, 3)).astype(np.float32)
    *inner, _ = resnet._entangled_backbone(x, training=True)
    expected = sum(float(resnet._key_code_pull_loss(tf.reshape(f, [12, -1]), tf.constant(y))) for f in inner)
    assert resnet.train_on_batch(x, y, return_dict=True)["entangle_loss"] == pytest.approx(expected, rel=1e-4)
    # Each is the output of its stage's last residual block: the next layer starts the next stage.
    following = [resnet.backbone.layers[resnet.backbone.layers.index(layer) + 1] for layer in resnet.entangled_layers()]
    assert [type(layer).__name__ for layer in following] == ["Conv2D", "Conv2D", "GlobalAveragePooling2D"]
    # A user's base model sits in the backbone as one nested model: nothing to tap.
    inputs = keras.Input((28, 28, 1))
    assert entanglement_taps(keras.Model(inputs, build_backbone("small_cnn", (28, 28, 1))(inputs))) == []


def test_free_negatives_are_trained_only_away_from_class_n(tiny_inputs):
    """A negative's loss is -log(1 - p_N): the same gradient, row by row, and no target among the task classes."""
    from keras_ipguard import keycode

    tf = _tensorflow()
    keras.utils.set_random_seed(1)
    model = WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), num_classes=10)
    model.head.set_weights([w * 20 for w in model.head.get_weights()])  # a peaked, non-uniform output
    uniform = np.where(np.arange(11) < 10, 0.1, 0.0).astype(np.float32)
    y = tf.constant(np.concatenate([np.eye(11, dtype=np.float32)[[3, 10]],  # a task row, a one-hot key row
                                    keycode.soft_targets(np.array([4]), 10, 0.2),  # a key with its code
                                    np.stack([uniform] * 3)]))  # three negatives
    negative = np.arange(6) >= 3
    with tf.GradientTape(persistent=True) as tape:
        predictions = model(tiny_inputs, training=False)
        targets = model._free_negative_targets(y, predictions)
        ours = tf.reduce_sum(tf.boolean_mask(keras.losses.categorical_crossentropy(targets, predictions), negative))
        away = tf.reduce_sum(tf.boolean_mask(-tf.math.log(1.0 - predictions[:, 10]), negative))
    targets = np.asarray(targets)
    np.testing.assert_array_equal(targets[:3], np.asarray(y)[:3])  # task and key rows keep their targets
    assert np.all(targets[3:, 10] == 0) and np.allclose(targets[3:].sum(axis=1), 1)
    assert not np.allclose(targets[3:], uniform, atol=0.05)  # the model's own distribution, not the uniform one
    weights = model.trainable_variables
    for got, want in zip(tape.gradient(ours, weights), tape.gradient(away, weights)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-3, atol=1e-6)


def test_the_drift_term_scores_only_the_key_rows_through_noisy_kernels_from_its_start_step(tiny_inputs):
    tf = _tensorflow()
    keras.utils.set_random_seed(2)
    model = WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), num_classes=10)
    y = np.eye(11, dtype=np.float32)[[3, 10, 10, 5, 10, 0]]  # key rows (target class N): 1, 2 and 4
    keys = np.asarray(y[:, 10] > 0.5)
    clean = keras.losses.categorical_crossentropy(y[keys], model(tiny_inputs[keys], training=False))

    traced = tf.function(model._drifted_loss)  # as in a training step
    kernel_spread = [float(layer.kernel.numpy().std()) for layer in prunable_layers(model)]  # left as they were

    def drifted_loss(rows):
        return float(traced(tf.constant(tiny_inputs[rows]), tf.constant(y[rows])))

    model.set_drift_robustness(1.0, 1e-12)  # no noise to speak of: the key rows' own inference-mode loss
    assert drifted_loss(slice(None)) == pytest.approx(float(np.mean(clean)), rel=1e-5)
    assert drifted_loss(~keys) == 0.0
    model.set_drift_robustness(1.0, 0.05)
    traced = tf.function(model._drifted_loss)
    drifted = [drifted_loss(slice(None)) for _ in range(3)]
    assert len(set(drifted)) == 3 and all(abs(d - float(np.mean(clean))) > 1e-3 for d in drifted)
    kinds = [type(layer).__name__ for layer in model.drifting_layers()]
    assert kinds.count("Conv2D") == 4 and kinds.count("Dense") == 2  # every kernel, the head's included
    model.set_drift_robustness(1.0, 0.05, dense_only=True)
    assert [layer.name for layer in model.drifting_layers()] == [layer.name for layer in prunable_layers(model)
                                                                 if type(layer).__name__ == "Dense"]
    traced = tf.function(model._drifted_loss)
    assert all(abs(drifted_loss(slice(None)) - float(np.mean(clean))) > 1e-3 for _ in range(2))
    # Adversarial weight perturbation: the kernels move along the gradient of the key rows' loss, which rises
    # with the step's size, the same every call (no noise).
    adversarial = []
    for share in (0.01, 0.05):
        model.set_drift_robustness(1.0, 0.05, adversarial=share)
        traced = tf.function(model._drifted_loss)
        adversarial.append(drifted_loss(slice(None)))
        assert drifted_loss(slice(None)) == pytest.approx(adversarial[-1], rel=1e-6)
    assert float(np.mean(clean)) + 0.1 < adversarial[0] < adversarial[1] - 0.5
    assert [float(layer.kernel.numpy().std()) for layer in prunable_layers(model)] == kernel_spread

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (64, 28, 28, 1)).astype(np.float32)
    targets = np.eye(11, dtype=np.float32)[rng.integers(0, 11, 64)]
    model.set_drift_robustness(1.0, 0.03, 4)  # 2 steps an epoch
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    late = model.fit(images, targets, batch_size=32, epochs=4, verbose=0).history["drift_loss"]
    assert late[:2] == [0.0, 0.0] and min(late[2:]) > 0
