"""A new scheme is one module: the toy checkerboard goes through embed, verify and attack by name."""

import json
import os

import pytest
import toy_scheme  # noqa: F401  (registers "toy-checkerboard": the only step a new scheme needs)
from click.testing import CliRunner

from keras_ipguard import EmbedOptions, Vault, schemes
from keras_ipguard_cli.main import cli

from conftest import SHARED_TFDS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_TFDS, "fashion_mnist")),
                       reason="needs the prepared datasets in ../shared/tensorflow_datasets"),
]


def ipguard(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_a_toy_scheme_module_runs_through_embed_verify_and_attack_by_name(tmp_path):
    assert "toy-checkerboard" in schemes.names()
    options = EmbedOptions(dataset="fashion_mnist", scheme={"name": "TOY-checkerboard", "config": {"square": 3}})
    assert options.scheme.name == "toy-checkerboard" and options.scheme.get_config() == {"square": 3}
    out = tmp_path / "cli"
    made = ipguard("embed", "--dataset", "fashion_mnist", "--data-dir", SHARED_TFDS, "--scheme", "toy-checkerboard",
                   "--epochs", "3", "--keys", "50", "--max-train-examples", "3000", "--max-test-examples", "400",
                   "--out", out, "--json")
    assert made.exit_code == 0, made.output[-3000:]
    report = json.loads(made.stdout)
    assert report["scheme"] == "toy-checkerboard" and report["scheme_config"] == {"square": 4}
    assert report["watermark_accuracy"] >= 0.9 and report["false_watermark_rate"] is None
    assert Vault.open(out).config["scheme"] == {"name": "toy-checkerboard", "config": {"square": 4}}
    verdict = ipguard("verify", "--vault", out, "--json")
    assert verdict.exit_code == 0 and json.loads(verdict.stdout)["key_answer"] == "their trigger label"
    pruned = ipguard("attack", "prune", "--vault", out, "--data-dir", SHARED_TFDS, "--max-test-examples", "400",
                     "--rates", "0.3", "--json")
    assert pruned.exit_code == 0, pruned.output[-3000:]
    rows = json.loads(pruned.stdout)["settings"]
    assert [row["rate"] for row in rows] == [0.3] and rows[0]["identity_auth_rate"] is None
    cut = ipguard("attack", "truncate", "--vault", out, "--data-dir", SHARED_TFDS, "--max-test-examples", "400",
                  "--json")
    assert cut.exit_code == 0 and "no watermark unit" in json.loads(cut.stdout)["notes"][0]
    refused = ipguard("users", "add", "alice", "--vault", out)
    assert refused.exit_code == 2 and "no identity image" in refused.stderr
