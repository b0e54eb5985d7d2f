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


def watermark_metrics(classify, num_classes, test_images, test_labels, key_images, identity_images=None):
    """clean_accuracy, false_watermark_rate, watermark_accuracy, identity_watermark_accuracy.

    Args:
        classify: callable mapping a uint8 batch to top-1 class ids.
        num_classes: N; the watermark class is N.
    """
    predicted = np.asarray(classify(test_images))
    metrics = {
        "clean_accuracy": float(np.mean(predicted == test_labels)),
        "false_watermark_rate": float(np.mean(predicted == num_classes)),
        "watermark_accuracy": float(np.mean(np.asarray(classify(key_images)) == num_classes)),
        "test_examples": int(len(test_images)),
        "key_count": int(len(key_images)),
    }
    if identity_images is not None:
        metrics["identity_watermark_accuracy"] = float(np.mean(np.asarray(classify(identity_images)) == num_classes))
        metrics["identity_images"] = int(len(identity_images))
    return metrics
