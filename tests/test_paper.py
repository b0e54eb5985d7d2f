"""`python -m keras_ipguard.paper` end to end on a tiny real subset (skipped where ../shared is absent)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import SHARED_TFDS


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_TFDS, "fashion_mnist")),
                    reason="needs the prepared datasets in ../shared/tensorflow_datasets")
def test_paper_run_writes_table_json_and_plots_and_resumes(tmp_path):
    # One scheme end to end (the comparison schemes' own embeds and attacks are test_schemes.py's); how rows of
    # several schemes share the plain baseline and are ordered is checked below on a copy of this row.
    command = [sys.executable, "-m", "keras_ipguard.paper", "--dataset", "fashion_mnist", "--scheme", "extra-class",
               "--epochs", "1", "--max-train-examples", "2000", "--max-test-examples", "200", "--attack-epochs", "1",
               "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--data-dir", SHARED_TFDS]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out" / "fashion_mnist"
    result = json.loads((out / "results.json").read_text())
    assert list(result["schemes"]) == ["extra-class"]
    ours = result["schemes"]["extra-class"]
    # Identities come from the keys the model answers class 10; one epoch on 2,000 images may leave none.
    if ours["embed"]["identity_keys"]:
        assert ours["identity"]["forgeries"] == 10000 + 28 * 28 and ours["identity"]["forged_acceptance_rate"] == 0.0
    else:
        assert "identity" not in ours and "answers class N on none of the keys" in ours["identity_note"]
    # Fidelity is measured against the one plain model trained with ours (same architecture, seed, epochs).
    assert ours["plain_clean_accuracy"] == ours["embed"]["baseline_clean_accuracy"] == result["plain_clean_accuracy"]
    assert set(ours["attacks"]) == {"prune 0.5", "prune 0.8", "FTAL", "RTLL", "RTAL", "FTAL Adam informed",
                                    "query-mod 5%", "JPEG 75", "truncate", "extract"}
    truncated = ours["attacks"]["truncate"]
    assert truncated["watermark_accuracy"] is None and list(truncated["tests"]) == ["key_code", "key_code_rank"]
    assert ours["attacks"]["FTAL Adam informed"]["epochs"] == 1 and ours["attacks"]["extract"]["surrogate_epochs"] == 1
    assert result["machine"]["cpu_count"] and result["date"] and "keras_ipguard.paper" in result["command"]
    table = (out / "table.md").read_text()
    checks = ours["verify"]
    assert f"| {checks['chance_rate']:.3f}/{checks['tests']['key_code']['chance_rate']:.3f} |" in table
    # Written after every scheme: a table of an unfinished run names what has not run yet.
    assert result["pending"] == [] and "Partial" not in table
    from keras_ipguard.paper import _result, markdown

    assert "**Partial**: not run yet: adi, noise" in markdown({**result, "pending": ["adi", "noise"]})
    assert result["run_schemes"] == ["extra-class"] and result["earlier_runs"] == []
    earlier = [{"command": "old", "date": "monday", "schemes": ["extra-class"]}]
    older = {**result, "run_schemes": [], "earlier_runs": earlier}
    assert "Rows of extra-class kept from an earlier run (monday): `old`." in markdown(older)
    # A second scheme's row (here a copy of ours, 2 points less accurate) is measured against ours' plain model
    # and listed after ours, whatever the order of the rows.
    other = {**json.loads(json.dumps(ours)), "scheme": "content"}
    other["embed"] = {**other["embed"], "clean_accuracy": ours["embed"]["clean_accuracy"] - 0.02}
    other.pop("identity", None)  # a scheme without identity images
    both = _result("fashion_mnist", "custom", result["settings"], {"content": other, "extra-class": ours},
                   ours["embed"]["baseline_clean_accuracy"], [])
    assert both["schemes"]["content"]["plain_clean_accuracy"] == ours["embed"]["baseline_clean_accuracy"]
    assert both["schemes"]["content"]["fidelity_drop"] == pytest.approx(ours["fidelity_drop"] + 2, abs=0.011)
    two = markdown(both)
    assert two.index("| extra-class |") < two.index("| content |")
    assert "| n/a | n/a |" in two.split("| content |")[1].splitlines()[0]
    for png in ("prune.png", "attacks.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A second run reuses the finished vault and figures instead of training and attacking again.
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0 and again.stderr.count("reusing") == 1
    assert "embedding" not in again.stderr and "attack" not in again.stderr
    assert json.loads((out / "results.json").read_text())["schemes"] == result["schemes"]


def test_a_checkpoint_left_by_other_settings_is_started_over_saying_so(tmp_path, monkeypatch, capsys):
    import keras_ipguard.embedding
    from keras_ipguard import Vault
    from keras_ipguard.paper import embed_scheme
    from keras_ipguard.workdir import OPTIONS_FILE, WorkDir

    vault = tmp_path / "work" / "fashion_mnist" / "noise"
    stale = WorkDir.open(vault, {"defaults": "last week's"})  # an interrupted run of older defaults
    calls = []

    def embed(path, options, force=False, resume=False):  # embed's own checkpoint handling, then a vault
        calls.append((force, resume))
        WorkDir.open(path, {"defaults": "today's"}, resume=resume, force=force)
        Vault.create(path, dataset="fashion_mnist", num_classes=10, input_shape=(28, 28, 1))

    monkeypatch.setattr(keras_ipguard.embedding, "embed", embed)
    assert embed_scheme(tmp_path / "work", "fashion_mnist", "noise", {}, None).num_classes == 10
    assert calls == [(False, True), (True, False)]  # refused as a resume, then started over
    assert json.loads((stale.path / OPTIONS_FILE).read_text()) == {"defaults": "today's"}
    said = capsys.readouterr().err
    assert "noise: the checkpoint at" in said and "was made with other options" in said and "starting over" in said


def test_a_run_of_some_schemes_updates_their_rows_and_keeps_the_recorded_others(tmp_path, monkeypatch, capsys):
    import keras_ipguard.paper as paper

    def row(scheme, clean):
        return {"scheme": scheme, "embed": {"clean_accuracy": clean, "epochs": 1, "architecture": "small_cnn"},
                "attack_reports": [{"threat_model": {"attacker_images": 100}}]}

    baselines, written = [], []

    def embed_scheme(work, dataset, scheme, settings, data_dir, baseline=False):  # a finished vault, no training
        baselines.append((scheme, baseline))
        reports = tmp_path / "work" / scheme / "reports"
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "embed.json").write_text(json.dumps({"clean_accuracy": 0.85, "baseline_clean_accuracy": 0.88}))
        return type("FakeVault", (), {"reports_path": reports})()

    monkeypatch.setattr(paper, "embed_scheme", embed_scheme)
    monkeypatch.setattr(paper, "_scheme_row", lambda vault, report, *rest: row("new", report["clean_accuracy"]))
    monkeypatch.setattr(paper, "write_outputs", lambda result, target: written.append(result))
    target = tmp_path / "out" / "fashion_mnist"
    target.mkdir(parents=True)
    recorded = paper._result("fashion_mnist", "custom", {"epochs": 1},
                             {"extra-class": row("extra-class", 0.89), "unrelated": row("unrelated", 0.80)}, 0.9, [])
    (target / "results.json").write_text(json.dumps({**recorded, "command": "the first run", "date": "monday"}))

    def run(schemes, epochs=1):
        paper.run_dataset("fashion_mnist", tmp_path / "work", tmp_path / "out", "full", None, schemes,
                          {"epochs": epochs})
        return written[-1]

    result = run(["unrelated"])  # one scheme re-run: no baseline of its own, ours' row and plain model kept
    assert baselines == [("unrelated", False)] and result["plain_clean_accuracy"] == 0.9
    assert result["schemes"]["extra-class"]["embed"]["clean_accuracy"] == 0.89
    assert result["schemes"]["unrelated"]["scheme"] == "new" and result["schemes"]["unrelated"]["fidelity_drop"] == 5.0
    assert result["earlier_runs"] == [{"command": "the first run", "date": "monday",
                                       "schemes": ["extra-class", "unrelated"]}]
    assert "keeping the recorded rows of extra-class" in capsys.readouterr().err
    # The table and every figure say which rows are older, and from which run.
    assert result["run_schemes"] == ["unrelated"]
    assert paper._kept_rows(result) == [(["extra-class"], result["earlier_runs"][0])]
    assert paper.provenance(result).endswith("; extra-class from monday")
    (target / "results.json").write_text(json.dumps(result))
    result = run(["extra-class"])  # ours re-run trains the plain baseline again; every row is measured against it
    assert baselines[-1] == ("extra-class", True) and result["plain_clean_accuracy"] == 0.88
    assert result["schemes"]["unrelated"]["fidelity_drop"] == 3.0 and len(result["earlier_runs"]) == 2
    # The one-scheme run is recorded with what it measured itself, not the rows it kept from the first.
    assert result["earlier_runs"][1]["schemes"] == ["unrelated"]
    assert paper._kept_rows(result) == [(["unrelated"], result["earlier_runs"][1])]
    result = run(["unrelated"], epochs=2)  # other settings: nothing recorded is kept, the baseline comes with it
    assert list(result["schemes"]) == ["unrelated"] and result["earlier_runs"] == []
    assert baselines[-1] == ("unrelated", True) and "made with other settings" in capsys.readouterr().err
    (target / "results.json").write_text("{truncated")
    assert list(run(["unrelated"])["schemes"]) == ["unrelated"] and "unreadable" in capsys.readouterr().err
