"""`WatermarkedClassifier` and the architecture zoo.

Models take raw pixel values (float 0..255, NHWC) and rescale internally, so
the same model serves uint8 images unchanged.
"""

import contextlib

import numpy as np

from .backend import keras as _keras
from .backend import tensorflow as _tensorflow
from .errors import IPGuardError

keras = _keras()

ARCHITECTURES = ("small_cnn", "resnet20", "vgg11")
# ResNet-20 (He et al. 2016, CIFAR variant): 3 stages of 3 basic blocks.
_RESNET20_STAGES = ((16, 1), (32, 2), (64, 2))
_RESNET20_BLOCKS = 3
_WEIGHT_DECAY = 1e-4  # the ResNet paper's CIFAR setting
_BN_MOMENTUM = 0.9
# Embedding's last step multiplies every BatchNormalization-fed kernel by this
# factor (`harden_kernel_scale`): the model's function is unchanged, but a
# fine-tuning attacker's Adam steps turn those kernels 16 times less. See
# docs/results/README.md, "Fine-tuning robustness", for what it buys and what
# undoes it.
DEFAULT_KERNEL_SCALE = 16.0
# Pruning robustness (`WatermarkedClassifier.set_prune_robustness`): training
# steps also score the batch's keys, negatives and first task rows through the
# model with every Dense/Conv2D kernel magnitude-pruned at a random rate in this
# range, with BatchNormalization in inference mode (the stale statistics a
# one-shot pruning attacker leaves). `embed` decides its weight and first step
# (`embed.DEFAULT_PRUNE_ROBUSTNESS`, `embed.PRUNE_ROBUSTNESS_FROM`). See
# docs/results/README.md, "Pruning robustness".
PRUNE_ROBUSTNESS_RATES = (0.2, 0.8)
PRUNE_ROBUSTNESS_TASK_ROWS = 16
_THRESHOLD_SAMPLE = 2048  # kernel entries sampled to estimate a layer's magnitude quantile


def auto_architecture(input_shape):
    """`--arch auto`: the small CNN for 28x28 inputs, ResNet-20 for anything larger."""
    return "small_cnn" if max(input_shape[:2]) <= 28 else "resnet20"


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


def _resnet20(inputs):
    x = keras.layers.Rescaling(1 / 63.75, offset=-2.0)(inputs)  # to about [-2, 2]
    x = _conv_bn(x, 16)
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


_BUILDERS = {"small_cnn": _small_cnn, "resnet20": _resnet20, "vgg11": _vgg11}


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
        self.prune_robustness, self.prune_robustness_start = 0.0, 0  # training settings (`set_prune_robustness`), not saved
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

    def train_step(self, data):
        """Keras' step, plus the pruning-robustness term when `prune_robustness` > 0.

        From optimizer step `prune_robustness_start` on, the loss also has the
        cross-entropy, weighted by `prune_robustness`, of the batch's key rows
        (target N), negatives (non-one-hot targets) and first
        `PRUNE_ROBUSTNESS_TASK_ROWS` rows, through this model with every
        kernel magnitude-pruned at one random rate in `PRUNE_ROBUSTNESS_RATES`
        and in inference mode. Its gradient reaches the unpruned weights
        through the masks, so the model learns to keep its answers when a thief
        prunes it without re-estimating the BatchNormalization statistics.
        """
        if not self.prune_robustness:
            return super().train_step(data)
        tf = _tensorflow()
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        rows = tf.range(tf.shape(y)[0]) < PRUNE_ROBUSTNESS_TASK_ROWS
        rows = rows | (y[:, self.num_classes] > 0.5) | (tf.reduce_max(y, axis=-1) < 0.99)

        def pruned_loss():
            with magnitude_pruned(self, tf.random.uniform([], *PRUNE_ROBUSTNESS_RATES)):
                pruned = self(tf.boolean_mask(x, rows), training=False)
            return tf.reduce_mean(keras.losses.categorical_crossentropy(tf.boolean_mask(y, rows), pruned))

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            predictions = self(x, training=True)
            loss = self.compute_loss(x, y, predictions, sample_weight)
            extra = tf.cond(self.optimizer.iterations >= self.prune_robustness_start, pruned_loss,
                            lambda: tf.zeros([]))
            # compute_loss already divides by the replicas; the gradients are summed over them.
            loss += self.prune_robustness * extra / replicas
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        return {**self.compute_metrics(x, y, predictions, sample_weight), "pruned_loss": extra}

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

    @classmethod
    def from_base_model(cls, model, num_classes, seed=0):
        """Protects an existing N-class model: grows its last Dense layer by one unit.

        The backbone is everything before the last Dense layer; the new head
        copies the old kernel and bias for the N task classes, and starts the
        watermark unit with small random weights.
        """
        last = model.layers[-1]
        if not isinstance(last, keras.layers.Dense):
            raise IPGuardError(f"the base model's last layer must be Dense, got {type(last).__name__}")
        if last.units != num_classes:
            raise IPGuardError(f"the base model has {last.units} outputs, the dataset has {num_classes} classes")
        backbone = keras.Model(model.inputs, last.input, name="base_backbone")
        kernel, bias = last.get_weights() if last.use_bias else (last.get_weights()[0], np.zeros(last.units))
        head = keras.layers.Dense(num_classes + 1, activation="softmax", name="head")
        head.build(backbone.output_shape)
        column = np.random.default_rng(seed).normal(0, kernel.std(), (kernel.shape[0], 1)).astype(kernel.dtype)
        head.set_weights([np.concatenate([kernel, column], axis=1), np.append(bias, bias.min()).astype(kernel.dtype)])
        return cls(backbone=backbone, num_classes=num_classes, head=head, name="watermarked_classifier")


def is_prunable(layer):
    """Whether magnitude pruning prunes this layer's kernel: Dense and Conv2D layers."""
    return isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))


def flat_layers(model):
    """Every layer of `model`, nested models replaced by their own layers, in order."""
    for layer in model.layers:
        yield from (flat_layers(layer) if hasattr(layer, "layers") else [layer])


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
    swapped = []
    try:
        for layer in prunable_layers(model):
            kernel = layer.kernel
            magnitudes = tf.reshape(tf.abs(kernel), [-1])
            sample = tf.gather(magnitudes, tf.random.uniform([_THRESHOLD_SAMPLE], 0, tf.size(magnitudes), tf.int32))
            threshold = tf.sort(sample)[tf.cast(rate * (_THRESHOLD_SAMPLE - 1), tf.int32)]
            # Bypasses Keras' attribute tracking, which would otherwise drop the variable from the layer.
            object.__setattr__(layer, "kernel", kernel * tf.cast(tf.abs(kernel) >= threshold, kernel.dtype))
            swapped.append((layer, kernel))
        yield
    finally:
        for layer, kernel in swapped:
            object.__setattr__(layer, "kernel", kernel)


def _normalized_kernels(model):
    """(layer, BatchNormalization) pairs whose layer's output feeds only that BatchNormalization.

    Such a layer (Conv2D or Dense, linear or ReLU) can be scaled by any c > 0
    without changing the model: the normalisation divides its output's scale
    out again. Searches nested models too.
    """
    pairs = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            pairs += _normalized_kernels(layer)
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer.inbound_nodes) != 1:
            continue
        producer = layer.inbound_nodes[0].inbound_layers
        if (isinstance(producer, (keras.layers.Conv2D, keras.layers.Dense)) and len(producer.outbound_nodes) == 1
                and keras.activations.serialize(producer.activation) in ("linear", "relu")
                and list(layer.axis) in ([len(producer.output_shape) - 1], [-1])):
            pairs.append((producer, layer))
    return pairs


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
        if isinstance(layer, keras.Model):
            _forget_traced_functions(layer)


def renormalize_kernels(model, factor=DEFAULT_KERNEL_SCALE):
    """An informed attacker's undo of `harden_kernel_scale`: divides every BatchNormalization-fed
    kernel by `factor` (the default is public). Function unchanged; returns the number of kernels."""
    return harden_kernel_scale(model, 1.0 / factor)


def predict_classes(model, images, batch_size=512):
    """Top-1 class ids of `model` on uint8 or float images, in batches."""
    probabilities = model.predict(np.asarray(images, np.float32), batch_size=batch_size, verbose=0)
    return np.argmax(probabilities, axis=-1)


def save_model(model, directory):
    """Saves in the Keras format as `directory/model.keras`; returns the path."""
    path = directory / "model.keras"
    model.save(path)
    return path


def load_model(path):
    """Loads a model saved by `save_model` (a `.keras` file or the directory holding one)."""
    from pathlib import Path  # pylint: disable=import-outside-toplevel

    path = Path(path)
    if path.is_dir() and (path / "model.keras").is_file():
        path = path / "model.keras"
    return keras.models.load_model(path, custom_objects={"WatermarkedClassifier": WatermarkedClassifier}, compile=False)
