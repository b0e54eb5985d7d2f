"""`training.compile_model`'s learning-rate schedule: one cosine decay, or `--lr-cycles` warm restarts."""

import math

import pytest

from keras_ipguard import IPGuardError
from keras_ipguard.backend import keras
from keras_ipguard.embed_options import EmbedOptions
from keras_ipguard.training import RECIPES, compile_model


def _rates(model, steps):
    """The learning rate at each step of the schedule the optimizer was compiled with (read from its config)."""
    schedule = keras().optimizers.schedules.deserialize(model.optimizer.get_config()["learning_rate"])
    return [float(schedule(step)) for step in steps]


@pytest.mark.parametrize("arch", ["small_cnn", "resnet20"])  # Adam and SGD recipes
def test_lr_cycles_restart_the_cosine_decay_at_the_initial_rate(arch):
    model = keras().Sequential([keras().layers.Dense(3, input_shape=(4,))])
    compile_model(model, RECIPES[arch], 1e-3, 30, cycles=3)
    start, end_of_first, second, third, last = _rates(model, [0, 9, 10, 20, 29])
    assert start == second == third == pytest.approx(1e-3)  # each cycle starts again at the full rate
    assert end_of_first < 0.03e-3 and last < 0.03e-3  # and decays to about nothing
    compile_model(model, RECIPES[arch], 1e-3, 30)  # the default: one decay over all the steps
    one_third, = _rates(model, [10])
    assert one_third == pytest.approx(1e-3 * (1 + math.cos(math.pi / 3)) / 2)


def test_lr_cycles_never_restart_at_the_end_of_training():
    """Steps that do not divide into the cycles must not open a new cycle at the full rate on the last steps."""
    model = keras().Sequential([keras().layers.Dense(3, input_shape=(4,))])
    compile_model(model, RECIPES["small_cnn"], 1e-3, 32, cycles=3)
    second, third, last = _rates(model, [11, 22, 31])
    assert second == third == pytest.approx(1e-3)  # cycles of 11 steps, the last one cut short by one step
    assert last < 0.1e-3  # 9 of its 11 steps into the decay (floor division restarted at ~1e-3 here)


def test_lr_cycles_below_one_are_refused_with_the_flag_named():
    with pytest.raises(IPGuardError, match="lr-cycles.*at least 1, got 0"):
        EmbedOptions(dataset="fashion_mnist", lr_cycles=0)
