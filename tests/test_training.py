"""`training.compile_model`'s learning-rate schedule: one cosine decay, or `--lr-cycles` warm restarts."""

import math

import pytest

from keras_ipguard import IPGuardError
from keras_ipguard.backend import keras, tensorflow
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


@pytest.mark.parametrize("growth, restarts", [(2.0, (10, 30)), (0.5, (40, 60))])
def test_lr_cycle_growth_sets_each_cycle_to_that_many_times_the_one_before(growth, restarts):
    """70 steps in 3 cycles: 10, 20, 40 steps when each doubles; 40, 20, 10 when each halves."""
    model = keras().Sequential([keras().layers.Dense(3, input_shape=(4,))])
    compile_model(model, RECIPES["small_cnn"], 1e-3, 70, cycles=3, growth=growth)
    before = _rates(model, [r - 1 for r in restarts])
    after = _rates(model, [r + 1 for r in restarts])
    first_cycle = restarts[0]
    assert all(rate < 0.03e-3 for rate in before)  # each cycle ends near 0 where the next begins
    assert after[0] == pytest.approx(1e-3 * (1 + math.cos(math.pi / (first_cycle * growth))) / 2)  # 1 step in
    assert after[1] == pytest.approx(1e-3 * (1 + math.cos(math.pi / (first_cycle * growth ** 2))) / 2)
    last, = _rates(model, [69])
    assert last < 0.03e-3  # the last cycle ends with the training, no restart on its last steps


def test_lr_cycle_growth_must_be_positive_and_comes_with_cycles():
    with pytest.raises(IPGuardError, match="lr-cycle-growth.*greater than 0"):
        EmbedOptions(dataset="fashion_mnist", lr_cycles=3, lr_cycle_growth=0)
    with pytest.raises(IPGuardError, match="--lr-cycle-growth 2 needs more than one cycle: add --lr-cycles"):
        EmbedOptions(dataset="fashion_mnist", lr_cycle_growth=2)  # the automatic cycles may be one decay


def test_lr_cycles_below_one_are_refused_with_the_flag_named():
    with pytest.raises(IPGuardError, match="lr-cycles.*at least 1, got 0"):
        EmbedOptions(dataset="fashion_mnist", lr_cycles=0)


def _run(arch="small_cnn", examples=60000, epochs=15, **options):
    """An `EmbedRun` of `examples` training images, as `embed` has it before training (no data read)."""
    import types

    from keras_ipguard.training import EmbedRun

    task = types.SimpleNamespace(train=types.SimpleNamespace(count=examples), info=None)
    strategy = tensorflow().distribute.get_strategy()
    run = EmbedRun(EmbedOptions(dataset="fashion_mnist", epochs=epochs, **options), task, None, strategy)
    run.arch = arch
    return run


def test_full_small_cnn_runs_with_the_key_code_train_in_three_cycles_and_short_ones_in_one_decay():
    from keras_ipguard import schemes

    ours = schemes.get("extra-class")
    # Fashion-MNIST's full run: each of 100 keys is in 214 of each cycle's 2,675 batches (8 keys each).
    assert ours.lr_cycles(_run()) == 3
    # The short run (3 epochs, 20,000 images): 33 per cycle even at the raised share of 1/8; 5 epochs of
    # all 60,000 images: 71; 6: 86.
    assert ours.lr_cycles(_run(examples=20000, epochs=3)) == 1
    assert ours.lr_cycles(_run(epochs=5)) == 1 and ours.lr_cycles(_run(epochs=6)) == 3
    assert ours.lr_cycles(_run(epochs=15, keys=400)) == 1  # 400 keys share the same batches: 53 each
    # Measured on the small CNN with the key code only; elsewhere one decay, and what is asked is kept.
    assert ours.lr_cycles(_run("resnet20")) == 1 and ours.lr_cycles(_run("base_model")) == 1
    assert schemes.ExtraClass(key_code=0).lr_cycles(_run()) == 1
    # The pull joins half-way on ResNet-20 (measured on CIFAR-10), from the first step elsewhere, else as asked.
    assert ours.key_code_pull_from("resnet20") == 0.5 and ours.key_code_pull_from("small_cnn") == 0.0
    assert ours.key_code_pull_from("resnet20_s2") == 0.0 and ours.key_code_pull_from("vgg11") == 0.0
    assert schemes.ExtraClass(key_code_pull_from=0.25).key_code_pull_from("small_cnn") == 0.25
    assert schemes.get("content").lr_cycles(_run()) == 1
    assert ours.lr_cycles(_run(lr_cycles=1)) == 1 and ours.lr_cycles(_run(examples=20000, epochs=3, lr_cycles=2)) == 2
