"""The foundation issue's acceptance round trip: 1,000 genuine users, 100,000 forgeries."""

import io
import os
import time

import numpy as np
import pytest
from PIL import Image

from keras_ipguard import IdentityCodec, Payload, Reason, authenticate
from keras_ipguard.identity import PAYLOAD_BITS

USERS = 1000
REVOKED = 100


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    from conftest import synthetic_keys
    from keras_ipguard import Vault

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


def _jpeg(image, quality):
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer))[..., None]


def forgery_corpus(vault, issued, rng):
    """100,000 images that must all be refused, by kind."""
    keys = vault.key_images
    genuine = np.stack([np.asarray(Image.open(i.path))[..., None] for i in issued[:-REVOKED]])
    codec = vault.codec()
    order = codec.order(vault.input_shape)[:PAYLOAD_BITS]
    corpus = {}
    # Random LSB payloads on key images.
    picks = keys[rng.integers(0, len(keys), 40_000)]
    corpus["random-lsb"] = (picks & 0xFE) | rng.integers(0, 2, picks.shape, dtype=np.uint8)
    # Genuine payloads with one payload bit flipped.
    which = rng.integers(0, len(genuine), 30_000)
    flipped = genuine[which].reshape(30_000, -1).copy()
    flipped[np.arange(30_000), order[rng.integers(0, PAYLOAD_BITS, 30_000)]] ^= 1
    corpus["bit-flip"] = flipped.reshape((-1,) + vault.input_shape)
    # Well-formed payloads for real users, signed with another secret.
    other = IdentityCodec(os.urandom(32))
    corpus["other-secret"] = np.stack(
        [other.encode(keys[i % len(keys)], Payload(1 + i % USERS, i % len(keys), int(time.time()))) for i in range(10_000)]
    )
    # Freshly signed, genuine-format images of revoked users.
    revoked = [record.user for record in issued[-REVOKED:]]
    corpus["revoked"] = np.stack(
        [codec.encode(keys[u.key_index], Payload(u.id, u.key_index, u.issued_at)) for u in revoked for _ in range(50)]
    )
    # Clean images: the key images themselves and smooth random images.
    from conftest import synthetic_keys

    corpus["clean"] = np.concatenate([np.repeat(keys, 20, axis=0), synthetic_keys(8_000, vault.input_shape, seed=9)])
    # Genuine images after JPEG re-encoding.
    corpus["jpeg"] = np.stack([_jpeg(genuine[i % len(genuine)], 50 + i % 50) for i in range(5_000)])
    return corpus


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
