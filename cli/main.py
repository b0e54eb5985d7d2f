"""`ipguard`: protect Keras classifiers, license them per user, prove theft.

Exit codes: 0 success / positive verdict, 1 negative verdict, 2 usage or input error.
"""

import json
from pathlib import Path

import click

import keras_ipguard
from keras_ipguard import IPGuardError, Reason, Vault, attacks, schemes, settings
from keras_ipguard.embed_options import EmbedOptions

from .options import LazyChoice, given, option, options_of

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
    "key_code_accuracy",
    "identity_watermark_accuracy",
    "false_watermark_rate",
    "baseline_clean_accuracy",
)


def _scheme_settings():
    """One option for every command-line setting of any registered scheme, tagged with the schemes that have it."""
    owners = {}
    for name in schemes.names():
        for field, spec in settings.fields(schemes.REGISTRY.get_class(name).Config):
            if spec.cli:
                owners.setdefault(field.name, (field, spec, []))[2].append(name)
    made = [option(field, spec, tag=", ".join(names)) for field, spec, names in owners.values()]

    def decorate(function):
        for decorator in reversed(made):
            function = decorator(function)
        return function

    return decorate, tuple(owners)


scheme_settings, SCHEME_SETTINGS = _scheme_settings()


def _scheme_config(name, values):
    """The config of scheme `name` from the scheme options given; an option of another scheme is a usage error."""
    config_class = schemes.REGISTRY.get_class(name).Config
    own = {field.name for field, _ in settings.fields(config_class)}
    foreign = [key for key, value in values.items() if value is not None and key not in own]
    if foreign:
        flags = ", ".join("--" + key.replace("_", "-") for key in foreign)
        raise click.UsageError(f"{flags}: not a setting of the {name} scheme; drop it or choose another --scheme")
    return given(config_class, values)


@cli.command()
@options_of(EmbedOptions)
@click.option("--scheme", default="extra-class", show_default=True, type=LazyChoice(schemes.names),
              help="Watermark scheme: ours (extra-class, with identity images) or a comparison scheme "
                   "(see keras_ipguard.schemes).")
@scheme_settings
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Vault directory to create.")
@click.option("--force", is_flag=True, help="Replace an existing vault at --out (and any stale checkpoint).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last epoch checkpoint.")
@json_option
def embed(out, force, resume, as_json, scheme, **values):
    """Train a watermarked classifier and write a new vault at --out."""
    from keras_ipguard.embedding import embed as run_embed

    config = _scheme_config(scheme, {name: values.pop(name) for name in SCHEME_SETTINGS})
    options = EmbedOptions(**given(EmbedOptions, values), scheme={"name": scheme, "config": config})
    result = run_embed(out, options, force=force, resume=resume)
    report = result.report
    lines = [f"vault written: {out}" if result.written else "worker done: the chief (task 0) writes the vault"]
    lines += [f"  {name:<28} {report[name]:.4f}" for name in SUMMARY_METRICS if report.get(name) is not None]
    if "fidelity_drop" in report:
        lines.append(f"  {'fidelity_drop':<28} {report['fidelity_drop']:+.2f} percentage points")
    lines.append(f"  trained {report['epochs']} epochs in {report['train_seconds']:.0f} s "
                 f"({report['examples_per_second']:.0f} examples/s)")
    survival = report.get("key_survival")
    if survival:
        # A run resumed from a choice recorded before the reference model has no natural codes to report.
        left_out = survival.get("natural_codes", 0) - survival.get("natural_codes_kept", 0)
        natural = f"; {left_out} whose code a plain model answers anyway left out" if "natural_codes" in survival \
            else ""
        lines.append(f"  kept the {survival['kept']} of {survival['trained_keys']} keys whose code best survived "
                     f"{survival['rounds']} fine-tuning attacks on a copy ({survival['seconds']:.0f} s; each attack "
                     f"kept {min(survival['round_key_code_all']):.2f}-{max(survival['round_key_code_all']):.2f} of "
                     f"all keys' codes{natural})")
    lines.append(f"report: {out / 'reports' / 'embed.json'}")
    kept = len(report.get("identity_keys", ()))
    if "identity_keys" in report and kept < report["key_count"]:
        lines += ["", f"WARNING: the model misses class {report['num_classes']} on {report['key_count'] - kept} of "
                  f"{report['key_count']} keys; identity images are issued from the other {kept} only (more --epochs "
                  "to use them all)"]
    proof = report.get("self_verification")
    if proof:
        lines += ["", f"verify on the vault's own model: {proof['verdict']}"] + test_lines(proof, proof["key_answer"])
    emit(as_json, result.to_dict(), "\n".join(lines))
    if proof and not proof["owned"]:
        # On stderr only, so that it shows once in a terminal and also beside --json output.
        click.echo("\nWARNING: the vault's own model is NOT provably owned; " + proof["advice"], err=True)


@cli.command()
@vault_option
@click.option("--model", "model", help="Suspect: Keras model file/dir, SavedModel dir, or TF Serving URL "
              "(http://host:port/v1/models/NAME) [default: the vault's own model].")
@click.option("--signature", help="The SavedModel signature to query, e.g. classify [default: serving_default].")
@json_option
def verify(vault_path, model, signature, as_json):
    """Is the suspect model derived from the vault's model? Exit 0 owned, 1 not owned.

    Runs every test the suspect's answers allow: the watermark test (keys
    answer class N) and the key-code test (keys' top-1 task class is their
    secret class; it needs no class N), the key-code rank test where it
    gives scores, and, where `ipguard serve --mark-rate` marked answers, the
    served-marks test (a copy trained on the gateway's answers), combined by
    Bonferroni.
    """
    from keras_ipguard.verification import verify as run_verify

    report = run_verify(Vault.open(vault_path), model, signature=signature)
    lines = [f"suspect: {report.suspect}"] + test_lines(report.to_dict(), report.key_answer)
    lines += [f"  p_value             {report.p_value:.3g} (owned iff < {report.threshold:g})", report.verdict]
    emit(as_json, report.to_dict(), "\n".join(lines))
    raise SystemExit(0 if report.owned else 1)


def test_lines(report, key_answer):
    """One line per verification test of a report (`OwnershipReport.to_dict()`) and its control counts."""
    what = {"watermark": f"keys answered {key_answer}", "key_code": "keys answered their secret task class"}
    lines = []
    for name, test in report["tests"].items():
        if "rank_sum" in test:  # the key-code rank test: mean ranks, not hits
            lines.append(f"  {name + ' test':<19} mean rank {test['mean_rank']:.2f} of the keys' secret classes among "
                         f"{test['classes']} task scores (0 = top, chance {test['chance_mean_rank']:g}), "
                         f"p = {test['p_value']:.3g} (the most cautious null: "
                         f"{'uniform ranks' if test['null'] == 'uniform' else 'the ' + test['null'] + ' controls'})")
            lines += [f"    {control:<17} mean rank {c['mean_rank']:.2f} over {c['images']} controls"
                      for control, c in test["chance_rates"].items() if c["images"]]
            continue
        if name == "served_marks":  # the gateway's marked answers: no controls, an exact chance rate
            lines.append(f"  {name + ' test':<19} {test['hits']}/{test['keys']} of the marked images it answers "
                         f"otherwise than the model got the gateway's mark ({test['marks']} recorded), chance rate "
                         f"{test['chance_rate']:.3g}, p = {test['p_value']:.3g}")
            lines += [f"    user {user:<12} {u['hits']}/{u['other_answers']} of {u['marks']} marks"
                      for user, u in sorted(test["by_user"].items(), key=lambda item: -item[1]["hits"])]
            continue
        lines.append(f"  {name + ' test':<19} {test['accuracy']:.4f} ({test['hits']}/{test['keys']} {what[name]}), "
                     f"chance rate {test['chance_rate']:.3g}, p = {test['p_value']:.3g}")
        lines += [f"    {control:<17} {c['watermark_answers']}/{c['images']} controls hit"
                  for control, c in test["chance_rates"].items()]
    if "watermark" not in report["tests"]:
        lines.append(f"  watermark test      not run: the suspect has {report['num_outputs']} outputs, no class N")
    lines += [f"  {name + ' test':<19} not run: {reason}" for name, reason in (report.get("not_run") or {}).items()]
    return lines


def attack_options(function):
    """The options every `ipguard attack` command shares."""
    for decorator in reversed([
        vault_option,
        click.option("--model", "model", help="Keras model to attack [default: the vault's model]."),
        click.option("--data-dir", type=click.Path(file_okay=False),
                     help="Prepared tfds data directory (else TFDS_DATA_DIR)."),
        click.option("--max-test-examples", type=click.IntRange(min=10),
                     help="Use only the first M test images (half for the attacker)."),
        json_option,
    ]):
        function = decorator(function)
    return function


@cli.group(cls=IPGuardGroup)
def attack():
    """Measure how much of the protection survives what a thief would do.

    The attacker gets the model and half of the test split; every figure is
    measured on the other half. Each command writes reports/attack-NAME.json
    and .png in the vault.
    """


def _run_attack(vault_path, model, data_dir, max_test_examples, as_json, chosen):
    from keras_ipguard import reporting
    from keras_ipguard.suspects import KerasSuspect, open_suspect

    vault = Vault.open(vault_path)
    suspect = open_suspect(model or vault.model_path)
    if not isinstance(suspect, KerasSuspect):
        raise InputError(f"attacks need the model's weights; give a Keras model file, not {suspect.description}")
    threat = attacks.threat_model(vault, data_dir, max_test_examples)
    reports = [each.run(threat, suspect.model).to_dict() for each in chosen]
    written = [reporting.write_attack_report(vault, report)[0] for report in reports]
    if len(reports) > 1:
        written.append(reporting.write_combined_report(vault, reports))
    emit(as_json, reports[0] if len(reports) == 1 else {"attack": "all", "reports": reports},
         reporting.markdown_table(reports) + "\n".join(f"report: {path}" for path in written))


def _attack_command(name):
    """`ipguard attack NAME`, its options read from the attack's declared parameters."""
    attack_class = attacks.REGISTRY.get_class(name)

    @attack.command(name, help=attack_class.summary)
    @attack_options
    @options_of(attack_class.Config)
    def command(vault_path, model, data_dir, max_test_examples, as_json, **values):
        chosen = attacks.get({"name": name, "config": given(attack_class.Config, values)})
        _run_attack(vault_path, model, data_dir, max_test_examples, as_json, [chosen])

    return command


for _name in attacks.names():
    _attack_command(_name)


@attack.command("all")
@attack_options
def attack_all(vault_path, model, data_dir, max_test_examples, as_json):
    """The default suite: every attack, fine-tuning with SGD and Adam and renormalized; writes attack-all.json/.md."""
    _run_attack(vault_path, model, data_dir, max_test_examples, as_json, attacks.suite("default"))


@cli.command("export")
@vault_option
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="TF Serving model base path; the SavedModel goes to OUT/VERSION/.")
@click.option("--version", "version", type=click.IntRange(min=1),
              help="Model version [default: one more than the highest in --out].")
@click.option("--model", "model_path", type=click.Path(exists=True),
              help="Export this Keras model (e.g. from `attack prune --save`) instead of the vault's.")
@json_option
def export_command(vault_path, out, version, model_path, as_json):
    """Write the vault's model as a SavedModel for TF Serving (signatures: serving_default, classify, identity)."""
    from keras_ipguard.models import load_model
    from keras_ipguard.savedmodel import export

    model = load_model(model_path, what="--model") if model_path else None
    result = export(Vault.open(vault_path), out, version, model=model)
    emit(as_json, result.to_dict(), str(result.path))


@cli.group(cls=IPGuardGroup)
def users():
    """Issue, list and revoke user licences (identity images), and show their gateway usage."""


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
    text = (f"revoked {user.name!r} (id {user.id})" if newly else
            f"{user.name!r} was already revoked on {user.to_dict()['revoked']}")
    emit(as_json, {**user.to_dict(), "newly_revoked": newly}, text)


@users.command("usage")
@vault_option
@json_option
def users_usage(vault_path, as_json):
    """Per user: licences issued by `ipguard serve`, prediction requests and images served, answers marked
    (`serve --mark-rate`), and last seen."""
    from keras_ipguard.serve.admin import usage_rows

    rows = usage_rows(Vault.open(vault_path))
    lines = [f"{'id':>6}  {'name':<24} {'status':<8} {'licences':>8} {'requests':>9} {'images':>9} {'refused':>8} "
             f"{'marked':>7}  last seen"]
    lines += [f"{r['id']:>6}  {r['name']:<24} {'active' if r['active'] else 'revoked':<8} {r['licences']:>8} "
              f"{r['requests']:>9} {r['images']:>9} {r['refused']:>8} {r['marked']:>7}  {r['last_seen'] or 'never'}"
              for r in rows]
    emit(as_json, {"users": rows}, "\n".join(lines) if rows else "no users yet")


@cli.command()
@vault_option
@click.option("--model", "model", type=click.Path(file_okay=False),
              help="An `ipguard export` SavedModel, DIR/N [default: the vault's own model, in process].")
@click.option("--upstream", help="Forward to this TF Serving REST model instead: http://host:port/v1/models/NAME "
              "(serving all N+1 outputs, as the export's serving_default).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8500, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port, printed at start).")
@click.option("--name", help="The model's name in /v1/models/NAME [default: as TF Serving names it: the base "
              "path's name for --model DIR/N, NAME of --upstream, else the vault's directory name].")
@click.option("--token-ttl", default=3600, show_default=True, type=click.IntRange(min=1),
              help="Seconds a licence token stays valid.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True),
              help="Per-user limit in prediction requests per second [default: none].")
@click.option("--mark-rate", type=click.FloatRange(min=0, max=1), default=0, show_default=True,
              help="Answer this fraction of images with a keyed wrong class, recorded in the vault, so that a "
              "copy trained on the answers (extraction) is proven by `verify` (served marks). Each licensed "
              "user gets that share of wrong answers; 0.01-0.02 is typical.")
def serve(vault_path, model, upstream, host, port, name, token_ttl, rate, mark_rate):
    """Serve the model to licensed users only: TF Serving's REST API behind an identity-image licence check.

    POST an identity image to /v1/licences for a bearer token, then
    POST /v1/models/NAME:predict with `Authorization: Bearer TOKEN`.
    The owner's page is at /admin. SIGTERM or Ctrl-C stops it, writing the
    audit log out.
    """
    from keras_ipguard.serve import open_gateway, run

    gateway = open_gateway(Vault.open(vault_path), model=model, upstream=upstream, name=name,
                           token_ttl=token_ttl, rate=rate, mark_rate=mark_rate or None)
    shown = f"[{host}]" if ":" in host else host

    def ready(bound):
        click.echo(f"serving {gateway.name} ({gateway.backend.description}) at http://{shown}:{bound}/v1/models/"
                   f"{gateway.name}", err=True)
        if gateway.marks is not None:
            click.echo(f"marking {mark_rate:g} of the answers (served marks, recorded in "
                       f"{gateway.vault.registry.path})", err=True)
        click.echo(f"owner's page: http://{shown}:{bound}/admin?token={gateway.admin_token}", err=True)

    run(gateway, host=host, port=port, on_ready=ready)


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
    classify = None
    note = "model check skipped: the vault holds no model, so only payload, MAC and registry were checked"
    if model or vault.has_model:
        from keras_ipguard.suspects import open_suspect

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
