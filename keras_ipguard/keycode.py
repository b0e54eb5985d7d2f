"""The hidden key code: each key's secret task class, drawn from the owner secret.

Besides class N, every key is trained to a secret task class c_i among the N
task classes (a share of its training target, and a pull of its features
toward class c_i's). A copy that lost class N (its unit cut off, its last
layer re-trained) can still be tested: its top-1 task class on the keys
matches the code far more often than on control images, whose codes are
drawn the same way and never trained (about 1/N for any model).

The codes come from a keyed PRNG (HMAC-SHA256 of the owner secret), not from
`--seed`: knowing the method and the seed does not give them away. This
module imports no TensorFlow.
"""

import hmac

import numpy as np

_DOMAIN = b"ipguard/v1/key-code/"


def secret_classes(owner_key, purpose, count, num_classes):
    """`count` task classes in [0, num_classes), uniform, from the owner secret and a purpose ("keys", ...)."""
    seed = int.from_bytes(hmac.digest(bytes(owner_key), _DOMAIN + purpose.encode(), "sha256"), "big")
    return np.random.default_rng(seed).integers(0, int(num_classes), int(count))


def draw(owner_key, key_count, control_counts, num_classes):
    """The codes of the keys and of every control set: `{"keys": [...], "controls": {name: [...]}}`."""
    return {"keys": secret_classes(owner_key, "keys", key_count, num_classes),
            "controls": {name: secret_classes(owner_key, f"controls/{name}", count, num_classes)
                         for name, count in sorted(control_counts.items())}}


def soft_targets(codes, num_classes, share):
    """Training targets of depth N+1: 1 - `share` on class N and `share` on each key's secret class."""
    targets = np.zeros((len(codes), num_classes + 1), np.float32)
    targets[:, num_classes] = 1.0 - share
    targets[np.arange(len(codes)), np.asarray(codes)] += share
    return targets


def to_record(codes):
    """The codes as vault.json holds them (lists of ints); `selected_from`: how many keys were trained where only
    some were kept (`survival`), so their codes are no longer a uniform draw."""
    record = {"keys": [int(c) for c in codes["keys"]],
              "controls": {name: [int(c) for c in values] for name, values in codes["controls"].items()}}
    if codes.get("selected_from"):
        record["selected_from"] = int(codes["selected_from"])
    return record
