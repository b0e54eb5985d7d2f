"""The watermark metrics of DESIGN.md, measured on a model's top-1 answers."""

import os
import time

import numpy as np

from .identity import PAYLOAD_BITS, IdentityCodec, Payload
from .images import jpeg

# User id 0 is never issued (registry ids start at 1): evaluation identity
# images carry it so they can never authenticate.
EVALUATION_USER_ID = 0


def evaluation_identities(codec, key_images, per_key=1):
    """Freshly issued identity images (user 0) on every key image, `per_key` each."""
    now = int(time.time())
    return np.stack(
        [
            codec.encode(key, Payload(EVALUATION_USER_ID, index, now))
            for index, key in enumerate(key_images)
            for _ in range(per_key)
        ]
    )


def watermark_metrics(classify, test_answers, test_labels, key_images, key_labels, watermark_class=None,
                      identity_images=None):
    """clean_accuracy, false_watermark_rate, watermark_accuracy, identity_watermark_accuracy.

    Args:
        classify: callable mapping a uint8 batch to top-1 class ids.
        test_answers, test_labels: the model's top-1 answers on the test split and the true labels.
        key_labels: the answer each key must get.
        watermark_class: N where the scheme has a watermark class, else None
            (then false_watermark_rate does not apply: None).
        identity_images: freshly issued identity images, or None.
    """
    metrics = {
        "clean_accuracy": float(np.mean(test_answers == test_labels)),
        "false_watermark_rate": None if watermark_class is None else float(np.mean(test_answers == watermark_class)),
        "watermark_accuracy": float(np.mean(np.asarray(classify(key_images)) == np.asarray(key_labels))),
        "test_examples": int(len(test_labels)),
        "key_count": int(len(key_images)),
    }
    if identity_images is not None:
        answers = np.asarray(classify(identity_images))
        metrics["identity_watermark_accuracy"] = float(np.mean(answers == watermark_class))
        metrics["identity_images"] = int(len(identity_images))
    return metrics


FORGERY_KINDS = ("random-lsb", "bit-flip", "pixel-flip", "other-secret", "revoked", "clean", "jpeg")


def forgery_corpus(vault, genuine, revoked, clean, rng, counts):
    """Images that must never authenticate, by kind (`forged_acceptance_rate`'s denominator).

    Args:
        vault: a `Vault` whose scheme issues identities.
        genuine: uint8 identity images of active users (bit flips and JPEG start from them).
        revoked: registry records of revoked users (freshly signed images are made for them).
        clean: uint8 clean images (the keys are added to them).
        rng: a numpy Generator.
        counts: {kind: how many} for the kinds of FORGERY_KINDS wanted.

    Kinds: random LSB planes on key images; genuine payloads with one payload
    bit flipped; genuine images with one pixel's LSB flipped, at every pixel in
    turn (each image's every position before the next image); well-formed
    payloads signed with another secret; fresh images of revoked users; clean
    keys and images; genuine images after JPEG (quality 50..99).
    """
    keys = vault.key_images
    codec = vault.codec()

    def random_lsb(n):
        picks = keys[rng.integers(0, len(keys), n)]
        return (picks & 0xFE) | rng.integers(0, 2, picks.shape, dtype=np.uint8)

    def bit_flip(n):
        order = codec.order(vault.input_shape)[:PAYLOAD_BITS]
        flipped = genuine[rng.integers(0, len(genuine), n)].reshape(n, -1).copy()
        flipped[np.arange(n), order[rng.integers(0, PAYLOAD_BITS, n)]] ^= 1
        return flipped.reshape((-1,) + vault.input_shape)

    def pixel_flip(n):
        size = int(np.prod(vault.input_shape))
        flipped = genuine[(np.arange(n) // size) % len(genuine)].reshape(n, -1).copy()
        flipped[np.arange(n), np.arange(n) % size] ^= 1
        return flipped.reshape((-1,) + vault.input_shape)

    def other_secret(n):
        other = IdentityCodec(os.urandom(32))
        now = int(time.time())
        return np.stack([other.encode(keys[i % len(keys)], Payload(1 + i % 1000, i % len(keys), now))
                         for i in range(n)])

    def revoked_images(n):
        return np.stack([codec.encode(keys[u.key_index], Payload(u.id, u.key_index, u.issued_at))
                         for u in (revoked[i % len(revoked)] for i in range(n))])

    def clean_images(n):
        pool = np.concatenate([keys, clean])
        return pool[np.arange(n) % len(pool)]

    def jpeg_images(n):
        return np.concatenate([jpeg(genuine[[i % len(genuine)]], 50 + i % 50) for i in range(n)])

    makers = {"random-lsb": random_lsb, "bit-flip": bit_flip, "pixel-flip": pixel_flip, "other-secret": other_secret,
              "revoked": revoked_images, "clean": clean_images, "jpeg": jpeg_images}
    return {kind: makers[kind](count) for kind, count in counts.items() if count}
