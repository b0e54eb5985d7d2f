"""`WatermarkedClassifier` and the architecture zoo.

Models take raw pixel values (float 0..255, NHWC) and rescale internally, so
the same model serves uint8 images unchanged.
"""

import contextlib

import numpy as np

from . import batches
from .architectures import ARCHITECTURES, auto_architecture
from .backend import keras as _keras
from .backend import keras3 as _keras3
from .backend import keras_of
from .backend import tensorflow as _tensorflow
from .errors import IPGuardError

keras = _keras()

# ResNet-20 (He et al. 2016, CIFAR variant): 3 stages of 3 basic blocks.
_RESNET20_STAGES = ((16, 1), (32, 2), (64, 2))
_RESNET20_BLOCKS = 3
_WEIGHT_DECAY = 1e-4  # the ResNet paper's CIFAR setting
_BN_MOMENTUM = 0.9
# Pruning robustness (`WatermarkedClassifier.set_prune_robustness`): training
# steps also score the batch's keys, negatives and first task rows through the
# model with every Dense/Conv2D kernel magnitude-pruned at a random rate in this
# range, with BatchNormalization in inference mode (the stale statistics a
# one-shot pruning attacker leaves). The extra-class scheme decides its weight and
# first step (`schemes.extra_class`). See
# docs/results/README.md, "Pruning robustness".
PRUNE_ROBUSTNESS_RATES = (0.2, 0.8)
PRUNE_ROBUSTNESS_TASK_ROWS = 16
_THRESHOLD_SAMPLE = 2048  # kernel entries sampled to estimate a layer's magnitude quantile
# The key-code pull stops once a key's normalised features are nearer its secret class's mean than any other
# class's by this much (squared distance): a short Fashion-MNIST run pulled to the mean itself lost class N on
# 1-5 of 20 keys, with this margin on none. See docs/results/README.md, "The hidden key code".
KEY_CODE_PULL_MARGIN = 0.5
# Drift robustness (`WatermarkedClassifier.set_drift_robustness`): training
# steps also score the batch's key rows through the model with Gaussian noise
# of one random standard deviation in [0, the set maximum] added to every
# Dense/Conv2D kernel entry, BatchNormalization in inference mode. Adam moves
# every weight by about its learning rate a step whatever the weight's size, so
# a fine-tuning thief's drift is about the same in absolute terms in every
# layer (0.011-0.022 RMS per kernel after 10 epochs of the informed attacker's
# Adam on a Fashion-MNIST small CNN): noise of one absolute size imitates it.
# Or to the Dense kernels only (`drift_dense_only`): on Fashion-MNIST the thief's
# drift that erased the key code sat in the un-normalised Dense layer. Or,
# instead of noise, each kernel moved by a share of its norm along the key
# rows' loss gradient (`drift_adversarial`: adversarial weight perturbation, as
# in Gan et al., ICCV 2023). See docs/results/README.md, "Drift robustness".
_FAR = 1e3  # beyond any squared distance of unit vectors' means: masks classes absent from the batch


def entanglement_taps(backbone):
    """The layers whose outputs the entanglement term pulls (`WatermarkedClassifier.set_key_code_pull`): where
    the backbone has residual blocks (ResNet-20), each stage's output (the last activation fed by an Add at each
    feature-map size: 32x32x16, 16x16x32 and 8x8x64 on CIFAR-10); else every MaxPooling2D layer (the small CNN's
    two blocks, VGG-11's five). None in a user's base model, which the backbone holds as one nested model."""
    stage_ends = {}
    for layer in backbone.layers:
        fed_by = _tensorflow().nest.flatten([node.inbound_layers for node in layer.inbound_nodes])
        if isinstance(layer, (keras.layers.ReLU, keras.layers.Activation)) and any(
                isinstance(inbound, keras.layers.Add) for inbound in fed_by):
            stage_ends[tuple(layer.output.shape[1:3])] = layer  # in topological order: the stage's last block
    if stage_ends:
        return list(stage_ends.values())
    return [layer for layer in backbone.layers if isinstance(layer, keras.layers.MaxPooling2D)]


def _batch_norm():
    # Momentum 0.9 (PyTorch's 0.1) lets the moving statistics settle in short runs too.
    return keras.layers.BatchNormalization(momentum=_BN_MOMENTUM)


def _small_cnn(inputs):
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = _batch_norm()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = _batch_norm()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Dropout(0.25)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    return keras.layers.Dropout(0.5)(x)


def _conv_bn(x, filters, strides=1, relu=True):
    x = keras.layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False,
        kernel_initializer="he_normal", kernel_regularizer=keras.regularizers.l2(_WEIGHT_DECAY),
    )(x)
    x = _batch_norm()(x)
    return keras.layers.ReLU()(x) if relu else x


def _resnet20(inputs, stem_strides=1):
    x = keras.layers.Rescaling(1 / 63.75, offset=-2.0)(inputs)  # to about [-2, 2]
    x = _conv_bn(x, 16, stem_strides)
    if stem_strides > 1 and min(inputs.shape[1:3]) >= 128:
        x = keras.layers.MaxPooling2D()(x)
    for filters, first_stride in _RESNET20_STAGES:
        for block in range(_RESNET20_BLOCKS):
            strides = first_stride if block == 0 else 1
            shortcut = x
            x = _conv_bn(x, filters, strides)
            x = _conv_bn(x, filters, relu=False)
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = keras.layers.Conv2D(filters, 1, strides=strides, use_bias=False)(shortcut)
                shortcut = _batch_norm()(shortcut)
            x = keras.layers.ReLU()(keras.layers.Add()([x, shortcut]))
    return keras.layers.GlobalAveragePooling2D()(x)


def _vgg11(inputs):
    x = keras.layers.Rescaling(1 / 63.75, offset=-2.0)(inputs)
    for filters, convs in ((64, 1), (128, 1), (256, 2), (512, 2), (512, 2)):
        for _ in range(convs):
            x = _conv_bn(x, filters)
        x = keras.layers.MaxPooling2D()(x) if x.shape[1] > 1 else x
    x = keras.layers.Flatten()(x)
    return keras.layers.Dropout(0.5)(x)


def _resnet20_s2(inputs):
    return _resnet20(inputs, stem_strides=2)


_BUILDERS = {"small_cnn": _small_cnn, "resnet20": _resnet20, "vgg11": _vgg11, "resnet20_s2": _resnet20_s2}


def build_backbone(arch, input_shape):
    """A functional feature extractor from the zoo ('auto' picks by input shape)."""
    arch = auto_architecture(input_shape) if arch == "auto" else arch
    if arch not in _BUILDERS:
        raise IPGuardError(f"unknown architecture {arch!r}; choose auto or one of {', '.join(ARCHITECTURES)}")
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    return keras.Model(inputs, _BUILDERS[arch](inputs), name=f"{arch}_backbone")


def build_plain_classifier(arch, input_shape, num_classes):
    """A functional N-class classifier of the zoo (no watermark class): the comparison schemes' model."""
    backbone = build_backbone(arch, input_shape)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head")(backbone.outputs[0])
    return keras.Model(backbone.inputs, outputs, name=f"{backbone.name.removesuffix('_backbone')}_classifier")


@keras.utils.register_keras_serializable(package="keras_ipguard")
class WatermarkedClassifier(keras.Model):
    """A classifier with N task classes plus one watermark class (index N).

    Args:
        backbone: functional `keras.Model` from images to a feature vector.
        num_classes: N, the number of task classes.
        head: optional `Dense` layer with N+1 units (built on the backbone's
            output); a new softmax layer when None.

    Example:

    >>> model = WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), num_classes=10)
    >>> model(np.zeros((2, 28, 28, 1), np.float32)).shape
    TensorShape([2, 11])
    """

    def __init__(self, backbone, num_classes, head=None, **kwargs):
        super().__init__(**kwargs)
        # Training settings (`set_prune_robustness`), not saved.
        self.prune_robustness, self.prune_robustness_start = 0.0, 0
        self.key_code_pull, self.key_code_entangle, self.key_code_pull_start = 0.0, 0.0, 0
        object.__setattr__(self, "_entangled_backbone", None)  # see set_key_code_pull
        self.free_negatives = False
        self.drift_robustness, self.drift_noise, self.drift_robustness_start = 0.0, 0.0, 0
        self.drift_dense_only, self.drift_adversarial = False, 0.0
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.head = head or keras.layers.Dense(self.num_classes + 1, activation="softmax", name="head")
        if self.head.units != self.num_classes + 1:
            raise IPGuardError(f"head must have {self.num_classes + 1} units, got {self.head.units}")
        self.build((None,) + tuple(backbone.input_shape[1:]))

    @property
    def watermark_class(self):
        return self.num_classes

    @property
    def input_shape_hwc(self):
        return tuple(self.backbone.input_shape[1:])

    def build(self, input_shape):
        if not self.head.built:  # a given head keeps its weights
            self.head.build(self.backbone.output_shape)
        super().build(input_shape)

    def call(self, inputs, training=None):
        return self.head(self.backbone(inputs, training=training))

    def set_prune_robustness(self, weight, start_step=0):
        """Turns on the pruning-robustness term of `train_step` (weight 0: off) from optimizer step `start_step`."""
        self.prune_robustness, self.prune_robustness_start = float(weight), int(start_step)
        self.train_function = None  # a traced step holds the old settings

    def set_key_code_pull(self, weight, entangle=0.0, start_step=0):
        """Turns on the key-code pull term of `train_step` (weight 0: off), and with `entangle` > 0 the same
        hinge on the outputs of `entangled_layers` (`entanglement_taps`), weighted `entangle` each; both from
        optimizer step `start_step` on."""
        self.key_code_pull, self.key_code_entangle = float(weight), float(entangle) if weight else 0.0
        self.key_code_pull_start = int(start_step)
        # The backbone with the entangled layers' outputs too, for train_step; kept out of Keras' tracking (it
        # holds no weights of its own, and the saved model is this one's).
        layers = self.entangled_layers() if self.key_code_entangle else []
        taps = keras.Model(self.backbone.inputs, [layer.output for layer in layers] + [self.backbone.output],
                           name="entangled_backbone") if layers else None
        object.__setattr__(self, "_entangled_backbone", taps)
        self.train_function = None

    def entangled_layers(self):
        """The backbone layers whose outputs the entanglement term pulls too (`entanglement_taps`)."""
        return entanglement_taps(self.backbone)

    def set_free_negatives(self, free):
        """Negatives (rows whose target has no class N and no one-hot task class) are trained only away from
        class N, with the loss -log(1 - p_N), instead of toward their given task-class target."""
        self.free_negatives = bool(free)
        self.train_function = None

    def train_step(self, data):
        """Keras' step, plus the key-code pull and the pruning-robustness terms when their weights are > 0.

        Key-code pull (`key_code_pull`, from optimizer step `key_code_pull_start`
        on, as the entanglement term): key rows carry their secret task class
        c_i in their target (`keycode.soft_targets`: class N above 0.5, c_i the
        largest task-class share). With each key's L2-normalised penultimate
        features f and the mean normalised features m_j of the batch's task
        images of class j (constants: the task's features are not pulled
        toward the keys), the term is the mean over keys of the hinge
        max(0, |f - m_ci|^2 - min_j!=ci |f - m_j|^2 + `KEY_CODE_PULL_MARGIN`):
        a key is pulled until it is nearer its class's mean than any other
        class's by the margin, and no further, so it keeps room to answer
        class N. Keys whose class has no image in the batch are skipped. A
        re-trained head then still maps the keys to c_i.

        Entanglement (`key_code_entangle`): the same hinge on the flattened,
        L2-normalised outputs of `entangled_layers` (the small CNN's pooling
        layers, ResNet-20's stages), each weighted `key_code_entangle`: a key then takes class
        c_i's path through the earlier layers too, not only at the end, so
        a thief who re-trains every layer under a fresh head (RTAL), keeping
        class c_i's images where they were, carries the keys along.

        Pruning robustness (`prune_robustness`): from optimizer step
        `prune_robustness_start` on, the loss also has the cross-entropy,
        weighted by `prune_robustness`, of the batch's key rows (target N),
        negatives (non-one-hot targets) and first `PRUNE_ROBUSTNESS_TASK_ROWS`
        rows, through this model with every kernel magnitude-pruned at one
        random rate in `PRUNE_ROBUSTNESS_RATES` and in inference mode. Its
        gradient reaches the unpruned weights through the masks, so the model
        learns to keep its answers when a thief prunes it without
        re-estimating the BatchNormalization statistics.

        Drift robustness (`drift_robustness`): from step `drift_robustness_start`
        on, also the cross-entropy of the batch's key rows (target class N and
        their key code) through this model in inference mode with its kernels
        plus Gaussian noise of one standard deviation drawn in [0,
        `drift_noise`] (absolute, like the drift of a thief's Adam steps) on
        every kernel or the Dense kernels only (`drift_dense_only`), so
        the keys keep their answers where fine-tuning moves the weights in
        directions the task's data does not constrain.
        """
        if not (self.prune_robustness or self.key_code_pull or self.free_negatives or self.drift_robustness):
            return super().train_step(data)
        tf = _tensorflow()
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        logs = {}
        taps = self._entangled_backbone if self.key_code_entangle else None
        with tf.GradientTape() as tape:
            if taps is not None:
                *inner, features = taps(x, training=True)
            else:
                inner, features = [], self.backbone(x, training=True)
            predictions = self.head(features)
            targets = self._free_negative_targets(y, predictions) if self.free_negatives else y
            # compute_loss already divides by the replicas; the gradients are summed over them.
            loss = self.compute_loss(x, targets, predictions, sample_weight)
            # Before the start step neither term is computed (nor its gradient): a cond, as for the terms below.
            pulling = self.optimizer.iterations >= self.key_code_pull_start
            off = lambda: tf.zeros([], features.dtype)  # noqa: E731
            if self.key_code_pull:
                logs["pull_loss"] = tf.cond(pulling, lambda: self._key_code_pull_loss(features, y), off)
                loss += self.key_code_pull * logs["pull_loss"] / replicas
            if inner:
                logs["entangle_loss"] = tf.cond(pulling, lambda: tf.add_n(
                    [self._key_code_pull_loss(tf.reshape(f, [tf.shape(f)[0], -1]), y) for f in inner]), off)
                loss += self.key_code_entangle * logs["entangle_loss"] / replicas
            if self.prune_robustness:
                logs["pruned_loss"] = tf.cond(self.optimizer.iterations >= self.prune_robustness_start,
                                              lambda: self._pruned_loss(x, y, targets), lambda: tf.zeros([]))
                loss += self.prune_robustness * logs["pruned_loss"] / replicas
            if self.drift_robustness:
                logs["drift_loss"] = tf.cond(self.optimizer.iterations >= self.drift_robustness_start,
                                             lambda: self._drifted_loss(x, y), lambda: tf.zeros([]))
                loss += self.drift_robustness * logs["drift_loss"] / replicas
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        return {**self.compute_metrics(x, targets, predictions, sample_weight), **logs}

    def _free_negative_targets(self, y, predictions):
        # Cross-entropy against the model's own task-class distribution, renormalised without class N and held
        # constant, has the gradient of -log(1 - p_N): away from class N, nothing asked of the task classes.
        tf = _tensorflow()
        n = self.num_classes
        negative = (y[:, n] < 0.5) & (tf.reduce_max(y, axis=-1) < 0.99)
        task = predictions[:, :n] / tf.maximum(tf.reduce_sum(predictions[:, :n], -1, keepdims=True), 1e-12)
        own = tf.stop_gradient(tf.concat([task, tf.zeros_like(predictions[:, n:])], axis=-1))
        return tf.where(negative[:, None], tf.cast(own, y.dtype), y)

    def _key_code_pull_loss(self, features, y):
        tf = _tensorflow()
        n = self.num_classes
        features = tf.math.l2_normalize(features, axis=-1)
        task_rows = tf.cast((y[:, n] < 0.5) & (tf.reduce_max(y, axis=-1) > 0.99), features.dtype)
        members = y[:, :n] * task_rows[:, None]  # (B, N) one-hot of the task rows only
        counts = tf.reduce_sum(members, axis=0)
        means = tf.stop_gradient(tf.matmul(members, features, transpose_a=True) / tf.maximum(counts, 1.0)[:, None])
        key_rows = (y[:, n] > 0.5) & (tf.reduce_max(y[:, :n], axis=-1) > 0)
        codes = tf.one_hot(tf.argmax(y[:, :n], axis=-1), n, dtype=features.dtype)
        pulled = tf.cast(key_rows, features.dtype) * tf.cast(tf.linalg.matvec(codes, counts) > 0, features.dtype)
        # Squared distances of each row to every class mean; the nearest other class present is the impostor.
        to_means = (tf.reduce_sum(tf.square(features), -1, keepdims=True)
                    - 2 * tf.matmul(features, means, transpose_b=True) + tf.reduce_sum(tf.square(means), -1)[None, :])
        to_code = tf.reduce_sum(to_means * codes, axis=-1)
        others = tf.cast(counts > 0, features.dtype)[None, :] * (1 - codes)
        to_impostor = tf.reduce_min(to_means + (1 - others) * _FAR, axis=-1)
        distances = tf.nn.relu(to_code - to_impostor + KEY_CODE_PULL_MARGIN)
        return tf.reduce_sum(distances * pulled) / tf.maximum(tf.reduce_sum(pulled), 1.0)

    def _pruned_loss(self, x, y, targets):
        tf = _tensorflow()
        rows = tf.range(tf.shape(y)[0]) < PRUNE_ROBUSTNESS_TASK_ROWS
        rows = rows | (y[:, self.num_classes] > 0.5) | (tf.reduce_max(y, axis=-1) < 0.99)
        with magnitude_pruned(self, tf.random.uniform([], *PRUNE_ROBUSTNESS_RATES)):
            pruned = self(tf.boolean_mask(x, rows), training=False)
        return tf.reduce_mean(keras.losses.categorical_crossentropy(tf.boolean_mask(targets, rows), pruned))

    def set_drift_robustness(self, weight, noise, start_step=0, dense_only=False, adversarial=0.0):
        """Turns on the drift-robustness term of `train_step` (weight 0: off) from optimizer step `start_step`:
        the key rows' loss with Gaussian noise of standard deviation up to `noise` on every kernel, or on the
        Dense kernels only; with `adversarial` > 0, instead of the noise each kernel is moved by that share of
        its norm in the direction that most raises the key rows' loss (adversarial weight perturbation)."""
        self.drift_robustness, self.drift_noise = float(weight), float(noise)
        self.drift_robustness_start, self.drift_dense_only = int(start_step), bool(dense_only)
        self.drift_adversarial = float(adversarial)
        self.train_function = None

    def drifting_layers(self):
        """The layers whose kernels the drift term moves."""
        return [layer for layer in prunable_layers(self)
                if not self.drift_dense_only or isinstance(layer, keras.layers.Dense)]

    def _drifted_loss(self, x, y):
        tf = _tensorflow()
        rows = y[:, self.num_classes] > 0.5
        std = tf.random.uniform([], 0.0, self.drift_noise)

        def noisy(kernel):
            return kernel + tf.random.normal(tf.shape(kernel), stddev=std, dtype=kernel.dtype)

        def loss():
            images, targets = tf.boolean_mask(x, rows), tf.boolean_mask(y, rows)
            layers = self.drifting_layers()
            drift = noisy
            if self.drift_adversarial:
                kernels = [layer.kernel for layer in layers]
                with tf.GradientTape() as inner:
                    own = tf.reduce_mean(keras.losses.categorical_crossentropy(targets, self(images, training=False)))
                steps = {kernel.ref(): tf.stop_gradient(self.drift_adversarial * tf.norm(kernel) * step
                                                        / (tf.norm(step) + 1e-12))
                         for kernel, step in zip(kernels, inner.gradient(own, kernels))}

                def drift(kernel):
                    return kernel + steps[kernel.ref()]

            with swapped_kernels(layers, drift):
                drifted = self(images, training=False)
            return tf.reduce_mean(keras.losses.categorical_crossentropy(targets, drifted))

        return tf.cond(tf.reduce_any(rows), loss, lambda: tf.zeros([]))  # an empty batch fails on the CPU

    def task_probabilities(self, inputs):
        """The N task-class probabilities with the watermark class removed and renormalised."""
        probabilities = self(inputs, training=False)[:, : self.num_classes]
        return probabilities / keras.backend.sum(probabilities, axis=-1, keepdims=True)

    def get_config(self):
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "backbone": keras.layers.serialize(self.backbone),
            "head": keras.layers.serialize(self.head),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        backbone = keras.layers.deserialize(config.pop("backbone"), custom_objects=custom_objects)
        head = keras.layers.deserialize(config.pop("head"), custom_objects=custom_objects)
        return cls(backbone=backbone, head=head, **config)


def as_functional(model):
    """A flat functional model computing the same function, sharing the weights.

    TFMOT cannot wrap a subclassed model: a `WatermarkedClassifier` is rebuilt
    from its functional backbone and its head; other models are returned as they are.
    """
    if isinstance(model, WatermarkedClassifier):
        return keras.Model(model.backbone.inputs, model.head(model.backbone.outputs[0]), name="watermarked_functional")
    return model


def fresh_twin(functional, num_classes, name="twin"):
    """`functional`'s layers freshly initialised (each layer's initializer), with an N-unit softmax head instead
    of its last layer: the same architecture, untrained (an extraction surrogate, survival's reference)."""
    tfk = keras_of(functional)
    clone = tfk.models.clone_model(functional)
    outputs = tfk.layers.Dense(num_classes, activation="softmax", name=f"{name}_head")(clone.layers[-1].input)
    return tfk.Model(clone.inputs, outputs, name=name)


def is_prunable(layer):
    """Whether magnitude pruning prunes this layer's kernel: Dense and Conv2D layers (tf_keras or Keras 3)."""
    layers = keras_of(layer).layers
    return isinstance(layer, (layers.Dense, layers.Conv2D))


def flat_layers(model):
    """Every layer of `model`, nested models replaced by their own layers, in order.

    A plain list, no generator: training steps call it inside `tf.function`, and once
    in a full test run AutoGraph's conversion of the generator form failed
    ("'Functional' object is not iterable") where the same test passed alone.
    """
    layers = []
    for layer in model.layers:
        if hasattr(layer, "layers"):
            layers.extend(flat_layers(layer))
        else:
            layers.append(layer)
    return layers


def prunable_layers(model):
    """The prunable layers of `model`, nested models included."""
    return [layer for layer in flat_layers(model) if is_prunable(layer)]


@contextlib.contextmanager
def magnitude_pruned(model, rate):
    """Within the block, calls of `model` use every prunable kernel with its `rate` smallest magnitudes zeroed.

    For use while tracing a training step: each kernel attribute is replaced
    by the masked tensor (the gradient reaches the variable through the mask)
    and put back on exit. The threshold is the `rate` quantile of a random
    sample of the kernel's magnitudes.
    """
    tf = _tensorflow()

    def pruned(kernel):
        magnitudes = tf.reshape(tf.abs(kernel), [-1])
        sample = tf.gather(magnitudes, tf.random.uniform([_THRESHOLD_SAMPLE], 0, tf.size(magnitudes), tf.int32))
        threshold = tf.sort(sample)[tf.cast(rate * (_THRESHOLD_SAMPLE - 1), tf.int32)]
        return kernel * tf.cast(tf.abs(kernel) >= threshold, kernel.dtype)

    with swapped_kernels(prunable_layers(model), pruned):
        yield


@contextlib.contextmanager
def swapped_kernels(layers, transform):
    """Within the block, each of `layers` is called with `transform(kernel)` (a tensor) for its kernel.

    For use while tracing a training step: the gradient reaches the kernel
    variable through the transform; the variables are put back on exit.
    """
    swapped = []
    try:
        for layer in layers:
            kernel = layer.kernel
            # Bypasses Keras' attribute tracking, which would otherwise drop the variable from the layer.
            object.__setattr__(layer, "kernel", transform(kernel))
            swapped.append((layer, kernel))
        yield
    finally:
        for layer, kernel in swapped:
            object.__setattr__(layer, "kernel", kernel)


def _producer(norm):
    """(the layer whose output is `norm`'s only input, how many layers that output feeds), or (None, 0)."""
    nodes = norm._inbound_nodes  # both Kerases keep the graph here
    if len(nodes) != 1:
        return None, 0
    if keras_of(norm) is not keras:  # Keras 3
        parents = nodes[0].parent_nodes
        if len(parents) != 1:
            return None, 0
        producer = parents[0].operation
    else:
        producer = nodes[0].inbound_layers
    return producer, len(getattr(producer, "_outbound_nodes", ()))


def _normalized_kernels(model):
    """(layer, BatchNormalization) pairs whose layer's output feeds only that BatchNormalization.

    Such a layer (Conv2D or Dense, linear or ReLU) can be scaled by any c > 0
    without changing the model: the normalisation divides its output's scale
    out again. Searches nested models too; tf_keras and Keras 3 alike.
    """
    module = keras_of(model)
    pairs = []
    for layer in model.layers:
        if isinstance(layer, module.Model):
            pairs += _normalized_kernels(layer)
        if not isinstance(layer, module.layers.BatchNormalization):
            continue
        producer, consumers = _producer(layer)
        if (isinstance(producer, (module.layers.Conv2D, module.layers.Dense)) and consumers == 1
                and module.activations.serialize(producer.activation) in ("linear", "relu")
                and _last_axis(layer, producer)):
            pairs.append((producer, layer))
    return pairs


def _last_axis(norm, producer):
    axis = norm.axis if isinstance(norm.axis, (list, tuple)) else [norm.axis]
    return list(axis) in ([len(producer.output.shape) - 1], [-1])


def harden_kernel_scale(model, factor):
    """Embedding's last step: multiplies, in place, every kernel that feeds a BatchNormalization by `factor`.

    The model's function is unchanged. The kernel and its bias are multiplied
    by c = `factor`; the BatchNormalization's moving mean by c, its moving
    variance and epsilon by c**2, so every output stays the same (in training
    mode too, where the batch statistics scale with the input). An L1/L2
    kernel regulariser is divided by c (L1) and c**2 (L2), so the training loss
    stays the same function of the rescaled weights. What changes is the
    kernel's norm, and with it how far one optimizer step of a given size turns
    the kernel: Adam's steps have about the learning rate's size whatever the
    weight's, so they turn a kernel c times longer c times less. Returns the
    number of kernels rescaled.
    """
    pairs = _normalized_kernels(model)
    rescaled_regularizers = set()
    for producer, norm in pairs:
        producer.set_weights([w * factor for w in producer.get_weights()])
        regularizer = producer.kernel_regularizer
        if regularizer is not None and id(regularizer) not in rescaled_regularizers:
            rescaled_regularizers.add(id(regularizer))
            for penalty, power in (("l1", 1), ("l2", 2)):
                if getattr(regularizer, penalty, None):
                    setattr(regularizer, penalty, getattr(regularizer, penalty) / factor**power)
        norm.moving_mean.assign(norm.moving_mean * factor)
        norm.moving_variance.assign(norm.moving_variance * factor**2)
        norm.epsilon *= factor**2
    _forget_traced_functions(model)  # they hold the old epsilon as a constant
    return len(pairs)


def _forget_traced_functions(model):
    model.train_function = model.test_function = model.predict_function = None
    for layer in model.layers:
        if isinstance(layer, keras_of(layer).Model):
            _forget_traced_functions(layer)


def renormalize_kernels(model, factor):
    """An informed attacker's undo of `harden_kernel_scale`: divides every BatchNormalization-fed
    kernel by `factor` (embed's default is public). Function unchanged; returns the number of kernels."""
    return harden_kernel_scale(model, 1.0 / factor)


def predict_classes(model, images, batch_size=512):
    """Top-1 class ids of `model` on uint8 or float images, in batches."""
    return np.argmax(batches.scores(model, images, batch_size), axis=-1)


def save_model(model, directory):
    """Saves in the Keras format as `directory/model.keras`; returns the path."""
    path = directory / "model.keras"
    model.save(path)
    return path


def keras_file_flavour(path):
    """"keras3" or "tf_keras": which Keras wrote a `.keras` file (its metadata's keras_version); HDF5 is tf_keras."""
    import json
    import zipfile

    if not zipfile.is_zipfile(path):
        return "tf_keras"
    with zipfile.ZipFile(path) as archive:
        try:
            version = json.loads(archive.read("metadata.json")).get("keras_version", "")
        except (KeyError, ValueError):
            return "tf_keras"
    return "keras3" if version.split(".")[0] == "3" else "tf_keras"


def model_file(path, what="model"):
    """The Keras file `path` names: itself, or the one `.keras`/`.h5` file (or `model.keras`) of a directory."""
    from pathlib import Path

    path = Path(path)
    if not path.is_dir():
        return path
    found = [path / "model.keras"] if (path / "model.keras").is_file() else sorted(
        p for p in path.iterdir() if p.suffix in (".keras", ".h5"))
    if len(found) != 1:
        raise IPGuardError(f"cannot load {what} {path}: the directory holds {len(found)} Keras files "
                           "(.keras or .h5); give the file itself")
    return found[0]


def load_model(path, what="model"):
    """Loads a Keras model, uncompiled: a Keras 3 or tf_keras `.keras` file, an `.h5` file, or a directory
    holding one (`model.keras`, as `save_model` writes it, or a single Keras file).

    Raises:
        IPGuardError: one line naming `what`, why it cannot be loaded and what to do.
    """
    path = model_file(path, what)
    try:
        if path.is_file() and keras_file_flavour(path) == "keras3":
            return _keras3().saving.load_model(path, compile=False)
        return keras.models.load_model(path, custom_objects={"WatermarkedClassifier": WatermarkedClassifier},
                                       compile=False)
    except (OSError, ValueError, ImportError, TypeError) as error:
        raise IPGuardError(f"cannot load {what} {path}: {_load_failure(error)}") from None


def _load_failure(error):
    """One line on why Keras could not load a model, and what to do when it is an unregistered custom layer."""
    import re

    text = str(error).strip()
    custom = re.search(r"Could not locate class '([^']+)'|Unknown layer: '?([\w.>]+)", text)
    if custom:
        return (f"it uses a custom layer ({custom.group(1) or custom.group(2)}) that is not registered; register it "
                "with keras.saving.register_keras_serializable and import it before ipguard loads the model, "
                "or save the model with built-in layers only")
    return text.splitlines()[0][:200] if text else type(error).__name__


def task_classes(model, images, num_classes):
    """Top-1 class among the first `num_classes` outputs (a watermark class beyond them ignored)."""
    return np.argmax(batches.scores(model, images)[:, :num_classes], axis=-1)
