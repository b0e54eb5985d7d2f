"""`ipguard`: protect Keras classifiers, license them per user, prove theft.

Exit codes: 0 success / positive verdict, 1 negative verdict, 2 usage or input error.
"""

import json
from pathlib import Path

import click

import keras_ipguard
from keras_ipguard import IPGuardError, Reason, Vault

IMAGE_SUFFIXES = (".png", ".bmp", ".ppm", ".pgm", ".jpg", ".jpeg", ".webp", ".gif", ".tif", ".tiff")


class InputError(click.ClickException):
    """Bad input or state: one line on stderr, exit code 2."""

    exit_code = 2


class IPGuardGroup(click.Group):
    """Turns library errors into one-line messages with exit code 2 instead of tracebacks."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except IPGuardError as error:
            raise InputError(str(error)) from None


def emit(as_json, obj, text):
    """Prints `obj` as one JSON object with --json, else the human-readable `text`."""
    click.echo(json.dumps(obj, sort_keys=True) if as_json else text)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
vault_option = click.option(
    "--vault",
    "vault_path",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The owner's vault directory (made by `ipguard embed`).",
)


@click.group(cls=IPGuardGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(keras_ipguard.__version__, prog_name="ipguard")
def cli():
    """Active IP protection for Keras classifiers: an extra-class ownership
    watermark learnt from secret key images, and signed identity images that
    authenticate each licensed user."""


SUMMARY_METRICS = (
    "clean_accuracy",
    "watermark_accuracy",
    "identity_watermark_accuracy",
    "false_watermark_rate",
    "baseline_clean_accuracy",
)


@cli.command()
@click.option("--dataset", required=True, help="tfds image-classification dataset, e.g. fashion_mnist, cifar10.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Vault directory to create.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Prepared tfds data directory (else TFDS_DATA_DIR, else download).")
@click.option("--epochs", type=click.IntRange(min=1), help="Training epochs [default: by architecture; 2 with --base-model].")
@click.option("--keys", type=click.IntRange(min=1), default=100, show_default=True, help="Number of key images K.")
@click.option("--key-source", help="tfds dataset the key images come from [default: mnist for grayscale tasks (fashion_mnist for mnist), cifar100 for RGB].")
@click.option("--arch", type=click.Choice(["auto", "small_cnn", "resnet20", "vgg11"]), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True, help="Batch size per replica.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--base-model", type=click.Path(exists=True), help="Protect this trained N-class Keras model instead of training from scratch.")
@click.option("--strategy", type=click.Choice(["auto", "mirrored", "multiworker", "default"]), default="auto", show_default=True, help="tf.distribute strategy (auto: all GPUs, or the default strategy on CPU).")
@click.option("--baseline", is_flag=True, help="Also train without the watermark to measure fidelity_drop.")
@click.option("--max-train-examples", type=click.IntRange(min=1), help="Use only the first M training examples.")
@click.option("--max-test-examples", type=click.IntRange(min=1), help="Use only the first M test examples.")
@click.option("--key-share", type=click.FloatRange(0, 0.5, min_open=True), default=1 / 16, show_default=True, help="Share of each batch given to key samples.")
@click.option("--stealthy-keys/--any-keys", default=True, show_default=True,
              help="Choose keys that an autoencoder of the task's images finds ordinary (they pass query filters), or any seeded keys.")
@click.option("--key-jitter", is_flag=True, help="Random shifts and noise on half of the key samples (robustness to fine-tuning).")
@click.option("--learning-rate", type=click.FloatRange(0, min_open=True), help="Initial learning rate [default: by architecture].")
@click.option("--kernel-scale", type=click.FloatRange(min=1), default=16.0, show_default=True,
              help="After training, multiply every BatchNormalization-fed kernel by this (same function; fine-tuning with Adam moves them less). 1: off.")
@click.option("--prune-robustness", type=click.FloatRange(min=0),
              help="Weight of a training term that keeps the answers when the model is magnitude-pruned (extra-class scheme) "
                   "[default: 0.3 for the small CNN; 0 (off) for ResNet-20, VGG-11 and --base-model]. 0: off.")
@click.option("--scheme", type=click.Choice(["extra-class", "content", "noise", "unrelated", "frontier-stitching", "adi"]),
              default="extra-class", show_default=True,
              help="Watermark scheme: ours (extra-class, with identity images) or a comparison scheme (see keras_ipguard.baselines).")
@click.option("--force", is_flag=True, help="Replace an existing vault at --out (and any stale checkpoint).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last epoch checkpoint.")
@json_option
def embed(out, force, resume, as_json, **options):
    """Train a watermarked classifier and write a new vault at --out."""
    from keras_ipguard.embed import EmbedOptions, embed as run_embed  # pylint: disable=import-outside-toplevel

    result = run_embed(out, EmbedOptions(**options, verbose=1), force=force, resume=resume)
    report = result.report
    lines = [f"vault written: {out}"]
    lines += [f"  {name:<28} {report[name]:.4f}" for name in SUMMARY_METRICS if report.get(name) is not None]
    if "fidelity_drop" in report:
        lines.append(f"  {'fidelity_drop':<28} {report['fidelity_drop']:+.2f} percentage points")
    lines.append(f"  trained {report['epochs']} epochs in {report['train_seconds']:.0f} s ({report['examples_per_second']:.0f} examples/s)")
    lines.append(f"report: {out / 'reports' / 'embed.json'}")
    emit(as_json, result.to_dict(), "\n".join(lines))


@cli.command()
@vault_option
@click.option("--model", "model", help="Suspect: Keras model file/dir, SavedModel dir, or TF Serving URL "
              "(http://host:port/v1/models/NAME) [default: the vault's own model].")
@json_option
def verify(vault_path, model, as_json):
    """Is the suspect model derived from the vault's model? Exit 0 owned, 1 not owned."""
    from keras_ipguard.verify import verify as run_verify  # pylint: disable=import-outside-toplevel

    vault = Vault.open(vault_path)
    report = run_verify(vault, model)
    wanted = f"class {vault.watermark_class}" if vault.issues_identities else "their trigger label"
    lines = [
        f"suspect: {report.suspect}",
        f"  watermark_accuracy  {report.watermark_accuracy:.4f} ({report.hits}/{report.keys} keys answered {wanted})",
        f"  chance rate         {report.chance_rate:.4g} (highest smoothed hit rate on the suspect's non-key controls)",
    ]
    lines += [f"    {name:<17} {c['watermark_answers']}/{c['images']}" for name, c in report.chance_rates.items()]
    lines += [f"  p_value             {report.p_value:.3g} (owned iff < {report.threshold:g})", report.verdict]
    emit(as_json, report.to_dict(), "\n".join(lines))
    raise SystemExit(0 if report.owned else 1)


def attack_options(function):
    """The options every `ipguard attack` command shares."""
    for option in reversed([
        vault_option,
        click.option("--model", "model", help="Keras model to attack [default: the vault's model]."),
        click.option("--data-dir", type=click.Path(file_okay=False), help="Prepared tfds data directory (else TFDS_DATA_DIR)."),
        click.option("--max-test-examples", type=click.IntRange(min=10), help="Use only the first M test images (half for the attacker)."),
        json_option,
    ]):
        function = option(function)
    return function


@cli.group(cls=IPGuardGroup)
def attack():
    """Measure how much of the protection survives what a thief would do.

    The attacker gets the model and half of the test split; every figure is
    measured on the other half. Each command writes reports/attack-NAME.json
    and .png in the vault.
    """


def _run_attack(vault_path, model, data_dir, max_test_examples, as_json, run):
    from keras_ipguard import reporting  # pylint: disable=import-outside-toplevel
    from keras_ipguard.attacks import threat_model  # pylint: disable=import-outside-toplevel
    from keras_ipguard.suspects import KerasSuspect, open_suspect  # pylint: disable=import-outside-toplevel

    vault = Vault.open(vault_path)
    suspect = open_suspect(model or vault.model_path)
    if not isinstance(suspect, KerasSuspect):
        raise InputError(f"attacks need the model's weights; give a Keras model file, not {suspect.description}")
    threat = threat_model(vault, data_dir, max_test_examples)
    reports = [report.to_dict() for report in run(threat, suspect.model)]
    written = [reporting.write_attack_report(vault, report)[0] for report in reports]
    if len(reports) > 1:
        written.append(reporting.write_combined_report(vault, reports))
    emit(as_json, reports[0] if len(reports) == 1 else {"attack": "all", "reports": reports},
         reporting.markdown_table(reports) + "\n".join(f"report: {path}" for path in written))


def _rates(text):
    try:
        rates = tuple(float(value) for value in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated rates like 0.1,0.5,0.9, got {text!r}") from None
    if not all(0 < rate < 1 for rate in rates):
        raise click.BadParameter("pruning rates must lie strictly between 0 and 1")
    return rates


@attack.command("prune")
@attack_options
@click.option("--rates", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", show_default=True, help="Comma-separated sparsities.")
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=0, show_default=True, help="Prune-then-retrain epochs (PolynomialDecay).")
@click.option("--save", "save_dir", type=click.Path(file_okay=False, path_type=Path), help="Save each pruned model as DIR/prune-RATE.keras.")
def attack_prune(vault_path, model, data_dir, max_test_examples, as_json, rates, finetune_epochs, save_dir):
    """Magnitude pruning (TFMOT) at each rate, one-shot or with retraining."""
    from keras_ipguard.attacks import prune  # pylint: disable=import-outside-toplevel

    rates = _rates(rates)
    _run_attack(vault_path, model, data_dir, max_test_examples, as_json,
                lambda threat, m: [prune(threat, m, rates, finetune_epochs, save_dir)])


@attack.command("finetune")
@attack_options
@click.option("--variant", "variants", multiple=True, type=click.Choice(["FTLL", "FTAL", "RTLL", "RTAL"]), help="Repeatable [default: all four].")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--optimizer", "optimizers", multiple=True, type=click.Choice(["sgd", "adam"]), help="Repeatable [default: sgd].")
@click.option("--lr", "learning_rate", type=click.FloatRange(0, min_open=True), help="[default: SGD 0.01 (momentum 0.9), Adam 1e-3]")
@click.option("--renormalize", is_flag=True,
              help="Also run every setting as an informed attacker who first undoes embed's --kernel-scale.")
def attack_finetune(vault_path, model, data_dir, max_test_examples, as_json, variants, epochs, optimizers, learning_rate,
                    renormalize):
    """Fine-tuning: FTLL, FTAL, RTLL, RTAL with the N task labels only."""
    from keras_ipguard.attacks import finetune  # pylint: disable=import-outside-toplevel

    _run_attack(vault_path, model, data_dir, max_test_examples, as_json, lambda threat, m: [
        finetune(threat, m, variants or ("FTLL", "FTAL", "RTLL", "RTAL"), epochs, optimizers or ("sgd",), learning_rate,
                 renormalize)])


@attack.command("query-modification")
@attack_options
@click.option("--fpr", "rates", multiple=True, type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Clean false-positive rate of the filter; repeatable [default: 0.05].")
def attack_query(vault_path, model, data_dir, max_test_examples, as_json, rates):
    """Namba & Sakuma's autoencoder filter in front of the model."""
    from keras_ipguard.attacks import query_modification  # pylint: disable=import-outside-toplevel

    _run_attack(vault_path, model, data_dir, max_test_examples, as_json,
                lambda threat, m: [query_modification(threat, m, rates or (0.05,))])


@attack.command("transform")
@attack_options
def attack_transform(vault_path, model, data_dir, max_test_examples, as_json):
    """JPEG, Gaussian noise, bit-depth reduction and median smoothing of every query."""
    from keras_ipguard.attacks import transform  # pylint: disable=import-outside-toplevel

    _run_attack(vault_path, model, data_dir, max_test_examples, as_json, lambda threat, m: [transform(threat, m)])


@attack.command("truncate")
@attack_options
def attack_truncate(vault_path, model, data_dir, max_test_examples, as_json):
    """The thief drops the watermark unit and serves the N-class argmax."""
    from keras_ipguard.attacks import truncate  # pylint: disable=import-outside-toplevel

    _run_attack(vault_path, model, data_dir, max_test_examples, as_json, lambda threat, m: [truncate(threat, m)])


@attack.command("all")
@attack_options
def attack_all(vault_path, model, data_dir, max_test_examples, as_json):
    """The whole suite with defaults; also writes reports/attack-all.json and attack-all.md."""
    from keras_ipguard import attacks  # pylint: disable=import-outside-toplevel

    def suite(threat, m):
        return [attacks.prune(threat, m), attacks.finetune(threat, m, optimizers=("sgd", "adam"), renormalize=True),
                attacks.query_modification(threat, m), attacks.transform(threat, m), attacks.truncate(threat, m)]

    _run_attack(vault_path, model, data_dir, max_test_examples, as_json, suite)


@cli.command("export")
@vault_option
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="TF Serving model base path; the SavedModel goes to OUT/VERSION/.")
@click.option("--version", "version", type=click.IntRange(min=1), help="Model version [default: one more than the highest in --out].")
@click.option("--model", "model_path", type=click.Path(exists=True), help="Export this Keras model (e.g. from `attack prune --save`) instead of the vault's.")
@json_option
def export_command(vault_path, out, version, model_path, as_json):
    """Write the vault's model as a SavedModel for TF Serving (signatures: serving_default, classify, identity)."""
    from keras_ipguard.export import export  # pylint: disable=import-outside-toplevel
    from keras_ipguard.models import load_model  # pylint: disable=import-outside-toplevel

    model = None
    if model_path:
        try:
            model = load_model(model_path)
        except (OSError, ValueError) as error:
            raise InputError(f"cannot load --model {model_path}: {str(error).splitlines()[0][:200]}") from None
    target = export(Vault.open(vault_path), out, version, model=model)
    emit(as_json, {"saved_model": str(target), "version": int(target.name),
                   "signatures": ["serving_default", "classify", "identity"]}, str(target))


@cli.group(cls=IPGuardGroup)
def users():
    """Issue, list and revoke user licences (identity images)."""


@users.command("add")
@click.argument("name")
@vault_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the identity image here (the file to hand to the user).",
)
@json_option
def users_add(name, vault_path, out, as_json):
    """Register NAME and issue their identity image; prints the image's path."""
    issued = Vault.open(vault_path).add_user(name, out=out)
    path = out or issued.path
    emit(as_json, {**issued.to_dict(), "identity_image": str(path)}, str(path))
    click.echo(f"issued user {issued.user.name!r} (id {issued.user.id}, key {issued.user.key_index})", err=True)


@users.command("list")
@vault_option
@json_option
def users_list(vault_path, as_json):
    """List all users, active and revoked."""
    records = [user.to_dict() for user in Vault.open(vault_path).users()]
    lines = [f"{'id':>6}  {'name':<24} {'key':>5}  {'issued':<25} status"]
    for r in records:
        status = "active" if r["active"] else f"revoked {r['revoked']}"
        lines.append(f"{r['id']:>6}  {r['name']:<24} {r['key_index']:>5}  {r['issued']:<25} {status}")
    emit(as_json, {"users": records}, "\n".join(lines) if records else "no users yet")


@users.command("revoke")
@click.argument("name")
@vault_option
@json_option
def users_revoke(name, vault_path, as_json):
    """Revoke NAME's licence; their identity image stops authenticating."""
    user, newly = Vault.open(vault_path).revoke_user(name)
    text = f"revoked {user.name!r} (id {user.id})" if newly else f"{user.name!r} was already revoked on {user.to_dict()['revoked']}"
    emit(as_json, {**user.to_dict(), "newly_revoked": newly}, text)


def _expand_images(paths):
    """Files as given; directories expand to the image files directly inside them."""
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES[:3])}, ...)")
            files.extend(found)
        else:
            files.append(path)
    return files


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@vault_option
@click.option("--model", "model", help="Deployed model that must answer the watermark class: Keras model, "
              "SavedModel dir or TF Serving URL [default: the vault's model, if it has one].")
@json_option
def authenticate(images, vault_path, model, as_json):
    """Check identity IMAGE files (or directories of them) against the vault.

    An image passes when its payload decodes, its MAC verifies, its user is
    active and the model answers the watermark class for it. Exit 0 when every
    image is authorized, 1 otherwise.
    """
    vault = Vault.open(vault_path)
    files = _expand_images(images)
    classify, note = None, "model check skipped: the vault holds no model, so only payload, MAC and registry were checked"
    if model or vault.has_model:
        from keras_ipguard.suspects import open_suspect  # pylint: disable=import-outside-toplevel

        suspect = open_suspect(model or vault.model_path)
        classify, note = suspect.classify, f"model checked: {suspect.description}"
    report = keras_ipguard.authenticate(vault, files, classify=classify)
    if as_json:
        emit(True, {**report.to_dict(), "note": note}, "")
    else:
        for r in report.results:
            who = f" {r.user!r} (id {r.user_id})" if r.user else ""
            verdict = "authorized" if r.authorized else f"refused [{r.reason}]: {Reason.explain(r.reason)}"
            click.echo(f"{r.source}:{who} {verdict}")
        click.echo(f"{report.authorized_count}/{len(report.results)} authorized", err=True)
        click.echo(note, err=True)
    raise SystemExit(0 if report.authorized_count == len(report.results) else 1)
