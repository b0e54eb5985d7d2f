"""The watermark metrics of DESIGN.md, measured on a model's top-1 answers."""

import time

import numpy as np

from .identity import Payload

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


def watermark_metrics(classify, num_classes, test_images, test_labels, key_images, identity_images=None,
                      key_labels=None):
    """clean_accuracy, false_watermark_rate, watermark_accuracy, identity_watermark_accuracy.

    Args:
        classify: callable mapping a uint8 batch to top-1 class ids.
        num_classes: N; the watermark class is N.
        key_labels: the label each key must get, for a comparison scheme without
            class N (then false_watermark_rate does not apply: None); None = class N.
    """
    predicted = np.asarray(classify(test_images))
    wanted = num_classes if key_labels is None else np.asarray(key_labels)
    metrics = {
        "clean_accuracy": float(np.mean(predicted == test_labels)),
        "false_watermark_rate": float(np.mean(predicted == num_classes)) if key_labels is None else None,
        "watermark_accuracy": float(np.mean(np.asarray(classify(key_images)) == wanted)),
        "test_examples": int(len(test_images)),
        "key_count": int(len(key_images)),
    }
    if identity_images is not None:
        metrics["identity_watermark_accuracy"] = float(np.mean(np.asarray(classify(identity_images)) == num_classes))
        metrics["identity_images"] = int(len(identity_images))
    return metrics


FORGERY_KINDS = ("random-lsb", "bit-flip", "other-secret", "revoked", "clean", "jpeg")


def forgery_corpus(vault, genuine, revoked, clean, rng, counts):
    """Images that must never authenticate, by kind (`forged_acceptance_rate`'s denominator).

    Args:
        vault: an extra-class `Vault`.
        genuine: uint8 identity images of active users (bit flips and JPEG start from them).
        revoked: registry records of revoked users (freshly signed images are made for them).
        clean: uint8 clean images (the keys are added to them).
        rng: a numpy Generator.
        counts: {kind: how many} for the kinds of FORGERY_KINDS wanted.

    Kinds: random LSB planes on key images; genuine payloads with one payload
    bit flipped; well-formed payloads signed with another secret; fresh
    images of revoked users; clean keys and images; genuine images after JPEG
    (quality 50..99).
    """
    import os  # pylint: disable=import-outside-toplevel

    from .attacks.transform import jpeg  # pylint: disable=import-outside-toplevel
    from .identity import PAYLOAD_BITS, IdentityCodec  # pylint: disable=import-outside-toplevel

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

    def other_secret(n):
        other = IdentityCodec(os.urandom(32))
        now = int(time.time())
        return np.stack([other.encode(keys[i % len(keys)], Payload(1 + i % 1000, i % len(keys), now)) for i in range(n)])

    def revoked_images(n):
        return np.stack([codec.encode(keys[u.key_index], Payload(u.id, u.key_index, u.issued_at))
                         for u in (revoked[i % len(revoked)] for i in range(n))])

    def clean_images(n):
        pool = np.concatenate([keys, clean])
        return pool[np.arange(n) % len(pool)]

    def jpeg_images(n):
        return np.concatenate([jpeg(genuine[[i % len(genuine)]], 50 + i % 50) for i in range(n)])

    makers = {"random-lsb": random_lsb, "bit-flip": bit_flip, "other-secret": other_secret,
              "revoked": revoked_images, "clean": clean_images, "jpeg": jpeg_images}
    return {kind: makers[kind](count) for kind, count in counts.items() if count}
