"""Attack reports as files: JSON, a PNG plot and a Markdown table (matplotlib, headless)."""

import io

from . import atomic

FIGURES = ("clean_accuracy", "watermark_accuracy", "key_code_accuracy", "identity_auth_rate")
_SKIP = set(FIGURES) | {"owned", "p_value", "chance_rate", "layer_sparsity", "seconds", "threshold", "verdict",
                        "task_agreement", "epochs", "learning_rate", "finetune_epochs", "tests", "queries",
                        "surrogate_epochs"}


def setting_label(setting):
    """A short label for one setting row, from its setting keys (e.g. 'FTAL adam', 'jpeg 50')."""
    parts = [str(v) for k, v in setting.items() if k not in _SKIP and not k.startswith("flag_rate") and v is not None]
    return " ".join(parts) or "none"


def plot_png(report):
    """PNG bytes: the figures per setting (a line over the rate for pruning, bars otherwise)."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

    rows = [report["unattacked"]] + report["settings"]
    figure, axis = pyplot.subplots(figsize=(max(6, 0.7 * len(rows) + 3), 4))
    if report["attack"] == "prune":
        rates = [row["rate"] for row in rows]
        for name in FIGURES:
            if rows[0].get(name) is not None:
                axis.plot(rates, [row[name] for row in rows], marker="o", label=name)
        axis.set_xlabel("pruning rate (fraction of weights zeroed)")
    else:
        width = 0.8 / len(FIGURES)
        for offset, name in enumerate(FIGURES):
            axis.bar([i + offset * width for i in range(len(rows))], [row.get(name) or 0.0 for row in rows], width,
                     label=name if rows[0].get(name) is not None else f"{name} (n/a)")
        axis.set_xticks([i + width for i in range(len(rows))])
        labels = ["unattacked"] + [setting_label(row) for row in report["settings"]]
        axis.set_xticklabels(labels, rotation=30, ha="right")
    axis.set_ylim(0, 1.05)
    axis.set_title(f"{report['attack']} attack")
    axis.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    pyplot.close(figure)
    return buffer.getvalue()


def fraction(value):
    """A figure for a Markdown table: 4 decimals, or n/a where the scheme has none."""
    return "n/a" if value is None else f"{value:.4f}"


def markdown_table(reports):
    """One Markdown table of every setting of every report."""
    lines = ["| attack | setting | clean accuracy | watermark accuracy | key-code accuracy | identity auth rate "
             "| owned (p) |", "|---|---|---|---|---|---|---|"]
    for report in reports:
        for row in [report["unattacked"]] + report["settings"]:
            label = "unattacked" if row is report["unattacked"] else setting_label(row)
            lines.append(f"| {report['attack']} | {label} | {row['clean_accuracy']:.4f} "
                         f"| {fraction(row['watermark_accuracy'])} | {fraction(row.get('key_code_accuracy'))} "
                         f"| {fraction(row['identity_auth_rate'])} "
                         f"| {'yes' if row['owned'] else 'no'} ({row['p_value']:.2g}) |")
    return "\n".join(lines) + "\n"


def write_combined_report(vault, reports):
    """Writes reports/attack-all.json and attack-all.md for a suite run; returns the JSON path."""
    atomic.write_bytes(vault.reports_path / "attack-all.md", markdown_table(reports).encode())
    return vault.write_report("attack-all", {"attack": "all", "reports": reports})


def write_attack_report(vault, report):
    """Writes reports/attack-<name>.json and .png atomically; returns the two paths."""
    json_path = vault.write_report(f"attack-{report['attack']}", report)
    png_path = vault.reports_path / f"attack-{report['attack']}.png"
    atomic.write_bytes(png_path, plot_png(report))
    return json_path, png_path
