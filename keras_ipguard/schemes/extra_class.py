"""Ours (Xue et al. 2022): secret out-of-distribution key images learnt as one extra output class, N.

The keys are clean images of another dataset, chosen with the owner secret;
other images of that dataset are trained as "not class N" (negatives) or held
out as controls. Every batch redraws the LSB plane of half the key samples, so
any identity image made from a key (a signed payload in its LSBs) is answered
class N too. After training, every BatchNormalization-fed kernel is scaled up
(`kernel_scale`: same function, fine-tuning turns it less), and for the last
third of the steps a pruning-robustness term keeps the answers of the model
magnitude-pruned; an optional drift-robustness term (`drift_robustness`, off
by default: it costs fidelity) keeps the keys' answers with noise on every
kernel, as a thief's fine-tuning drifts them.

With the key code on the small CNN, negatives are trained only away from
class N (`free_negatives`: the loss -log(1 - p_N), no task class asked of
them; not yet measured on a full run elsewhere): a uniform target over the
task classes flattened the task answers of every image like the keys,
against the key code, and left more of the key source answering N.

The hidden key code (`keycode`): each key also learns a secret task class
c_i, a share of its target (`key_code`) plus a pull of its normalised
features toward those of class c_i's images in the batch (`key_code_pull`:
until it is nearer them than any other class's by a margin, so it can still
answer class N; on ResNet-20 only from half-way through training,
`key_code_pull_from`), so a copy without class N (truncated, last layer
re-trained) still shows it.
With the key code on the small CNN (in runs long enough that the rounds cost
at most a quarter of the training), `embed` then keeps the half of the keys
whose code survives the owner's own fine-tuning attacks best (`survival`,
which `embed` runs; `survival` below decides).
"""

import dataclasses

import numpy as np

from .. import data, keycode
from ..errors import IPGuardError
from ..settings import setting
from .base import Scheme, Secret

# The pruning-robustness term's weight by architecture when not given. On
# Fashion-MNIST it keeps the keys through pruning at 0.8 for 0.4 points of
# fidelity; at weight 1 it cost 0.65 on one seed. On a reduced CIFAR-10
# ResNet-20 run it made training 42% slower and did not reach the pruning
# target, so it stays off there (and for base models) until measured on a
# full run. See docs/results/README.md, "Pruning robustness".
DEFAULT_PRUNE_ROBUSTNESS = {"small_cnn": 0.3, "resnet20": 0.0, "resnet20_s2": 0.0, "vgg11": 0.0, "base_model": 0.0}
# The term joins for the last third of the steps: on from the first step, it
# cost 0.5-0.8 points of clean accuracy on Fashion-MNIST.
PRUNE_ROBUSTNESS_FROM = 2 / 3
# Kernels fed to BatchNormalization are multiplied by this after training:
# the model's function is unchanged, but a fine-tuning attacker's Adam steps
# turn them 16 times less. See docs/results/README.md, "Fine-tuning robustness".
DEFAULT_KERNEL_SCALE = 16.0
IDENTITIES_PER_KEY = 2  # fresh identity images per key for identity_watermark_accuracy
# Stealthy keys (`data.STEALTH_CANDIDATES` candidates per key) are scored by an
# autoencoder trained this long on this many of the owner's training images.
STEALTH_AUTOENCODER_EXAMPLES = 5000
STEALTH_AUTOENCODER_EPOCHS = 5
# The hidden key code's defaults; see docs/results/README.md, "The hidden key code".
DEFAULT_KEY_CODE = 0.2
# The pull is the key code's price in CIFAR-10 fidelity: at 20 epochs on all 50,000 images (ResNet-20, seed 0) the
# drop was 0.27 points without it and 1.12-1.50 with it from the first step, but without it RTAL and the informed
# thief's FTAL with Adam removed the code (0.34 and 0.15). See docs/results/README.md, "What costs fidelity at 20
# epochs: the pull"; on ResNet-20 it now joins half-way (DEFAULT_KEY_CODE_PULL_FROM).
DEFAULT_KEY_CODE_PULL = 0.3
# The pull's hinge also on the outputs of the backbone's pooling layers, or ResNet-20's stages
# (`models.entanglement_taps`, `models.WatermarkedClassifier.set_key_code_pull`), by architecture when not given.
# On full Fashion-MNIST runs (seeds 0-2) it took RTAL with Adam from 0.46-0.74 of the key code to 0.88-1.00, and
# the informed attacker's from 0.34-0.50 (owned on none of six runs) to 0.42-0.88 (six of seven), for a fidelity
# drop of 0.41 points on average (0.37 without); the informed thief's FTAL with Adam stayed where it was. On
# reduced CIFAR-10 runs (ResNet-20, 10 epochs on 15,000 images; seeds 0 and 1) RTAL with Adam kept 0.66 and 0.50 of
# the key code (0.38 and 0.40 without), the informed thief's FTAL with Adam 0.81 and 0.79 (0.60 and 0.65), at no
# measurable cost in clean accuracy; at 20 epochs on all 50,000 images (seed 0) a vault without it kept as much
# (RTAL with Adam 0.84, 0.89 with it; fidelity 1.12 / 1.28 points). ResNet-20 on larger images and VGG-11 are not
# measured. See docs/results/README.md, "Entangling the keys with their secret class".
DEFAULT_KEY_CODE_ENTANGLE = {"small_cnn": 0.3, "resnet20": 0.3, "resnet20_s2": 0.0, "vgg11": 0.0, "base_model": 0.0}
# The share of the training steps after which the pull and the entanglement join, by architecture when not
# given. On ResNet-20 (20 epochs on all of CIFAR-10, seed 0) from the first step they cost 1.28 points of fidelity,
# from the middle 0.74 (without them 0.27), the key code 1.00 either way; a lighter pull (weight 0.1) or a smaller
# margin (0.2) from the first step cost as much (1.53, 1.20). Elsewhere not measured: from the first step.
# See docs/results/README.md, "The pull from half-way".
DEFAULT_KEY_CODE_PULL_FROM = {"small_cnn": 0.0, "resnet20": 0.5, "resnet20_s2": 0.0, "vgg11": 0.0, "base_model": 0.0}
# The drift-robustness term's noise (`models.set_drift_robustness`): a little
# above the 0.011-0.022 RMS per kernel that the informed attacker's 10 epochs
# of Adam moved a Fashion-MNIST small CNN.
DEFAULT_DRIFT_NOISE = 0.03
# Owner-side key selection (`survival`): the share of the trained keys kept. Training more keys instead (200 at
# the same key share, keeping 100) halved each key's views and left the thief 0.65 of them, not 0.9.
DEFAULT_SURVIVAL_KEEP = 0.5
DEFAULT_SURVIVAL_ROUNDS = 3
# Warm restarts (`lr_cycles`): the cosine cycles of a full run with the key code on the small CNN. Over full
# epochs (`data.epoch_steps`), three equal cycles left the informed Adam thief 0.94 of the key code on each of
# seeds 0-2 at a fidelity drop of 0.33-0.40 points, where one decay over plain-length epochs left 0.74-0.89
# at 0.40-0.58 (docs/results/README.md, "Three equal cycles over full epochs"); in a short run a restart takes
# away what the keys had learnt (3 epochs on 20,000 images: not provably owned), so only where each cycle
# still shows each key in data.MIN_KEY_VIEWS batches.
DEFAULT_LR_CYCLES = 3
# As many of the owner's training images as the thief of the attack suite has test images (half of a
# 10,000-image test split), but at most a quarter of them: a thief holds fewer images than the owner.
DEFAULT_SURVIVAL_EXAMPLES = 5000
SURVIVAL_EXAMPLES_SHARE = 0.25
SURVIVAL_EPOCHS = 10  # each round's fine-tuning: the attack suite's default (attacks.fine_tuning.DEFAULT_EPOCHS)


@dataclasses.dataclass
class ExtraClassConfig:
    """Settings of the extra-class scheme."""

    stealthy_keys: bool = setting(True, "Choose keys that an autoencoder of the task's images finds ordinary "
                                  "(they pass query filters), or any seeded keys.", off_flag="--any-keys")
    kernel_scale: float = setting(DEFAULT_KERNEL_SCALE, "After training, multiply every BatchNormalization-fed "
                                  "kernel by this (same function; fine-tuning with Adam moves them less). 1: off.",
                                  kind=float, low=1)
    prune_robustness: float | None = setting(
        None, "Weight of a training term that keeps the answers when the model is magnitude-pruned. 0: off.",
        kind=float, low=0, default_text="0.3 for the small CNN; 0 for ResNet-20, VGG-11 and --base-model")
    key_code: float | None = setting(None, "Share of each key's training target put on its secret task class (the "
                                     "hidden key code, verifiable on copies without class N). 0: off.", kind=float,
                                     low=0, high=0.5, default_text="0.2; 0 for --base-model (not measured there)")
    key_code_pull: float = setting(DEFAULT_KEY_CODE_PULL, "Weight of a term pulling each key's normalised features "
                                   "toward those of its secret class until they are nearer them than any other class's "
                                   "by a margin (a re-trained last layer still maps it there). "
                                   "0: off; tf_keras models only.", kind=float, low=0)
    key_code_entangle: float | None = setting(
        None, "Weight of the same pull on the outputs of the model's pooling layers (ResNet-20: of its three "
        "stages), so each key takes its secret class's path through the earlier layers too (a thief who re-trains "
        "every layer under a new last layer carries it along). 0: off; the zoo's architectures only.", kind=float,
        low=0, default_text="0.3 for the small CNN and ResNet-20; 0 otherwise")
    key_code_pull_from: float | None = setting(
        None, "The share of the training steps after which the pull and the entanglement term join (0: from the "
        "first step; a pull from the start shapes the early features and costs fidelity).", kind=float, low=0,
        high=1, open_bounds="high", default_text="0.5 for ResNet-20; 0 otherwise")
    survival_rounds: int | None = setting(
        None, "Owner attack rounds choosing the keys: fine-tune copies of the trained model as an informed thief "
        "would (all layers, Adam) on the owner's training images, and keep the half of the --keys keys whose "
        "secret class survives best, leaving out those a plain reference model answers anyway. 0: off (every "
        "trained key kept).", kind=int, low=0,
        default_text="3 with the key code on the small CNN where they cost at most a quarter of the training; 0 "
        "otherwise")
    survival_keep: float = setting(DEFAULT_SURVIVAL_KEEP, "The share of the trained keys kept when survival_rounds "
                                   "is on.", kind=float, low=0, high=1, open_bounds="low", cli=False)
    survival_examples: int = setting(DEFAULT_SURVIVAL_EXAMPLES, "The owner's training images each survival round "
                                     "fine-tunes on (at most a quarter of them).", kind=int, low=1, cli=False)
    # Experimental (Python only): see keras_ipguard.data's docstring for what they did.
    free_negatives: bool | None = setting(None, "Train negatives only away from class N (loss -log(1 - p_N)); off: "
                                          "toward negative_class, or a uniform answer over the task classes.",
                                          cli=False, default_text="on with the key code on the small CNN")
    drift_robustness: float = setting(0.0, "Weight of a training term that keeps the keys' answers with Gaussian noise "
                                      "on every kernel, as a thief's fine-tuning drifts them (costs fidelity). 0: off.",
                                      kind=float, low=0)
    drift_noise: float = setting(DEFAULT_DRIFT_NOISE, "The drift term's largest noise standard deviation.",
                                 kind=float, low=0, open_bounds=True, cli=False)
    drift_dense_only: bool = setting(False, "The drift term adds its noise to the Dense kernels only (off: every "
                                     "Dense/Conv2D kernel).", cli=False)
    drift_adversarial: float = setting(0.0, "The drift term moves each kernel by this share of its norm in the "
                                       "direction that most raises the keys' loss, instead of random noise. 0: noise.",
                                       kind=float, low=0, cli=False)
    negatives: int = setting(data.DEFAULT_NEGATIVES, "Key-source images trained as not class N.", kind=int, low=0,
                             cli=False)
    negative_weight: float = setting(1.0, "Loss weight of a negative.", kind=float, low=0, open_bounds=True,
                                     cli=False)
    negative_class: int | None = setting(None, "A task class negatives are trained towards (None: uniform).",
                                         kind=int, low=0, cli=False)
    key_jitter: bool = setting(False, "Random shifts and noise on half of the key samples; it left the "
                               "unattacked model not owned, so it is no CLI option.", cli=False)


class ExtraClass(Scheme):
    name = "extra-class"
    summary = "ours (Xue et al. 2022): secret out-of-distribution keys learnt as an extra class N, identity images"
    Config = ExtraClassConfig
    has_watermark_class = True
    issues_identities = True
    uses_key_source = True
    protects_base_models = True

    def check(self, run):
        if self.config.key_code_entangle and run.options.base_model:
            raise IPGuardError("--key-code-entangle taps the layers of the zoo's architectures (--arch), not those "
                               "inside a --base-model; drop it")
        terms = [flag for flag, weight in (("--prune-robustness", self.config.prune_robustness),
                                           ("--drift-robustness", self.config.drift_robustness)) if weight]
        if run.options.base_model and terms:
            from ..models import keras_file_flavour, model_file

            if keras_file_flavour(model_file(run.options.base_model, "--base-model")) == "keras3":
                raise IPGuardError(f"{' and '.join(terms)} train tf_keras models only, not a Keras 3 --base-model; "
                                   "drop them")
        if self.config.survival_rounds and not self.key_code_share(run.arch):
            raise IPGuardError("--survival-rounds chooses keys by their key code, which is off here; give --key-code "
                               "a share above 0 or drop --survival-rounds")
        candidates = data.STEALTH_CANDIDATES if self.config.stealthy_keys else 1
        data.check_key_source(run.info.name, run.key_pool, run.options.keys,
                              self.config.negatives + data.DEFAULT_CONTROLS, candidates)

    def build_model(self, run, arch):
        from ..models import WatermarkedClassifier, build_backbone

        return WatermarkedClassifier(build_backbone(arch, run.info.input_shape), run.info.num_classes,
                                     name="watermarked_classifier")

    def protect_base_model(self, run, path):
        from ..base_models import watermarked_base_model

        return watermarked_base_model(path, run.info, run.test)

    def make_secret(self, run):
        from ..identity import IdentityCodec
        from ..metrics import evaluation_identities

        stealthy = self.config.stealthy_keys
        key_set = run.key_set(self.config.negatives, self._typicality(run) if stealthy else None,
                              data.STEALTH_CANDIDATES if stealthy else 1)
        n = run.info.num_classes
        controls = {"key_source": key_set.controls, "task": run.test.sample(data.DEFAULT_CONTROLS, run.options.seed)[0]}
        run.report.update(
            negatives=int(len(key_set.negatives)),
            key_selection=(f"stealthy: the {len(key_set.keys)} of {len(key_set.keys) * data.STEALTH_CANDIDATES} seeded "
                           "candidates an autoencoder trained on the task's images reconstructs best")
            if stealthy else "seeded uniform choice")
        codes = keycode.draw(run.owner_key, len(key_set.keys), {name: len(images) for name, images in controls.items()},
                             n) if self.key_code_share(run.arch) else None
        return Secret(
            keys=key_set.keys, labels=np.full(len(key_set.keys), n),
            controls={name: (images, np.full(len(images), n)) for name, images in controls.items()},
            negatives=key_set.negatives, key_source=run.key_source, key_source_indices=key_set.indices,
            identities=evaluation_identities(IdentityCodec(run.owner_key), key_set.keys, IDENTITIES_PER_KEY),
            key_codes=codes,
        )

    @staticmethod
    def _typicality(run):
        def trained_scorer():
            from ..autoencoder import reconstruction_errors, train_autoencoder

            autoencoder = train_autoencoder(run.train.take(STEALTH_AUTOENCODER_EXAMPLES)[0], STEALTH_AUTOENCODER_EPOCHS,
                                            seed=run.options.seed)
            return lambda images: reconstruction_errors(autoencoder, images)

        return trained_scorer

    def key_streams(self, secret, num_classes):
        streams = super().key_streams(secret, num_classes)
        depth = self.output_units(num_classes)
        if self.config.negative_class is not None:
            target = np.eye(depth, dtype=np.float32)[self.config.negative_class]
        else:  # uniform over the task classes; with free negatives, train_step asks only "not N" of them
            target = np.array([1.0 / num_classes] * num_classes + [0.0], np.float32)
        if secret.key_codes is not None:
            share = self.config.key_code if self.config.key_code is not None else DEFAULT_KEY_CODE
            targets = keycode.soft_targets(secret.key_codes["keys"], num_classes, share)
            streams = dataclasses.replace(streams, key_targets=targets)
        return dataclasses.replace(
            streams, negatives=secret.negatives, negative_targets=np.tile(target, (len(secret.negatives), 1)),
            negative_weight=self.config.negative_weight, fresh_lsbs=True, jitter=self.config.key_jitter)

    def key_code_entangle(self, arch):
        """The entanglement term's weight: as set, else by architecture (DEFAULT_KEY_CODE_ENTANGLE)."""
        weight = self.config.key_code_entangle
        return DEFAULT_KEY_CODE_ENTANGLE[arch] if weight is None else weight

    def key_code_pull_from(self, arch):
        """The share of training before the pull joins: as set, else by architecture (DEFAULT_KEY_CODE_PULL_FROM)."""
        share = self.config.key_code_pull_from
        return DEFAULT_KEY_CODE_PULL_FROM[arch] if share is None else share

    def key_code_share(self, arch):
        """The key code's share of each key's target: as set, else the default (0 for a user's base model: the
        key code costs class-N accuracy in a short run, and a Keras 3 model learns it without the pull)."""
        if self.config.key_code is not None:
            return self.config.key_code
        return 0.0 if arch == "base_model" else DEFAULT_KEY_CODE

    def survival(self, run):
        """As set, else 3 rounds with the key code on the small CNN where they and the reference model cost at
        most a quarter of the training: each round fine-tunes the model for 10 epochs on up to 5,000 images (at
        most a quarter of the training images), the reference trains as long on them. A 3-epoch run on 20,000
        images (rounds 4x its training, 2026-12-03) found the keys' codes near chance after each round
        (0.13-0.19), so its choice would be mostly of keys whose code any model answers: off there by default.
        Off on ResNet-20: on a 20-epoch CIFAR-10 vault the informed thief kept 0.58 of the kept half's codes
        against 0.45 of all 100, about the same p-values with half the keys, and half the keys proved less after
        the other attacks (2026-12-07, docs/results/README.md, "The informed Adam thief over attacker seeds");
        not measured on the other architectures."""
        examples = max(1, min(self.config.survival_examples, int(run.train.count * SURVIVAL_EXAMPLES_SHARE)))
        rounds = self.config.survival_rounds
        if rounds is None:
            # the rounds and the reference model (`survival.natural_codes`), each SURVIVAL_EPOCHS on `examples`
            cheap = (DEFAULT_SURVIVAL_ROUNDS + 1) * SURVIVAL_EPOCHS * examples <= 0.25 * run.epochs * run.train.count
            rounds = DEFAULT_SURVIVAL_ROUNDS if (run.arch == "small_cnn" and self.key_code_share(run.arch) > 0
                                                and cheap) else 0
        return (rounds, self.config.survival_keep, examples) if rounds else None

    def lr_cycles(self, run):
        """As set, else DEFAULT_LR_CYCLES with the key code on the small CNN where each cycle still shows each key
        in data.MIN_KEY_VIEWS batches (Fashion-MNIST's full run: 214), else one decay (its 3-epoch, 20,000-image
        run: 33)."""
        if run.options.lr_cycles is not None:
            return run.options.lr_cycles
        if run.arch != "small_cnn" or not self.key_code_share(run.arch):
            return 1
        keys, negatives = run.options.keys, self.config.negatives > 0
        share = run.key_share(keys)
        steps = run.epoch_steps(share, negatives=negatives) * run.epochs // DEFAULT_LR_CYCLES
        views = data.key_views(keys, steps, data.batch_split(run.global_batch, share, negatives=negatives)[1])
        return DEFAULT_LR_CYCLES if views >= data.MIN_KEY_VIEWS else 1

    def free_negatives(self, arch):
        """Whether negatives are trained only away from class N: as set, else with the key code on the small CNN.

        They help the key code; without it they only cost class N in short runs (a user's tf_keras base model
        fine-tuned on 40 keys, key code off, kept class N on 30 of them instead of 38-40), where a negative
        confident in one task class leaves the keys like it a higher task logit to beat. On a reduced CIFAR-10
        ResNet-20 run they left the key code as it was (0.97) at 1.2 points of clean accuracy (one run), so
        they stay off for the other architectures until measured on a full run."""
        if self.config.free_negatives is not None:
            return self.config.free_negatives
        return arch == "small_cnn" and self.key_code_share(arch) > 0

    def prune_robustness(self, arch):
        weight = self.config.prune_robustness
        return DEFAULT_PRUNE_ROBUSTNESS[arch] if weight is None else weight

    def train(self, run, model):
        secret = self.make_secret(run)
        pipeline = run.pipeline(self, self.key_streams(secret, run.info.num_classes))
        weight, drift = self.prune_robustness(run.arch), self.config.drift_robustness

        def step_after(share):  # the optimizer step after `share` of the training
            return int(pipeline[1] * run.epochs * share)

        late = step_after(PRUNE_ROBUSTNESS_FROM)  # both terms join for the last third
        if weight:  # tf_keras models only (`check` refuses them for a Keras 3 base model)
            model.set_prune_robustness(weight, late)
        if drift:
            model.set_drift_robustness(drift, self.config.drift_noise, late, self.config.drift_dense_only,
                                       self.config.drift_adversarial)
        ours = hasattr(model, "set_key_code_pull")  # a WatermarkedClassifier (not a Keras 3 base model)
        pull = self.config.key_code_pull if secret.key_codes is not None and ours else 0.0
        # Every zoo architecture has layers to tap; a base model's default is 0 (`check` refuses the flag there).
        entangle = self.key_code_entangle(run.arch) if pull else 0.0
        pull_from = self.key_code_pull_from(run.arch) if pull else 0.0
        if pull:
            model.set_key_code_pull(pull, entangle, step_after(pull_from))
        # A WatermarkedClassifier (not a Keras 3 base model), unless negatives are given a task class.
        free = (self.free_negatives(run.arch) and self.config.negative_class is None
                and hasattr(model, "set_free_negatives"))
        if free:
            model.set_free_negatives(True)
        run.report.update(free_negatives=free, prune_robustness=weight, drift_robustness=drift,
                          drift_dense_only=bool(drift) and self.config.drift_dense_only,
                          drift_adversarial=self.config.drift_adversarial if drift else 0.0,
                          key_code=self.key_code_share(run.arch),
                          key_code_pull=pull, key_code_entangle=entangle, key_code_pull_from=pull_from)
        run.fit(model, pipeline)
        return secret

    def finish(self, run, model):
        from ..models import harden_kernel_scale

        scale = self.config.kernel_scale
        return {"kernels_rescaled": harden_kernel_scale(model, scale) if scale != 1 else 0}

    def control_watermark_rate(self, secret, classify):
        # The clean task images' class-N rate is false_watermark_rate; this is the key source's.
        images, labels = secret.controls["key_source"]
        return float(np.mean(np.asarray(classify(images)) == labels))
