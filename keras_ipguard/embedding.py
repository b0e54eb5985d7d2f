"""Training the watermark into a classifier and writing the owner's vault (`ipguard embed`).

`embed` is a short runner: options → data → scheme → train → measure → vault.
What is trained is the scheme's (`keras_ipguard.schemes`); how is the run's
(`training.EmbedRun`: recipe, strategy, checkpoints); the report is
`embed_report`'s.
"""

import dataclasses
import json
import tempfile
from pathlib import Path

from . import keycode
from .architectures import auto_architecture
from .backend import keras as _keras
from .base_models import input_shape_of
from .embed_options import EmbedOptions
from .embed_report import embed_report, measure
from .errors import IPGuardError
from .models import save_model
from .sources import open_task
from .survival import keep_surviving_keys
from .training import EmbedRun, make_strategy
from .vault import Vault
from .workdir import WorkDir


@dataclasses.dataclass
class EmbedResult:
    """The vault written and the figures of `reports/embed.json`."""

    vault_path: Path
    report: dict
    written: bool = True  # False on the workers of a multi-worker run other than the chief

    def to_dict(self):
        return {"vault": str(self.vault_path) if self.written else None, **self.report}


def embed(out, options, force=False, resume=False):
    """Trains a watermarked classifier and writes a new vault at `out`.

    Args:
        out: the vault directory to create.
        options: an `EmbedOptions`.
        force: replace an existing vault (and any stale checkpoint).
        resume: continue an interrupted run from its last epoch checkpoint.

    Returns:
        An `EmbedResult`; the vault is written atomically only when training succeeds.

    Example:

        result = embed("fm-vault", EmbedOptions(dataset="fashion_mnist", epochs=3))
        print(result.report["watermark_accuracy"])
    """
    out = Path(out)
    if (out / "vault.json").exists() and not force:
        raise IPGuardError(f"{out} already holds a vault; choose another --out or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise IPGuardError(f"{out} exists and is not a directory")
    scheme = options.scheme
    strategy = make_strategy(options.strategy)  # first: a multi-worker strategy must exist before any TF op
    run = EmbedRun(options, _open_task(options), None, strategy)
    run.arch = _architecture(options, run.info.input_shape)  # before check: the scheme's plan depends on it
    scheme.check(run)
    run.lr_cycles = scheme.lr_cycles(run)
    run.work = WorkDir.open(out, options.to_config(), resume, force, chief=run.is_chief)
    model = _build_model(run, scheme)
    secret = scheme.train(run, model)
    secret, facts = keep_surviving_keys(run, scheme, model, secret)  # before finish: the informed thief undoes it
    figures = facts | scheme.finish(run, model) | measure(run, scheme, secret, model)
    report = embed_report(run, scheme, secret, figures)
    if run.is_chief:  # in a multi-worker run, the chief alone writes the vault
        _write_vault(out, run, scheme, secret, model, report, force)
        run.work.remove()
    else:  # saving reads the variables collectively: the other workers save too, to a throw-away place
        with tempfile.TemporaryDirectory() as throwaway:
            save_model(model, Path(throwaway))
    return EmbedResult(out, report, written=run.is_chief)


def _open_task(options):
    """The task's data (streamed), at the image size and channels of --image-size or the base model."""
    shape = input_shape_of(options.base_model) if options.base_model else (None, None, None)
    size = options.image_size or (shape[:2] if options.base_model else None)
    return open_task(options.dataset, options.data_dir, size, shape[2], options.test_fraction, options.seed,
                     options.max_train_examples, options.max_test_examples, options.skip_bad_images)


def _architecture(options, input_shape):
    """The architecture to train: "base_model" for --base-model, else --arch (auto: chosen by input shape)."""
    if options.base_model:
        return "base_model"
    return auto_architecture(input_shape) if options.arch == "auto" else options.arch


def _build_model(run, scheme):
    """The model to train: the scheme's, of the architecture asked for, or the user's base model grown by it."""
    options = run.options
    _keras().utils.set_random_seed(options.seed)
    with run.strategy.scope():
        if options.base_model:
            model, run.baseline_accuracy, note = scheme.protect_base_model(run, options.base_model)
            run.report["base_model_note"] = note
            return model
        return scheme.build_model(run, run.arch)


def self_verification(path, model=None):
    """`verify` on the vault at `path` with its own model (`model`, the one just saved there, or the saved file):
    every test, the verdict, and what to do if not owned.

    A model whose keys answer right can still be unprovable (when clean images answer the same as often):
    embed reports that loudly rather than as a silent 1.0.
    """
    from .verification import verify

    result = verify(Vault.open(path), model).to_dict()
    keep = ("owned", "p_value", "threshold", "tests", "verdict", "key_answer", "num_outputs")
    return {**{name: result[name] for name in keep}, "advice": (
        "" if result["owned"] else "train longer (--epochs) or on more data (--max-train-examples), or give the "
        "keys more of each batch (--key-share, up to 0.25), then embed again; `ipguard verify --vault` shows the "
        "tests")}


def _write_vault(out, run, scheme, secret, model, report, force):
    """Writes the vault atomically: keys, controls, the scheme's record, the model and the report."""
    num_classes = run.info.num_classes
    key_source = {"key_source_split": "train", "key_source_indices": secret.key_source_indices} \
        if secret.key_source_indices else {}

    def populate(tmp):
        save_model(model, tmp / "model")
        # In a multi-worker run the chief alone is here: its model would wait on the other workers' collectives.
        report["self_verification"] = self_verification(tmp, None if run.multi_worker else model)
        (tmp / "reports" / "embed.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    Vault.create(
        out, dataset=run.info.name, num_classes=num_classes, input_shape=run.info.input_shape,
        key_images=secret.keys, key_source=secret.key_source, architecture=run.arch, seed=run.options.seed,
        extra={"scheme": scheme.to_record(), "watermark_class": scheme.watermark_class(num_classes),
               "key_labels": [int(label) for label in secret.labels], "trigger": secret.details or None,
               "class_names": list(run.info.class_names), "data_source": run.task.record, **key_source,
               **({"key_code": keycode.to_record(secret.key_codes)} if secret.key_codes is not None else {}),
               **({"identity_keys": report["identity_keys"]} if "identity_keys" in report else {})},
        controls=secret.controls, populate=populate, owner_key=run.owner_key, force=force,
    )


__all__ = ["EmbedOptions", "EmbedResult", "embed"]
