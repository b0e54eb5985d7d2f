import os

import numpy as np
import pytest

from keras_ipguard import CapacityError, IdentityCodec, Payload, Reason
from keras_ipguard.identity import PAYLOAD_BITS

from conftest import synthetic_keys

SECRET = bytes(range(32))


@pytest.fixture(scope="module")
def codec():
    return IdentityCodec(SECRET)


@pytest.fixture(scope="module")
def key():
    return synthetic_keys(1, (28, 28, 1))[0]


def test_payload_fits_a_28x28_grayscale_image_at_one_bit_per_pixel():
    assert PAYLOAD_BITS <= 28 * 28


@pytest.mark.parametrize("shape", [(28, 28), (28, 28, 1), (32, 32, 3)])
def test_payload_round_trips(codec, shape):
    image = synthetic_keys(1, shape + (1,) if len(shape) == 2 else shape)[0].reshape(shape)
    payload = Payload(user_id=4_000_000_000, key_index=65535, issued_at=1_790_000_000)
    marked = codec.encode(image, payload)
    decoded = codec.decode(marked)
    assert decoded.ok and decoded.payload == payload
    np.testing.assert_array_equal(marked & 0xFE, image & 0xFE)


def test_identity_lsb_plane_looks_uniformly_random(codec, key):
    plane = np.stack([codec.encode(key, Payload(i, 0, 1)) & 1 for i in range(200)])
    # Every position is a fair coin across images: no fixed header bits to find.
    per_position = plane.reshape(200, -1).mean(axis=0)
    assert 0.45 < plane.mean() < 0.55
    assert per_position.min() > 0.2 and per_position.max() < 0.8


def test_too_small_image_names_capacity_and_need(codec):
    with pytest.raises(CapacityError, match=rf"holds 256 payload bits.*needs {PAYLOAD_BITS}"):
        codec.encode(np.zeros((16, 16, 1), np.uint8), Payload(1, 0, 0))


def test_payload_fields_are_range_checked():
    with pytest.raises(ValueError, match="user_id"):
        Payload(user_id=-1, key_index=0, issued_at=0)
    with pytest.raises(ValueError, match="key_index"):
        Payload(user_id=1, key_index=70000, issued_at=0)


def test_clean_image_has_no_payload(codec, key):
    assert codec.decode(key).reason == Reason.NO_PAYLOAD


def test_every_single_payload_bit_flip_is_refused(codec, key):
    marked = codec.encode(key, Payload(3, 0, 1_790_000_000))
    order = codec.order(key.shape)[:PAYLOAD_BITS]
    flipped = np.repeat(marked[None], PAYLOAD_BITS, axis=0).reshape(PAYLOAD_BITS, -1)
    flipped[np.arange(PAYLOAD_BITS), order] ^= 1
    reasons = {d.reason for d in codec.decode_batch(flipped.reshape((PAYLOAD_BITS,) + key.shape))}
    assert reasons <= {Reason.NO_PAYLOAD, Reason.BAD_MAC}
    assert Reason.BAD_MAC in reasons  # flips in the MAC itself are detected by the MAC


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_a_flipped_lsb_at_any_pixel_of_an_issued_image_is_refused(codec, shape):
    key = synthetic_keys(1, shape)[0]
    marked = codec.encode(key, Payload(3, 0, 1_790_000_000))
    size = marked.size
    flipped = np.repeat(marked.reshape(1, -1), size, axis=0)
    flipped[np.arange(size), np.arange(size)] ^= 1
    reasons = [d.reason for d in codec.decode_batch(flipped.reshape((size,) + shape))]
    payload_positions = set(codec.order(shape)[:PAYLOAD_BITS].tolist())
    # Inside the payload the MAC fails (or the magic); anywhere else the recomputed filler does.
    assert all(r in (Reason.BAD_MAC, Reason.NO_PAYLOAD) for i, r in enumerate(reasons) if i in payload_positions)
    assert all(r == Reason.TAMPERED for i, r in enumerate(reasons) if i not in payload_positions)


def test_a_version_1_payload_with_random_filler_still_decodes(codec, key):
    marked = codec.encode(key, Payload(3, 0, 1, version=1))
    filler = np.setdiff1d(np.arange(marked.size), codec.order(key.shape)[:PAYLOAD_BITS])
    legacy = marked.reshape(-1).copy()
    legacy[filler] = (legacy[filler] & 0xFE) | np.random.default_rng(1).integers(0, 2, len(filler), dtype=np.uint8)
    decoded = codec.decode(legacy.reshape(key.shape))
    assert decoded.ok and decoded.payload.version == 1
    # The version sits under the MAC: a version-2 image cannot pass for a legacy one to dodge the check.
    current = codec.encode(key, Payload(3, 0, 1)).reshape(-1)
    current[filler[0]] ^= 1
    assert codec.decode(current.reshape(key.shape)).reason == Reason.TAMPERED


def test_payload_copied_onto_another_image_is_refused(codec, key):
    marked = codec.encode(key, Payload(3, 0, 1))
    other = synthetic_keys(2, key.shape, seed=5)[1]
    transplanted = (other & 0xFE) | (marked & 1)
    assert codec.decode(transplanted).reason == Reason.BAD_MAC


def test_one_changed_pixel_above_the_lsb_is_refused(codec, key):
    marked = codec.encode(key, Payload(3, 0, 1))
    marked[5, 5, 0] ^= 0x80
    assert codec.decode(marked).reason == Reason.BAD_MAC


def test_payload_of_another_secret_is_refused(codec, key):
    foreign = IdentityCodec(os.urandom(32)).encode(key, Payload(3, 0, 1))
    assert not codec.decode(foreign).ok


def test_order_depends_only_on_secret_and_shape(key):
    first = IdentityCodec(SECRET).order(key.shape)
    np.testing.assert_array_equal(first, IdentityCodec(SECRET).order(key.shape))
    assert not np.array_equal(first, IdentityCodec(bytes(32)).order(key.shape))
    assert sorted(first) == list(range(784))


@pytest.mark.parametrize(
    "junk",
    [
        np.zeros((28, 28, 1), np.float32),
        np.zeros((28,), np.uint8),
        np.zeros((28, 28, 5), np.uint8),
        np.zeros((10, 10), np.uint8),
        "not an array",
        None,
        np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8),
    ],
)
def test_decoding_junk_never_raises_and_names_a_reason(codec, junk):
    decoded = codec.decode(junk)
    assert not decoded.ok and decoded.payload is None
    assert decoded.reason in Reason.EXPLANATIONS


def test_short_secrets_are_rejected():
    with pytest.raises(ValueError, match="at least 16 bytes"):
        IdentityCodec(b"short")
