"""`ipguard export`: a SavedModel for TF Serving that matches the Keras model and holds no secret."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from keras_ipguard import Vault, stego
from keras_ipguard.models import WatermarkedClassifier, build_backbone, load_model, save_model
from keras_ipguard.savedmodel import lsb_plane_tf
from keras_ipguard_cli.main import cli

from conftest import synthetic_keys

N = 10


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def modelled_vault(tmp_path_factory):
    model = WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), N, name="watermarked_classifier")
    vault = Vault.create(
        tmp_path_factory.mktemp("export") / "vault", dataset="fashion_mnist", num_classes=N, input_shape=(28, 28, 1),
        key_images=synthetic_keys(20, (28, 28, 1)),
        controls={"key_source": synthetic_keys(50, (28, 28, 1), seed=1),
                  "task": synthetic_keys(50, (28, 28, 1), seed=2)},
        populate=lambda tmp: save_model(model, tmp / "model"),
    )
    for name in ("alice-the-licensee", "bob-the-licensee"):
        vault.add_user(name)
    return vault


@pytest.fixture(scope="module")
def exported(modelled_vault, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "model"
    result = run("export", "--vault", modelled_vault.path, "--out", base, "--json")
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout)["saved_model"])


def test_versions_count_up_and_are_never_overwritten(modelled_vault, exported):
    assert exported.name == "1" and (exported / "saved_model.pb").is_file()
    second = run("export", "--vault", modelled_vault.path, "--out", exported.parent)
    assert second.exit_code == 0 and second.stdout.strip().endswith("/2")
    again = run("export", "--vault", modelled_vault.path, "--out", exported.parent, "--version", "1")
    assert again.exit_code == 2 and "never overwritten" in again.stderr


def test_fresh_process_outputs_match_the_keras_model(modelled_vault, exported, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (256, 28, 28, 1), dtype=np.uint8)
    model = load_model(modelled_vault.model_path)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "p.npy", model.predict(images.astype(np.float32), verbose=0))
    np.save(tmp_path / "t.npy", model.task_probabilities(images.astype(np.float32)).numpy())
    script = textwrap.dedent(
        f"""
        import numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({str(exported)!r})
        x = tf.constant(np.load({str(tmp_path / 'x.npy')!r}))
        full = loaded.signatures["serving_default"](images=x)
        task = loaded.signatures["classify"](images=x)
        ident = loaded.signatures["identity"](images=x)
        np.savez({str(tmp_path / 'out.npz')!r}, p=full["probabilities"].numpy(), c=full["classes"].numpy(),
                 t=task["probabilities"].numpy(), w=ident["is_watermark_class"].numpy(), l=ident["lsb_plane"].numpy())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    expected = np.load(tmp_path / "p.npy")
    assert np.abs(out["p"] - expected).max() <= 1e-5
    assert np.abs(out["t"] - np.load(tmp_path / "t.npy")).max() <= 1e-5
    np.testing.assert_array_equal(out["c"], expected.argmax(1))
    np.testing.assert_array_equal(out["w"], expected.argmax(1) == N)
    np.testing.assert_array_equal(out["l"], stego.lsb_plane(images, batch=True))


def test_saved_model_cli_shows_and_runs_the_export(exported, tmp_path):
    cli_path = Path(sys.executable).parent / "saved_model_cli"
    shown = subprocess.run([str(cli_path), "show", "--dir", str(exported), "--all"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in ("serving_default", "classify", "identity", "probabilities", "lsb_plane", "is_watermark_class"):
        assert name in shown.stdout
    np.save(tmp_path / "in.npy", np.zeros((2, 28, 28, 1), np.uint8))
    ran = subprocess.run(
        [str(cli_path), "run", "--dir", str(exported), "--tag_set", "serve", "--signature_def", "serving_default",
         "--inputs", f"images={tmp_path / 'in.npy'}"],
        capture_output=True, text=True,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "probabilities" in ran.stdout and "classes" in ran.stdout


def test_export_contains_no_secret_key_image_or_registry_data(modelled_vault, exported):
    blob = b"".join(p.read_bytes() for p in exported.rglob("*") if p.is_file())
    assert (modelled_vault.path / "owner.key").read_bytes() not in blob
    assert b"alice-the-licensee" not in blob and b"bob-the-licensee" not in blob
    for key in modelled_vault.key_images:
        assert key.tobytes() not in blob
    for png in (modelled_vault.path / "keys").glob("*.png"):
        assert png.read_bytes() not in blob


def test_verify_and_authenticate_give_the_same_verdicts_on_the_export(modelled_vault, exported):
    keras_verify = json.loads(run("verify", "--vault", modelled_vault.path, "--json").stdout)
    saved_verify = json.loads(run("verify", "--vault", modelled_vault.path, "--model", exported, "--json").stdout)
    for field in ("owned", "hits", "p_value", "chance_rates"):
        assert keras_verify[field] == saved_verify[field]
    keras_auth = json.loads(
        run("authenticate", modelled_vault.identities_path, "--vault", modelled_vault.path, "--json").stdout)
    saved_auth = json.loads(run("authenticate", modelled_vault.identities_path, "--vault", modelled_vault.path,
                                "--model", exported, "--json").stdout)
    assert [r["reason"] for r in keras_auth["results"]] == [r["reason"] for r in saved_auth["results"]]
    assert "SavedModel" in saved_auth["note"]


def test_a_vault_whose_scheme_has_no_identities_exports_no_identity_signature(tmp_path):
    from keras_ipguard.models import build_plain_classifier

    model = build_plain_classifier("small_cnn", (28, 28, 1), N)
    vault = Vault.create(
        tmp_path / "v", dataset="fashion_mnist", num_classes=N, input_shape=(28, 28, 1),
        key_images=synthetic_keys(10, (28, 28, 1)),
        extra={"scheme": {"name": "content", "config": {}}, "watermark_class": None, "key_labels": [3] * 10},
        populate=lambda tmp: save_model(model, tmp / "model"),
    )
    result = run("export", "--vault", vault.path, "--out", tmp_path / "serving", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["signatures"] == ["serving_default", "classify"]
    saved = str(tmp_path / "serving" / "1")
    script = f"import tensorflow as tf; print(sorted(tf.saved_model.load({saved!r}).signatures))"
    listed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert listed.stdout.strip() == "['classify', 'serving_default']", listed.stderr[-2000:]


def test_export_of_a_vault_without_model_is_an_error(tmp_path):
    bare = Vault.create(tmp_path / "v", dataset="mnist", num_classes=N, input_shape=(28, 28, 1))
    result = run("export", "--vault", bare.path, "--out", tmp_path / "serving")
    assert result.exit_code == 2 and "holds no model" in result.stderr


@pytest.mark.parametrize("shape", [(4, 28, 28), (4, 28, 28, 1), (4, 32, 32, 3)])
def test_tensorflow_extraction_gives_the_same_bits_as_numpy(shape):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    order = rng.permutation(int(np.prod(shape[1:])))
    np.testing.assert_array_equal(lsb_plane_tf(images).numpy(), stego.lsb_plane(images, batch=True))
    gathered = np.take(lsb_plane_tf(images).numpy(), order, axis=1)
    np.testing.assert_array_equal(gathered, stego.extract_bits(images, order, batch=True))
