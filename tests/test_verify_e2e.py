"""`ipguard verify` and model-bound `ipguard authenticate` on real Fashion-MNIST models.

The vault's model is trained briefly but with a large key share (0.4), so that it
learns the specific keys rather than "any digit" in about a minute of CPU; the
innocent suspects must all read as not owned.
"""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from keras_ipguard import Vault

from conftest import SHARED_TFDS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.isdir(os.path.join(SHARED_TFDS, "fashion_mnist")),
        reason="needs the prepared datasets in ../shared/tensorflow_datasets",
    ),
]
SUBSET = ["--dataset", "fashion_mnist", "--max-train-examples", "3000", "--max-test-examples", "1000"]


def ipguard(*args):
    return CliRunner().invoke(cli, [str(a) for a in args] + (["--data-dir", SHARED_TFDS] if args[0] == "embed" else []))


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "owner"
    # 50 epochs of 23 steps: the ~1,150 steps this fixture always had (an epoch has the plain step count).
    result = ipguard("embed", *SUBSET, "--keys", "100", "--key-share", "0.4", "--epochs", "50", "--out", out)
    assert result.exit_code == 0, result.output[-3000:]
    return Vault.open(out)


@pytest.fixture(scope="module")
def innocents(owner, tmp_path_factory):
    """Suspects that are not derived from the owner's model, by name -> path."""
    from keras_ipguard import data
    from keras_ipguard.embed import _compile
    from keras_ipguard.models import WatermarkedClassifier, build_backbone, save_model

    root = tmp_path_factory.mktemp("innocents")
    x, y = data.load_split("fashion_mnist", "train", SHARED_TFDS, 3000)
    plain = WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), 10)
    dataset, steps = data.training_dataset(x, y, None, 10, 128)
    _compile(plain, "small_cnn", 1e-3, steps * 3)
    plain.fit(dataset, steps_per_epoch=steps, epochs=3, verbose=0)
    (root / "plain").mkdir()
    save_model(plain, root / "plain")
    (root / "random").mkdir()
    save_model(WatermarkedClassifier(build_backbone("small_cnn", (28, 28, 1)), 10), root / "random")
    other = ipguard("embed", *SUBSET, "--keys", "100", "--key-share", "0.4", "--epochs", "3", "--seed", "7",
                    "--out", root / "other-vault")
    assert other.exit_code == 0, other.output[-3000:]
    return {"same data, no watermark": root / "plain", "randomly initialised": root / "random",
            "another vault's watermark": root / "other-vault" / "model"}


def test_the_vaults_own_model_is_owned_with_overwhelming_evidence(owner):
    result = ipguard("verify", "--vault", owner.path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["owned"] and report["watermark_accuracy"] == 1.0 and report["p_value"] < 1e-30
    assert set(report["chance_rates"]) == {"key_source", "task"}


def test_innocent_models_are_not_owned(owner, innocents):
    for name, path in innocents.items():
        result = ipguard("verify", "--vault", owner.path, "--model", path, "--json")
        assert result.exit_code == 1, (name, result.output)
        assert not json.loads(result.stdout)["owned"], name


def test_identity_images_authenticate_through_the_model(owner, innocents, tmp_path):
    issued = [owner.add_user(f"licensee-{i:03d}") for i in range(200)]
    owner.revoke_user("licensee-199")
    result = ipguard("authenticate", owner.identities_path, "--vault", owner.path, "--json")
    body = json.loads(result.stdout)
    assert body["model_checked"] and result.exit_code == 1
    assert body["summary"]["by_reason"] == {"ok": 199, "revoked": 1}
    # Refused by the deployed model: a genuine image shown to a model without the watermark.
    rejected = ipguard("authenticate", issued[0].path, "--vault", owner.path,
                       "--model", innocents["same data, no watermark"], "--json")
    assert json.loads(rejected.stdout)["results"][0]["reason"] == "model-rejects"
    # Forgeries and clean images never pass, whatever the model says.
    keys = owner.key_images
    forged = (keys & 0xFE) | np.random.default_rng(0).integers(0, 2, keys.shape, dtype=np.uint8)
    for index, image in enumerate(np.concatenate([forged, keys, owner.controls["task"][:100]])):
        Image.fromarray(image[..., 0]).save(tmp_path / f"f{index:04d}.png")
    refused = json.loads(ipguard("authenticate", tmp_path, "--vault", owner.path, "--json").stdout)
    assert refused["summary"]["authorized"] == 0 and refused["summary"]["images"] == 300
    events = owner.registry.audit()
    assert sum(e.event == "authenticate" for e in events) == 200 + 1 + 300
