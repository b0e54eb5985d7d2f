import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from keras_ipguard_cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_version_and_help_work_from_the_installed_console_script():
    script = Path(sys.executable).parent / "ipguard"  # installed beside the interpreter
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("ipguard, version ")
    for command in ([], ["users"], ["users", "add"], ["authenticate"]):
        result = run(*command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


def test_users_add_prints_the_identity_image_path(vault, tmp_path):
    result = run("users", "add", "alice", "--vault", vault.path, "--out", tmp_path / "alice.png")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "alice.png")
    assert (tmp_path / "alice.png").read_bytes() == (vault.identities_path / "000001-alice.png").read_bytes()


def test_users_list_and_revoke_json(vault):
    run("users", "add", "alice", "--vault", vault.path)
    run("users", "add", "bob", "--vault", vault.path)
    revoked = json.loads(run("users", "revoke", "bob", "--vault", vault.path, "--json").stdout)
    assert revoked["name"] == "bob" and revoked["newly_revoked"] and not revoked["active"]
    listed = json.loads(run("users", "list", "--vault", vault.path, "--json").stdout)
    assert [(u["name"], u["active"]) for u in listed["users"]] == [("alice", True), ("bob", False)]
    text = run("users", "list", "--vault", vault.path).stdout
    assert "alice" in text and "revoked" in text


def test_authenticate_json_reports_each_image_and_exit_code(vault):
    alice = vault.add_user("alice").path
    bob = vault.add_user("bob").path
    vault.revoke_user("bob")
    result = run("authenticate", alice, "--vault", vault.path, "--json")
    assert result.exit_code == 0
    body = json.loads(result.stdout)
    assert body["results"][0]["authorized"] and body["results"][0]["user"] == "alice"
    assert body["model_checked"] is False and "model check skipped" in body["note"]
    result = run("authenticate", alice, bob, "--vault", vault.path, "--json")
    assert result.exit_code == 1
    assert [(r["user"], r["reason"]) for r in json.loads(result.stdout)["results"]] == [
        ("alice", "ok"),
        ("bob", "revoked"),
    ]


@pytest.fixture
def bad_images(vault, tmp_path):
    genuine = vault.add_user("alice").path
    data = genuine.read_bytes()
    image = np.asarray(Image.open(genuine))
    files = {}
    files["not-an-image"] = tmp_path / "notes.png"
    files["not-an-image"].write_text("hello")
    files["truncated"] = tmp_path / "truncated.png"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["16-bit"] = tmp_path / "deep.png"
    Image.fromarray(image.astype(np.uint16) * 257).save(files["16-bit"])
    files["rgba"] = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([image] * 4)).save(files["rgba"])
    files["wrong-size"] = tmp_path / "big.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(files["wrong-size"])
    files["jpeg"] = tmp_path / "alice.jpg"
    Image.open(genuine).save(files["jpeg"], quality=95)
    files["jpeg-renamed"] = tmp_path / "alice-jpeg.png"
    files["jpeg-renamed"].write_bytes(files["jpeg"].read_bytes())
    files["bomb"] = tmp_path / "bomb.png"
    Image.new("L", (20000, 20000)).save(files["bomb"], optimize=False)
    return files


EXPECTED_REASONS = {
    "not-an-image": "not-an-image",
    "truncated": "not-an-image",
    "16-bit": "wrong-mode",
    "rgba": "wrong-mode",
    "wrong-size": "wrong-size",
    "jpeg": "lossy-format",
    "jpeg-renamed": "lossy-format",
    "bomb": "too-large",
}


def test_bad_images_are_refused_with_their_reason(vault, bad_images):
    result = run("authenticate", *bad_images.values(), "--vault", vault.path, "--json")
    assert result.exit_code == 1, result.output
    reasons = [r["reason"] for r in json.loads(result.stdout)["results"]]
    assert reasons == [EXPECTED_REASONS[kind] for kind in bad_images]
    text = run("authenticate", bad_images["jpeg"], "--vault", vault.path).stdout
    assert "destroys the LSB payload" in text


def test_directory_arguments_expand_to_their_images(vault):
    vault.add_user("alice")
    vault.add_user("bob")
    result = run("authenticate", vault.identities_path, "--vault", vault.path, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["summary"]["authorized"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["users", "add", "alice", "--vault", "{missing}"], "no vault at"),
        (["users", "revoke", "nobody", "--vault", "{vault}"], "no user named"),
        (["authenticate", "{empty}", "--vault", "{vault}"], "holds no image files"),
        (["authenticate", "{missing}/x.png", "--vault", "{vault}"], "does not exist"),
        (["users", "add", "alice", "--vault", "{keyless}"], "run `ipguard embed"),
    ],
)
def test_input_errors_exit_2_with_one_line(vault, tmp_path, args, message):
    from keras_ipguard import Vault

    (tmp_path / "empty").mkdir()
    keyless = Vault.create(tmp_path / "keyless", dataset="mnist", num_classes=10, input_shape=(28, 28, 1))
    places = {"missing": tmp_path / "missing", "vault": vault.path, "empty": tmp_path / "empty",
              "keyless": keyless.path}
    result = run(*[a.format(**places) for a in args])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0]


def test_duplicate_user_via_cli_exits_2_and_changes_nothing(vault):
    run("users", "add", "alice", "--vault", vault.path)
    result = run("users", "add", "alice", "--vault", vault.path)
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert len(vault.users()) == 1


def test_vault_whose_key_manifest_does_not_match_exits_2(vault):
    issued = vault.add_user("alice")
    (vault.path / "keys" / "key_00001.png").write_bytes((vault.path / "keys" / "key_00002.png").read_bytes())
    result = run("authenticate", issued.path, "--vault", vault.path)
    assert result.exit_code == 2 and "does not match its sha256" in result.stderr


def test_choices_accept_any_case_and_scheme_settings_belong_to_their_scheme(tmp_path):
    foreign = run("embed", "--dataset", "fashion_mnist", "--scheme", "CONTENT", "--kernel-scale", "8", "--out",
                  tmp_path / "v")
    assert foreign.exit_code == 2 and "--kernel-scale: not a setting of the content scheme" in foreign.stderr
    typo = run("embed", "--dataset", "fashon_mnist", "--arch", "Small_CNN", "--strategy", "DEFAULT", "--out",
               tmp_path / "w")
    assert typo.exit_code == 2 and "did you mean fashion_mnist" in typo.stderr  # the choices parsed; the name did not
    unknown = run("embed", "--dataset", "mnist", "--arch", "resnet99", "--out", tmp_path / "x")
    assert unknown.exit_code == 2 and "'resnet99' is not one of auto, small_cnn, resnet20, vgg11" in unknown.stderr
    assert not (tmp_path / "v").exists() and not (tmp_path / "x").exists()


def test_options_and_defaults_come_from_the_library_and_experiments_stay_in_python():
    from keras_ipguard.schemes.extra_class import DEFAULT_KERNEL_SCALE

    embed_help = run("embed", "--help").output
    assert f"[extra-class; default: {DEFAULT_KERNEL_SCALE}]" in " ".join(embed_help.split())
    assert "--any-keys" in embed_help and "--epsilon" in embed_help and "frontier-stitching" in embed_help
    for experimental in ("--key-jitter", "--negative-weight", "--negative-class", "--free-negatives"):
        assert experimental not in embed_help
    assert run("embed", "--dataset", "mnist", "--key-jitter", "--out", "v").exit_code == 2
    finetune_help = " ".join(run("attack", "finetune", "--help").output.split())
    assert "default: FTLL,FTAL,RTLL,RTAL" in finetune_help and "[sgd|adam]" in finetune_help


def test_verify_prints_the_rank_test_and_what_did_not_run():
    from keras_ipguard_cli import main as cli_main  # its test_lines is no test of ours

    rank = {"mean_rank": 1.78, "chance_mean_rank": 4.5, "classes": 10, "rank_sum": 178, "p_value": 6.7e-22,
            "null": "task", "keys": 100, "chance_rates": {"key_source": {"mean_rank": 4.64, "images": 125},
                                                          "empty": {"mean_rank": None, "images": 0}}}
    lines = cli_main.test_lines({"tests": {"key_code_rank": rank}, "num_outputs": 10,
                                 "not_run": {"watermark_x": "because"}}, "class 10")
    assert lines[0] == ("  key_code_rank test  mean rank 1.78 of the keys' secret classes among 10 task scores "
                        "(0 = top, chance 4.5), p = 6.7e-22 (the most cautious null: the task controls)")
    assert lines[1] == "    key_source        mean rank 4.64 over 125 controls"  # an empty control set: no line
    assert lines[2].endswith("not run: the suspect has 10 outputs, no class N")
    assert lines[3] == "  watermark_x test    not run: because"
