"""The paper's comparison, reproduced: every scheme embedded, verified and attacked alike (`make paper`).

    python -m keras_ipguard.paper [--dataset fashion_mnist --dataset cifar10] [--work runs/paper]
                                  [--out docs/results/paper] [--profile auto|full|reduced]

For each dataset, every scheme of `keras_ipguard.schemes` is embedded into
the same architecture with the same seed and epochs, verified, and put through
the `paper` attack suite (`attacks.SUITES`: pruning sweep, FTAL and RTAL
fine-tuning with SGD, query modification at 5% false positives, JPEG,
truncation). The identity images of schemes that issue them are issued to
real users and checked, with a forgery corpus. The first scheme (ours, in
registry order) also trains the plain baseline every scheme's fidelity drop
is measured against.

Vaults go under --work and are reused when present, with each finished
scheme's figures (reports/paper-row.json), so an interrupted run continues
where it stopped (a scheme's checkpoint left by other settings is started
over, saying so); delete a scheme's vault to measure it again. Results go to
--out/<dataset>/: results.json (all figures, the command, settings, machine
and date), table.md, prune.png and attacks.png, rewritten after every scheme
(until the last, marked partial, with the schemes still to run). A run of
some schemes (`--scheme`) over a results.json of the same settings updates
their rows and keeps the others', naming the earlier runs (`earlier_runs`);
their fidelity is measured against the recorded plain baseline unless the run
re-measures ours, which trains it again.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

# Dataset settings. `full`: the architecture's default epochs on all data.
# `reduced`: what fits a 2-core CPU in minutes (CIFAR-10 only; stated in the results).
PROFILES = {
    "fashion_mnist": {"full": {}, "reduced": {}},
    "cifar10": {"full": {}, "reduced": {"epochs": 10, "max_train_examples": 15000, "max_test_examples": 2000}},
}
ATTACK_COLUMNS = ("prune 0.5", "prune 0.8", "FTAL", "RTLL", "RTAL", "FTAL Adam informed", "query-mod 5%", "JPEG 75",
                  "truncate", "extract")
USERS, REVOKED = 100, 10
FORGERIES = {"random-lsb": 3000, "bit-flip": 2000, "other-secret": 1000, "revoked": 1000, "clean": 2000, "jpeg": 1000}
# Besides FORGERIES: one genuine image with its LSB flipped at each pixel in turn (H*W*C images).


def log(message):
    print(f"[paper {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def settings_for(dataset, profile):
    """The embed settings of `dataset` under `profile` ('auto' = full with a GPU, else reduced)."""
    if profile == "auto":
        from .backend import tensorflow

        profile = "full" if tensorflow().config.list_physical_devices("GPU") else "reduced"
    return profile, dict(PROFILES.get(dataset, {"full": {}, "reduced": {}})[profile])


def embed_scheme(work, dataset, scheme, settings, data_dir, baseline=False):
    """The scheme's vault under `work`, embedded now unless a finished one is there."""
    from .embedding import EmbedOptions, embed
    from .errors import StaleCheckpointError
    from .vault import Vault
    from .workdir import WorkDir

    path = work / dataset / scheme
    if (path / "reports" / "embed.json").is_file():
        log(f"{dataset} {scheme}: reusing {path}")
        return Vault.open(path)
    log(f"{dataset} {scheme}: embedding")
    embed_settings = {k: v for k, v in settings.items() if k != "attack_epochs"}
    options = EmbedOptions(dataset=dataset, data_dir=data_dir, scheme=scheme, seed=0, verbose=2, baseline=baseline,
                           **embed_settings)
    try:
        embed(path, options, force=path.exists(), resume=WorkDir.path_for(path).exists())
    except StaleCheckpointError as error:  # left by a run of other settings (older defaults): start over
        log(f"{dataset} {scheme}: {error}; starting over")
        embed(path, options, force=True)
    return Vault.open(path)


def identity_figures(vault, classify):
    """identity_auth_rate of USERS genuine users (REVOKED of them then revoked) and forged_acceptance_rate."""
    from . import metrics
    from .authentication import authenticate
    from .images import read_image

    records = vault.users()
    if not records:
        for index in range(USERS):
            vault.add_user(f"paper-user-{index:03d}")
        for index in range(USERS - REVOKED, USERS):
            vault.revoke_user(f"paper-user-{index:03d}")
        records = vault.users()
    active = [r for r in records if r.active]
    revoked = [r for r in records if not r.active]
    genuine = np.stack([read_image(vault.identities_path / r.image_file, vault.input_shape) for r in active])
    report = authenticate(vault, list(genuine), classify=classify, log=False)
    corpus = metrics.forgery_corpus(vault, genuine, revoked, vault.controls["key_source"],
                                    np.random.default_rng(0),
                                    {**FORGERIES, "pixel-flip": int(np.prod(vault.input_shape))})
    accepted = {kind: authenticate(vault, list(images), classify=classify, log=False).authorized_count
                for kind, images in corpus.items()}
    total = sum(len(images) for images in corpus.values())
    return {"identity_auth_rate": report.authorized_count / len(genuine), "identity_users": len(genuine),
            "forged_acceptance_rate": sum(accepted.values()) / total, "forgeries": total,
            "forgeries_accepted_by_kind": accepted}


def attack_scheme(vault, data_dir, max_test_examples, attack_epochs=None):
    """The `paper` suite against the vault's model: the unattacked figures, {column: setting dict}, the reports."""
    from . import attacks, reporting
    from .models import load_model

    model = load_model(vault.model_path)
    threat = attacks.threat_model(vault, data_dir, max_test_examples)
    reports = [report.to_dict() for report in attacks.run_suite(
        threat, model, "paper", on_attack=lambda attack: log(f"  attack {attack.name}"), epochs=attack_epochs)]
    for report in reports:
        reporting.write_attack_report(vault, report)
    by_attack = {r["attack"]: r for r in reports}
    prune_rows = {row["rate"]: row for row in by_attack["prune"]["settings"]}
    finetune_rows = {(row["variant"], row["optimizer"], row["kernels"]): row
                     for row in by_attack["finetune"]["settings"]}
    columns = {
        "prune 0.5": prune_rows[0.5], "prune 0.8": prune_rows[0.8],
        "FTAL": finetune_rows["FTAL", "sgd", None], "RTLL": finetune_rows["RTLL", "sgd", None],
        "RTAL": finetune_rows["RTAL", "sgd", None], "FTAL Adam informed": finetune_rows["FTAL", "adam", "renormalized"],
        "query-mod 5%": by_attack["query-modification"]["settings"][0],
        "JPEG 75": by_attack["transform"]["settings"][0],
        "truncate": by_attack["truncate"]["settings"][0],
        "extract": by_attack["extract"]["settings"][0],
    }
    return by_attack["prune"]["unattacked"], columns, reports


def run_dataset(dataset, work, out, profile, data_dir, scheme_names, overrides=None):
    profile, settings = settings_for(dataset, profile)
    if not settings:
        profile = "full"  # this dataset's reduced profile is its full one
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if overrides:
        profile = "custom"
        settings.update(overrides)
    rows, plain_accuracy, earlier = recorded_rows(out / dataset, profile, settings, scheme_names)
    result = None
    for index, scheme in enumerate(scheme_names):
        started = time.time()
        # The plain baseline comes with the registry's first scheme (ours), or with this run's first where no
        # recorded result of the same settings has one.
        trains_baseline = scheme == _first_scheme() or (index == 0 and plain_accuracy is None)
        vault = embed_scheme(work, dataset, scheme, settings, data_dir, baseline=trains_baseline)
        embed_report = json.loads((vault.reports_path / "embed.json").read_text())
        if trains_baseline:
            plain_accuracy = embed_report.get("baseline_clean_accuracy", plain_accuracy)
        finished = vault.reports_path / "paper-row.json"
        if finished.is_file():  # a finished scheme of an interrupted run
            rows[scheme] = json.loads(finished.read_text())
        else:
            rows[scheme] = _scheme_row(vault, embed_report, data_dir, settings, started)
        # After every scheme: an interrupted run leaves the table of what finished, marked partial.
        result = _result(dataset, profile, settings, rows, plain_accuracy, scheme_names[index + 1:], earlier,
                         scheme_names[:index + 1])
        write_outputs(result, out / dataset)
    return result


def _first_scheme():
    from .schemes import names

    return names()[0]


def recorded_rows(target, profile, settings, scheme_names):
    """(rows, plain accuracy, earlier runs) of the results.json under `target` when it was made with the same
    profile and settings: a run of some schemes updates their rows and keeps the others' (with their plain
    baseline, unless this run trains ours, which trains it again). Else nothing is kept."""
    path = target / "results.json"
    if not path.is_file():
        return {}, None, []
    try:
        recorded = json.loads(path.read_text())
        if recorded.get("profile") != profile or recorded.get("settings") != settings:
            log(f"{path}: made with other settings ({recorded.get('profile')} {recorded.get('settings')}); "
                "replacing it")
            return {}, None, []
        kept = {name: row for name, row in recorded["schemes"].items() if name not in scheme_names}
        # What that run measured itself (a file from before `run_schemes`: all its rows).
        measured = sorted(recorded.get("run_schemes", recorded["schemes"]))
        earlier = recorded.get("earlier_runs", []) + [{"command": recorded["command"], "date": recorded["date"],
                                                       "schemes": measured}]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        log(f"{path}: unreadable ({error}); replacing it")
        return {}, None, []
    if kept:
        log(f"{path}: keeping the recorded rows of {', '.join(sorted(kept))}")
    plain = None if _first_scheme() in scheme_names else recorded.get("plain_clean_accuracy")
    return kept, plain, earlier if kept else []


def _scheme_row(vault, embed_report, data_dir, settings, started):
    """One scheme's figures: verification, identities where the scheme issues them, the `paper` attack suite."""
    from . import schemes
    from .models import load_model, predict_classes
    from .verification import verify

    scheme = schemes.of_vault(vault)
    ownership = verify(vault).to_dict()
    row = {"scheme": scheme.name, "embed": embed_report, "verify": ownership}
    if scheme.issues_identities and not vault.identity_keys:  # its model answers class N on no key
        row["identity_note"] = "no identity image can be issued: the model answers class N on none of the keys"
    elif scheme.issues_identities:
        model = load_model(vault.model_path)
        row["identity"] = identity_figures(vault, lambda images, m=model: predict_classes(m, images))
    unattacked, columns, reports = attack_scheme(vault, data_dir, settings.get("max_test_examples"),
                                                   settings.get("attack_epochs"))
    row.update(unattacked=unattacked, attacks=columns, attack_reports=reports, seconds=round(time.time() - started, 1))
    vault.write_report("paper-row", row)
    log(f"{vault.dataset} {scheme.name}: clean {embed_report['clean_accuracy']:.4f} watermark "
        f"{embed_report['watermark_accuracy']:.4f} owned {ownership['owned']}")
    return row


def _result(dataset, profile, settings, rows, plain_accuracy, pending, earlier=(), measured=None):
    """results.json's content: the finished schemes' rows, `pending`, the schemes still to run,
    `run_schemes`, the rows this run measured (`measured`, default all), and `earlier_runs`, the runs whose rows
    it keeps (command, date, the schemes they measured)."""
    from .training import machine_info

    for row in rows.values():
        if plain_accuracy is not None:
            row["plain_clean_accuracy"] = plain_accuracy
            row["fidelity_drop"] = round(100 * (plain_accuracy - row["embed"]["clean_accuracy"]), 2)
    return {
        "dataset": dataset,
        "profile": profile,
        "settings": settings,
        "epochs": {scheme: row["embed"]["epochs"] for scheme, row in rows.items()},
        "architecture": next(iter(rows.values()))["embed"]["architecture"] if rows else None,
        "command": "python -m keras_ipguard.paper " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threat_model": rows[next(iter(rows))]["attack_reports"][0]["threat_model"] if rows else None,
        "plain_clean_accuracy": plain_accuracy,
        "schemes": rows,
        "pending": list(pending),
        "run_schemes": list(rows) if measured is None else list(measured),
        "earlier_runs": list(earlier),
    }


def write_outputs(result, target):
    """results.json, table.md, prune.png and attacks.png for one dataset's result."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "results.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=float) + "\n")
    (target / "table.md").write_text(markdown(result))
    (target / "prune.png").write_bytes(prune_plot(result))
    (target / "attacks.png").write_bytes(scatter_plot(result))
    log(f"{result['dataset']}: wrote {target}")


def provenance(result):
    """One line: dataset, profile, epochs, machine, date(s) (printed on every figure)."""
    machine = result["machine"]
    device = ", ".join(machine["gpus"]) if machine["gpus"] else f"CPU only, {machine['cpu_count']} cores"
    epochs = sorted(set(result["epochs"].values()))
    kept = "".join(f"; {', '.join(schemes)} from {run['date']}" for schemes, run in _kept_rows(result))
    return (f"{result['dataset']}, {result['profile']} profile {json.dumps(result['settings'])}, "
            f"epochs {'/'.join(map(str, epochs))}, {result['architecture']}; {device}; {result['date']}{kept}")


def _kept_rows(result):
    """[(schemes, earlier run)]: the rows of `result` last measured by each of its earlier runs (newest first)."""
    remaining = [scheme for scheme, _ in _ordered(result) if scheme not in result.get("run_schemes", result["schemes"])]
    kept = []
    for run in reversed(result.get("earlier_runs", [])):
        schemes = [scheme for scheme in remaining if scheme in run["schemes"]]
        remaining = [scheme for scheme in remaining if scheme not in schemes]
        if schemes:
            kept.append((schemes, run))
    return kept


def _ordered(result):
    """(scheme, row) pairs in the registry's order (ours first), whatever the JSON's key order."""
    from .schemes import names

    order = names()
    return sorted(result["schemes"].items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order))


def _cell(row):
    """Watermark accuracy / key-code accuracy (– where the test cannot run or the scheme has none), ✓ owned."""
    mark = "✓" if row["owned"] else "✗"
    figures = [row.get("watermark_accuracy"), row.get("key_code_accuracy")]
    text = "/".join("–" if value is None else f"{value:.2f}" for value in figures[: 2 if figures[1] is not None else 1])
    return f"{text} {mark}"


def _control_cell(ownership):
    """The suspect's hit rate on the controls: the class-N test's, then / the key code's where it ran."""
    code = (ownership.get("tests") or {}).get("key_code")
    return f"{ownership['chance_rate']:.3f}" + (f"/{code['chance_rate']:.3f}" if code else "")


def markdown(result):
    """The per-dataset table: rows are schemes, columns the figures and the watermark after each attack."""
    settings = ", ".join(f"{k}={v}" for k, v in result["settings"].items()) or "all data, default epochs"
    lines = [
        f"# {result['dataset']}: watermark schemes compared ({result['profile']} profile: {settings})",
        "",
        f"Architecture {result['architecture']}; epochs {json.dumps(result['epochs'])}; machine "
        f"{result['machine']['processor']} x{result['machine']['cpu_count']}"
        f"{', GPU ' + ', '.join(result['machine']['gpus']) if result['machine']['gpus'] else ' (CPU only)'}; "
        f"{result['date']}. Command: `{result['command']}`.",
        f"Attacks: {result['threat_model']['split'] if result['threat_model'] else ''}.",
        "",
    ]
    for schemes, run in _kept_rows(result):
        lines += [f"Rows of {', '.join(schemes)} kept from an earlier run ({run['date']}): `{run['command']}`.", ""]
    if result.get("pending"):
        lines += [f"**Partial**: not run yet: {', '.join(result['pending'])} (the same command continues the run).",
                  ""]
    lines += [
        "Watermark accuracy (fraction of triggers answered as embedded), then, for ours, / the key-code accuracy "
        "(keys whose top-1 task class is their secret class; – where a test cannot run), and the control hit rates "
        "of the same tests (each test's chance rate); ✓ = verify says owned "
        "(combined p < 1e-12 against the suspect's own hit rates on controls), ✗ = not owned.",
        "",
        "| scheme | clean acc. | fidelity drop (pts) | watermark acc. | control hit rate | identity auth "
        "| forged accepted | "
        + " | ".join(ATTACK_COLUMNS) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(ATTACK_COLUMNS),
    ]
    for scheme, row in _ordered(result):
        identity = row.get("identity")
        identity_cells = (f"{identity['identity_auth_rate']:.2f} | {identity['forged_acceptance_rate']:.4f}"
                          if identity else "n/a | n/a")
        lines.append(
            f"| {scheme} | {row['embed']['clean_accuracy']:.4f} | {row.get('fidelity_drop', float('nan')):+.2f} | "
            f"{_cell(row['verify'])} | {_control_cell(row['verify'])} | {identity_cells} | "
        )
        lines[-1] += " | ".join(_cell(row["attacks"][column]) for column in ATTACK_COLUMNS) + " |"
    lines += ["", "Clean accuracy after each attack:", "",
              "| scheme | unattacked | " + " | ".join(ATTACK_COLUMNS) + " |",
              "|---|---|" + "---|" * len(ATTACK_COLUMNS)]
    for scheme, row in _ordered(result):
        lines.append(f"| {scheme} | {row['unattacked']['clean_accuracy']:.4f} | "
                     + " | ".join(f"{row['attacks'][c]['clean_accuracy']:.4f}" for c in ATTACK_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _png(figure):
    import io

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    _pyplot().close(figure)
    return buffer.getvalue()


def prune_plot(result):
    """Watermark accuracy vs pruning rate, one line per scheme (dashed: clean accuracy)."""
    pyplot = _pyplot()
    figure, axis = pyplot.subplots(figsize=(7, 4.5))
    for scheme, row in _ordered(result):
        prune = next(r for r in row["attack_reports"] if r["attack"] == "prune")
        points = [prune["unattacked"]] + prune["settings"]
        line, = axis.plot([p["rate"] for p in points], [p["watermark_accuracy"] for p in points], marker="o",
                          label=scheme)
        axis.plot([p["rate"] for p in points], [p["clean_accuracy"] for p in points], linestyle="--",
                  color=line.get_color(), alpha=0.5)
        if all(p.get("key_code_accuracy") is not None for p in points):
            axis.plot([p["rate"] for p in points], [p["key_code_accuracy"] for p in points], marker="D",
                      linestyle=":", color=line.get_color(), label=f"{scheme}: key code")
    axis.set_xlabel("pruning rate (fraction of weights zeroed)")
    axis.set_ylabel("solid: watermark, dotted: key code,\ndashed: clean accuracy")
    axis.set_ylim(0, 1.05)
    axis.set_title(f"{result['dataset']}: watermark accuracy under magnitude pruning")
    axis.legend(fontsize="small")
    figure.text(0.01, 0.005, provenance(result), fontsize=6, color="gray")
    return _png(figure)


def scatter_plot(result):
    """Clean vs watermark accuracy under each attack, one point per scheme (hollow: not owned)."""
    pyplot = _pyplot()
    columns = ("unattacked",) + ATTACK_COLUMNS
    rows = -(-len(columns) // 4)
    figure, axes = pyplot.subplots(rows, 4, figsize=(14, 3.5 * rows), sharex=True, sharey=True)
    colours = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, column in zip(axes.flat, columns):
        for index, (scheme, row) in enumerate(_ordered(result)):
            point = row["unattacked"] if column == "unattacked" else row["attacks"][column]
            colour = colours[index % len(colours)]
            fill = colour if point["owned"] else "none"
            # A test the suspect does not allow (class N on a truncated copy) is left out, not drawn at 0.
            if point.get("watermark_accuracy") is not None:
                axis.scatter(point["clean_accuracy"], point["watermark_accuracy"], s=60, label=scheme,
                             color=fill, edgecolors=colour, linewidths=1.5)
            if point.get("key_code_accuracy") is not None:
                axis.scatter(point["clean_accuracy"], point["key_code_accuracy"], s=60, marker="D",
                             label=f"{scheme}: key code", color=fill, edgecolors=colour, linewidths=1.5)
        axis.set_title(column)
        axis.set_xlim(0, 1.02)
        axis.set_ylim(-0.02, 1.05)
        axis.grid(alpha=0.3)
    for axis in axes[-1]:
        axis.set_xlabel("clean accuracy")
    for axis in axes[:, 0]:
        axis.set_ylabel("watermark accuracy")
    axes.flat[0].legend(fontsize="x-small", loc="lower left")
    figure.suptitle(f"{result['dataset']}: clean vs watermark accuracy under each attack (circles: the scheme's "
                    "trigger test; diamonds: ours' key code; hollow = not owned)")
    figure.text(0.01, 0.005, provenance(result), fontsize=7, color="gray")
    return _png(figure)


def main(argv=None):
    from . import schemes
    from .errors import IPGuardError

    parser = argparse.ArgumentParser(prog="python -m keras_ipguard.paper", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", action="append", choices=sorted(PROFILES), help="repeatable [default: both]")
    parser.add_argument("--scheme", action="append", choices=schemes.names(),
                        help="repeatable [default: all; run in registry order, the first trains the plain baseline]")
    parser.add_argument("--work", type=Path, default=Path("runs/paper"), help="vaults (git-ignored) [runs/paper]")
    parser.add_argument("--out", type=Path, default=Path("docs/results/paper"), help="results [docs/results/paper]")
    parser.add_argument("--profile", choices=("auto", "full", "reduced"), default="auto",
                        help="auto: full epochs on a GPU, reduced CIFAR-10 on CPU [auto]")
    parser.add_argument("--data-dir", help="prepared tfds data directory [TFDS_DATA_DIR]")
    parser.add_argument("--epochs", type=int, help="override the profile's epochs (quick checks)")
    parser.add_argument("--max-train-examples", type=int, help="override the profile's training subset")
    parser.add_argument("--max-test-examples", type=int, help="override the profile's test subset")
    parser.add_argument("--attack-epochs", type=int, help="override every attack's training epochs (quick checks)")
    parser.add_argument("--replot", action="store_true",
                        help="only rewrite table.md and the PNGs from each dataset's results.json under --out")
    args = parser.parse_args(argv)
    scheme_names = [name for name in schemes.names() if name in (args.scheme or schemes.names())]

    if args.replot:
        for dataset in args.dataset or ["fashion_mnist", "cifar10"]:
            if (args.out / dataset / "results.json").is_file():
                write_outputs(json.loads((args.out / dataset / "results.json").read_text()), args.out / dataset)
        return 0
    try:
        for dataset in args.dataset or ["fashion_mnist", "cifar10"]:
            run_dataset(dataset, args.work, args.out, args.profile, args.data_dir, scheme_names, {
                "epochs": args.epochs, "max_train_examples": args.max_train_examples,
                "max_test_examples": args.max_test_examples, "attack_epochs": args.attack_epochs})
    except IPGuardError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
