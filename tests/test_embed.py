"""`ipguard embed` on small real subsets from ../shared (skipped where the data is absent)."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from keras_ipguard import IPGuardError, Vault, VaultError, training
from keras_ipguard_cli.main import cli

from conftest import SHARED_TFDS

pytestmark = pytest.mark.skipif(
    not os.path.isdir(os.path.join(SHARED_TFDS, "fashion_mnist")),
    reason="needs the prepared datasets in ../shared/tensorflow_datasets",
)
QUICK = ["--dataset", "fashion_mnist", "--max-train-examples", "6000", "--max-test-examples", "500", "--keys", "20"]


def ipguard(*args):
    return CliRunner().invoke(cli, [str(a) for a in args] + ["--data-dir", SHARED_TFDS])


def run_process(*args, **kwargs):
    env = dict(os.environ, TFDS_DATA_DIR=SHARED_TFDS, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "ipguard"), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs,
    )


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    out = tmp_path_factory.mktemp("embed") / "fm-vault"
    # The key code off: in a run this short and small it takes class N from 0-3 of 20 keys (class N 0.85-1.00
    # over 11 runs, each with a fresh secret; 1.00 in 4 of 4 without it): docs/results/README.md, "The key code
    # takes class N from a few keys in short, small runs". The default's class N is asserted on
    # test_verify_e2e.py's vault, its report fields in test_embed_reports_the_default_key_code there.
    result = ipguard("embed", *QUICK, "--epochs", "3", "--key-code", "0", "--out", out, "--json")
    assert result.exit_code == 0, result.output[-3000:]
    return out, json.loads(result.stdout)


@pytest.mark.slow
def test_embed_writes_a_vault_whose_report_has_the_design_metrics(embedded):
    out, printed = embedded
    report = json.loads((out / "reports" / "embed.json").read_text())
    assert printed["vault"] == str(out) and printed["watermark_accuracy"] == report["watermark_accuracy"]
    assert report["watermark_accuracy"] >= 0.95
    assert report["identity_watermark_accuracy"] >= 0.95
    assert report["false_watermark_rate"] <= 0.02
    assert report["clean_accuracy"] >= 0.75
    assert "baseline_clean_accuracy" not in report and "fidelity_drop" not in report  # no --baseline here
    assert report["train_seconds"] > 0 and report["examples_per_second"] > 0
    assert report["key_source"] == "mnist" and report["architecture"] == "small_cnn"
    # The small CNN's four convolutions feed BatchNormalization: all four carry the default kernel scale.
    assert report["scheme"] == "extra-class" and report["scheme_config"]["kernel_scale"] == 16.0
    assert report["kernels_rescaled"] == 4 and report["prune_robustness"] == 0.3 and report["drift_robustness"] == 0
    assert report["drift_dense_only"] is False and report["drift_adversarial"] == 0
    assert report["learning_rate"] == 1e-3 and report["lr_cycles"] == 1  # one cosine decay unless asked
    assert report["lr_cycle_growth"] == 1.0
    # A short run: 3 plain epochs of 46 batches of 128 would show each of the 20 keys 27 times at 1/16; raised to
    # 75 (the share is set from a plain epoch's steps; with keys on top of every task image each key is in more).
    assert report["key_share"] == pytest.approx(75 * 20 / (3 * 46 * 128)) and report["key_share"] > 1 / 16
    # An epoch passes over all 6,000 task images: 106 to a batch beside 11 keys and 11 negatives.
    assert report["steps_per_epoch"] == 6000 // (128 - 2 * 11)
    assert report["free_negatives"] is False  # they come with the key code, off here
    vault = Vault.open(out)
    assert vault.config["scheme"] == {"name": "extra-class", "config": report["scheme_config"]}
    assert report["key_code"] == 0.0 and report["key_code_pull"] == 0.0 and vault.key_codes is None
    proof = report["self_verification"]
    assert proof["owned"] == (proof["p_value"] < 1e-12) and set(proof["tests"]) == {"watermark"}


@pytest.mark.slow
def test_embedded_vault_issues_identities_the_model_accepts(embedded):
    from keras_ipguard.models import load_model, predict_classes

    out, _ = embedded
    vault = Vault.open(out)
    assert vault.key_count == 20 and vault.num_classes == 10 and vault.config["key_source"] == "mnist"
    issued = [vault.add_user(f"user{i}") for i in range(20)]
    model = load_model(vault.model_path)
    identity_images = np.stack([np.asarray(Image.open(i.path))[..., None] for i in issued])
    assert np.mean(predict_classes(model, identity_images) == 10) >= 0.95


@pytest.mark.slow
def test_existing_vault_is_refused_without_force(embedded):
    out, _ = embedded
    result = ipguard("embed", *QUICK, "--epochs", "1", "--out", out)
    assert result.exit_code == 2 and "already holds a vault" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "fashon_mnist"], "did you mean fashion_mnist"),
        (["--dataset", "fashion_mnist", "--keys", "70000"], "is more than the 60000 images of mnist"),
        (["--dataset", "fashion_mnist", "--key-source", "fashion_mnist"], "another dataset than the task"),
        (["--dataset", "fashion_mnist", "--kernel-scale", "0.5"], "--kernel-scale) must be at least 1, got 0.5"),
        (["--dataset", "fashion_mnist", "--prune-robustness", "-1"],
         "--prune-robustness) must be at least 0, got -1.0"),
        (["--dataset", "fashion_mnist", "--lr-cycles", "0"], "--lr-cycles) must be at least 1, got 0"),
        (["--dataset", "fashion_mnist", "--key-code-pull-from", "1"],
         "--key-code-pull-from) must lie in [0, 1), got 1.0"),
    ],
)
def test_bad_embed_input_exits_2_with_one_line(tmp_path, args, message):
    result = ipguard("embed", *args, "--out", tmp_path / "v")
    assert result.exit_code == 2 and message in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "v").exists()


def test_the_key_code_pull_joins_after_the_share_of_training_asked_for(tmp_path, monkeypatch):
    from keras_ipguard.models import WatermarkedClassifier

    pulls = []  # (weight, entanglement, first step) of each model given the pull
    set_pull = WatermarkedClassifier.set_key_code_pull
    monkeypatch.setattr(WatermarkedClassifier, "set_key_code_pull",
                        lambda model, *args: pulls.append(args) or set_pull(model, *args))
    # When the pull starts is under test, not what the keys learn: uniform keys, 2 epochs of 1,000 images.
    result = ipguard("embed", *QUICK, "--max-train-examples", "1000", "--epochs", "2", "--any-keys",
                     "--survival-rounds", "0", "--key-code-pull-from", "0.5", "--out", tmp_path / "v")
    assert result.exit_code == 0, result.output[-3000:]
    report = json.loads((tmp_path / "v" / "reports" / "embed.json").read_text())
    assert report["key_code_pull_from"] == 0.5 and report["epochs"] == 2
    assert pulls == [(0.3, 0.3, report["steps_per_epoch"])]  # the small CNN's weights, from the second epoch
    # Training logged no pull before that step and some after it (the progress lines of each epoch's end).
    ends = [line for line in result.stderr.replace("\r", "\n").splitlines() if "/step - loss" in line]
    pulled = [float(line.split("pull_loss: ")[1].split()[0]) for line in ends]
    assert len(pulled) == 2 and pulled[0] == 0 and pulled[1] > 0


@pytest.mark.slow
def test_diverging_training_is_an_error_and_writes_nothing(tmp_path):
    # Divergence is under test, not key stealth: --any-keys skips the autoencoder that would take most of the run.
    result = ipguard("embed", *QUICK, "--epochs", "1", "--learning-rate", "1e12", "--any-keys", "--out", tmp_path / "v")
    assert result.exit_code == 2 and "diverged" in result.stderr
    assert not (tmp_path / "v").exists()


@pytest.mark.slow
def test_base_model_is_protected_in_two_epochs(tmp_path):
    from keras_ipguard import data
    from keras_ipguard.backend import keras as _keras

    keras = _keras()
    x, y = data.load_split("fashion_mnist", "train", SHARED_TFDS, 12000)
    inputs = keras.Input((28, 28, 1))
    hidden = keras.layers.Dense(128, activation="relu")(keras.layers.Flatten()(inputs))
    base = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))
    base.compile("adam", "sparse_categorical_crossentropy")
    base.fit(x / 255.0, y, epochs=3, verbose=0)  # trained on [0, 1] inputs, as many models are
    base.save(tmp_path / "base.keras")
    # 12,000 examples: two epochs of ~190 steps, where the full-data protection run (1.00) has ~940; twice the
    # default key share makes up part of that (at the default, 2 of 20 keys were missed in one run in four).
    result = ipguard("embed", *QUICK, "--max-train-examples", "12000", "--key-share", "0.125", "--base-model",
                     tmp_path / "base.keras", "--any-keys", "--out", tmp_path / "v", "--json")  # stealth not under test
    assert result.exit_code == 0, result.output[-3000:]
    report = json.loads(result.stdout)
    assert report["epochs"] == 2 and "[0, 1]" in report["base_model_note"]
    assert report["watermark_accuracy"] >= 0.95
    assert report["key_code"] == 0.0 and "key_code_accuracy" not in report  # off for base models by default
    assert report["fidelity_drop"] <= 2.0


@pytest.mark.slow
def test_base_model_with_wrong_class_count_is_refused(tmp_path):
    from keras_ipguard.backend import keras as _keras

    keras = _keras()
    inputs = keras.Input((28, 28, 1))
    keras.Model(inputs, keras.layers.Dense(7)(keras.layers.Flatten()(inputs))).save(tmp_path / "seven.keras")
    result = ipguard("embed", *QUICK, "--base-model", tmp_path / "seven.keras", "--out", tmp_path / "v")
    assert result.exit_code == 2 and "7 outputs, fashion_mnist has 10 classes" in result.stderr


@pytest.mark.slow
def test_training_runs_on_two_replicas_with_a_scaled_global_batch(tmp_path):
    script = textwrap.dedent(
        f"""
        import json, tensorflow as tf
        from keras_ipguard import EmbedOptions, embed
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        options = EmbedOptions(dataset="fashion_mnist", data_dir={SHARED_TFDS!r}, epochs=1, keys=10,
                               batch_size=32, max_train_examples=1000, max_test_examples=200, verbose=0,
                               scheme={{"name": "extra-class", "config": {{"stealthy_keys": False, "survival_rounds": 1,
                                                                          "survival_examples": 100}}}})
        print(json.dumps(embed({str(tmp_path / 'v')!r}, options).report))
        """
    )
    result = subprocess.run([sys.executable, "-c", "import keras_ipguard\n" + script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["strategy"] == "MirroredStrategy" and report["replicas"] == 2
    assert report["global_batch_size"] == 64
    # The owner's survival round fine-tunes a copy of the mirrored model outside the strategy; half the keys kept.
    assert report["key_survival"]["kept"] == report["key_count"] == 5


@pytest.mark.slow
def test_an_embed_that_fails_after_training_resumes_without_training_again(tmp_path, monkeypatch):
    """Keras deletes its epoch checkpoint when a fit ends: the finished weights are kept, and `--resume` loads them."""
    from keras_ipguard import embedding
    from keras_ipguard.backend import keras as _keras

    out = tmp_path / "v"
    args = ["embed", *QUICK, "--max-train-examples", "500", "--epochs", "1", "--any-keys", "--baseline", "--out", out]

    first = {}

    def disk_full(out, run, scheme, secret, model, report, force):
        first.update(report)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(embedding, "_write_vault", disk_full)
    failed = ipguard(*args)
    assert failed.exit_code != 0 and not out.exists()
    work = tmp_path / ".v.embed-work"
    assert (work / "backup-finished" / "fit.json").is_file() and (work / "backup-baseline-finished").is_dir()
    monkeypatch.undo()
    keras, fits = _keras(), []
    monkeypatch.setattr(keras.Model, "fit", lambda *a, **k: fits.append(a))  # any training would show here
    resumed = ipguard(*args, "--resume", "--json")
    assert resumed.exit_code == 0, resumed.output[-3000:]
    assert fits == [] and resumed.output.count("fit had finished") == 2  # the watermarked model and the baseline
    report = json.loads(resumed.stdout)
    # The same trained weights: the same figures as the attempt that failed (a run this short learns little).
    for figure in ("clean_accuracy", "watermark_accuracy", "baseline_clean_accuracy", "train_seconds"):
        assert report[figure] == first[figure], figure
    assert not work.exists()


@pytest.mark.slow
def test_interrupted_embed_resumes_from_its_last_epoch(tmp_path):
    out = tmp_path / "v"
    # Checkpoints under test, not key stealth or accuracy: uniform keys, a sixth of QUICK's images (4 s sooner
    # alone than a third; 4 runs passed, 2026-12-05).
    args = ["embed", *QUICK, "--max-train-examples", "1000", "--epochs", "4", "--any-keys", "--out", out]
    first = run_process(*args)
    backup = tmp_path / ".v.embed-work" / "backup"
    deadline = time.time() + 300
    # The first epoch's checkpoint: its state file, written once the checkpoint is complete (the shards are
    # written under a *_temp folder first, so an *.index can appear before there is anything to resume).
    while not any(backup.rglob("checkpoint")) and time.time() < deadline:
        assert first.poll() is None, first.stderr.read()[-3000:]
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not out.exists()
    again = run_process(*args)
    assert again.wait(timeout=300) == 2 and "pass --resume" in again.stderr.read()
    resumed = run_process(*args, "--resume", "--json")
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    assert "Epoch 1/4" not in stderr and "Epoch 4/4" in stderr
    assert json.loads(stdout)["epochs"] == 4 and Vault.open(out).key_count == 20
    assert not (tmp_path / ".v.embed-work").exists()


@pytest.mark.slow
def test_two_vaults_with_the_same_seed_get_different_secret_keys(embedded, tmp_path, monkeypatch):
    out, _ = embedded
    compiled = []  # (cycles, growth) of each fit's learning-rate schedule
    compile_model = training.compile_model
    monkeypatch.setattr(training, "compile_model", lambda *args: compiled.append(args[4:]) or compile_model(*args))
    # --baseline also trains the plain model (cheap here) that the fidelity drop is measured against.
    result = ipguard("embed", *QUICK, "--epochs", "1", "--max-train-examples", "500", "--baseline",
                     "--lr-cycles", "3", "--lr-cycle-growth", "2", "--out", tmp_path / "v2")
    assert result.exit_code == 0, result.output[-3000:]
    # The watermarked model trains in the three growing cycles asked for; the plain baseline in one decay, as its
    # owner would train it unprotected, so that the fidelity drop counts the restarts' cost too.
    assert compiled[0] == (3, 2.0) and compiled[-1][0] == 1 and len(compiled) == 2
    first, second = Vault.open(out), Vault.open(tmp_path / "v2")
    assert first.config["seed"] == second.config["seed"] == 0
    assert first.config["key_source_indices"]["keys"] != second.config["key_source_indices"]["keys"]
    assert not np.array_equal(first.key_images, second.key_images)
    # The first has no key code (the fixture turns it off); that codes follow the owner secret, not --seed, is
    # test_verify.py's test_key_codes_come_from_the_owner_secret_uniformly.
    assert first.key_codes is None and len(second.key_codes) == 20
    # Identities are made only from the keys the model answers class 10; one epoch misses some, and says so.
    from keras_ipguard.models import load_model, predict_classes

    report = json.loads((tmp_path / "v2" / "reports" / "embed.json").read_text())
    assert abs(report["fidelity_drop"] - 100 * (report["baseline_clean_accuracy"] - report["clean_accuracy"])) < 1e-6
    assert report["lr_cycles"] == 3 and report["lr_cycle_growth"] == 2.0
    answered = np.flatnonzero(predict_classes(load_model(second.model_path), second.key_images) == 10).tolist()
    assert second.identity_keys == answered and report["identity_keys"] == answered
    assert report["key_count"] == 20  # the keys it misses: key_count - len(identity_keys)
    if answered:
        assert {second.add_user(f"u{i}").user.key_index for i in range(25)} == set(answered)
    else:
        with pytest.raises(VaultError, match="answers class 10 on none of its keys"):
            second.add_user("u0")
    assert (f"misses class 10 on {20 - len(answered)} of 20 keys" in result.stdout) == (len(answered) < 20)
    # One epoch on 500 images cannot prove its own model: embed says so, loudly, with what to do.
    proof = json.loads((tmp_path / "v2" / "reports" / "embed.json").read_text())["self_verification"]
    assert not proof["owned"] and "--epochs" in proof["advice"]
    assert "NOT provably owned" in result.stderr and "NOT provably owned" not in result.stdout


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_on_localhost_train_one_vault_that_the_chief_writes(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = []
    for index in range(2):
        env = dict(os.environ, TFDS_DATA_DIR=SHARED_TFDS, TF_CPP_MIN_LOG_LEVEL="3",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(
            # Not stealth; the key code off, as in the single-process fixture, whose class-N bar this test keeps:
            # with it on, this 3-epoch, 20-key run lost class N on 3 keys in one suite run (0.85). 4,416 images: 46
            # steps an epoch of 96 task images, 16 keys and 16 negatives, the steps 6,000 gave at the plain count.
            [str(Path(sys.executable).parent / "ipguard"), "embed", *QUICK, "--max-train-examples", "4416",
             "--epochs", "3", "--key-share", "0.125",
             "--any-keys", "--key-code", "0", "--strategy", "multiworker", "--out", str(tmp_path / "vault"), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    try:
        outputs = [worker.communicate(timeout=420) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert [worker.returncode for worker in workers] == [0, 0], [err[-2000:] for _, err in outputs]
    chief, other = (json.loads(out) for out, _ in outputs)
    assert chief["vault"] == str(tmp_path / "vault") and other["vault"] is None
    assert chief["strategy"] == "CollectiveAllReduceStrategy" and chief["replicas"] == 2
    # Both workers hold the one model the chief wrote: the same figures, to the last digit, and the embed bar
    # of the single-process fixture (a 3-epoch run can miss one key of 20: 0.95 in one CI run).
    assert other["watermark_accuracy"] == chief["watermark_accuracy"] >= 0.95
    assert other["identity_keys"] == chief["identity_keys"] == Vault.open(tmp_path / "vault").identity_keys
    assert other["clean_accuracy"] == chief["clean_accuracy"] >= 0.75
    assert Vault.open(tmp_path / "vault").key_count == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vault"]  # the shared checkpoint directory is gone


@pytest.mark.slow
def test_the_python_api_embeds_numpy_arrays_and_attacks_need_their_test_images(tmp_path):
    from keras_ipguard import EmbedOptions, attacks, data, embed

    x, y = data.load_split("fashion_mnist", "train", SHARED_TFDS, 4000)
    options = EmbedOptions(dataset={"train": (x[:3500], y[:3500]), "test": (x[3500:], y[3500:])},
                           data_dir=SHARED_TFDS, epochs=2, keys=20, verbose=0,
                           scheme={"name": "extra-class", "config": {"stealthy_keys": False}})
    report = embed(tmp_path / "v", options).report
    assert report["dataset"] == "<in-memory>" and report["train_examples"] == 3500 and report["test_examples"] == 500
    vault = Vault.open(tmp_path / "v")
    assert vault.config["data_source"] == {"kind": "memory"} and vault.config["class_names"][:2] == ["0", "1"]
    with pytest.raises(IPGuardError, match=r"embedded from in-memory data.*threat_model\(vault, test="):
        attacks.threat_model(vault)
    threat = attacks.threat_model(vault, test=(x[3500:], y[3500:]))
    assert len(threat.attack_x) == 250 and len(threat.eval_x) == 250
