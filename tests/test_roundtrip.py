"""The foundation issue's acceptance round trip: 1,000 genuine users, 100,000 forgeries."""

import numpy as np
import pytest
from PIL import Image

from keras_ipguard import Reason, authenticate
from keras_ipguard.identity import PAYLOAD_BITS
from keras_ipguard.metrics import forgery_corpus as forgery_corpus_of

USERS = 1000
REVOKED = 100


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    from keras_ipguard import Vault

    from conftest import synthetic_keys

    vault = Vault.create(
        tmp_path_factory.mktemp("roundtrip") / "vault",
        dataset="fashion_mnist",
        num_classes=10,
        input_shape=(28, 28, 1),
        key_images=synthetic_keys(100, (28, 28, 1)),
    )
    issued = [vault.add_user(f"user-{i:04d}") for i in range(USERS)]
    for record in issued[-REVOKED:]:
        vault.revoke_user(record.user.name)
    return vault, issued


def forgery_corpus(vault, issued, rng):
    """100,000 images that must all be refused, by kind."""
    from conftest import synthetic_keys

    genuine = np.stack([np.asarray(Image.open(i.path))[..., None] for i in issued[:-REVOKED]])
    revoked = [record.user for record in issued[-REVOKED:]]
    # Pixel flips: the first 10 genuine images with one LSB flipped, at each of the 784 pixels in turn.
    counts = {"random-lsb": 32_160, "bit-flip": 30_000, "pixel-flip": 7_840, "other-secret": 10_000, "revoked": 5_000,
              "clean": 10_000, "jpeg": 5_000}
    # Clean: each key image 20 times, and smooth random images.
    clean = np.concatenate([np.repeat(vault.key_images, 19, axis=0), synthetic_keys(8_000, vault.input_shape, seed=9)])
    return forgery_corpus_of(vault, genuine, revoked, clean, rng, counts)


def test_all_genuine_identity_images_authenticate(populated):
    vault, issued = populated
    active = [str(record.path) for record in issued[:-REVOKED]]
    report = authenticate(vault, active, log=False)
    assert report.authorized_count == USERS - REVOKED
    assert [r.user for r in report.results] == [record.user.name for record in issued[:-REVOKED]]
    revoked = authenticate(vault, [str(record.path) for record in issued[-REVOKED:]], log=False)
    assert revoked.by_reason == {Reason.REVOKED: REVOKED}


def test_one_hundred_thousand_forgeries_are_all_refused(populated):
    vault, issued = populated
    corpus = forgery_corpus(vault, issued, np.random.default_rng(0))
    assert sum(len(images) for images in corpus.values()) == 100_000
    for kind, images in corpus.items():
        report = authenticate(vault, list(images), log=False)
        assert report.authorized_count == 0, kind
        assert all(r.reason in Reason.EXPLANATIONS and r.reason != Reason.OK for r in report.results)
    assert set(authenticate(vault, list(corpus["revoked"]), log=False).by_reason) == {Reason.REVOKED}
    # A flipped payload bit breaks the MAC (or, in the nonce or the magic, the payload itself); any other
    # flipped LSB is tampering, refused with its own reason.
    flips = authenticate(vault, list(corpus["pixel-flip"]), log=False).by_reason
    assert flips[Reason.TAMPERED] == 10 * (784 - PAYLOAD_BITS)
    assert flips[Reason.BAD_MAC] + flips[Reason.NO_PAYLOAD] == 10 * PAYLOAD_BITS and len(flips) == 3
