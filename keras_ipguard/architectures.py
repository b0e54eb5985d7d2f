"""The architecture zoo's names and `--arch auto`'s choice by input size (no TensorFlow: options read it)."""

from .errors import IPGuardError

# resnet20_s2: ResNet-20 after a stride-2 stem (and a 2x2 max pool from 128 px), so its blocks see 32-56 px.
ARCHITECTURES = ("small_cnn", "resnet20", "vgg11", "resnet20_s2")
# `--arch auto` covers inputs whose sides lie in [AUTO_MIN_SIDE, AUTO_MAX_SIDE] pixels.
AUTO_MIN_SIDE, AUTO_MAX_SIDE = 8, 224


def auto_architecture(input_shape):
    """`--arch auto`: the small CNN up to 28x28, ResNet-20 up to 63 px, ResNet-20 with a stride-2 stem for
    64-224 px; other sizes have no architecture here (the user brings one with --base-model)."""
    side, longest = min(input_shape[:2]), max(input_shape[:2])
    if side < AUTO_MIN_SIDE or longest > AUTO_MAX_SIDE:
        raise IPGuardError(f"no architecture of the zoo fits {input_shape[0]}x{input_shape[1]} inputs "
                           f"(auto covers {AUTO_MIN_SIDE}-{AUTO_MAX_SIDE} px); pass --image-size to resize the "
                           "images, or --base-model with a model of your own")
    if longest <= 28:
        return "small_cnn"
    return "resnet20" if longest < 64 else "resnet20_s2"
