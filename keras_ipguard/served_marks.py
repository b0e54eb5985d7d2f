"""Served marks: evidence against a thief who extracts the model through the licence gateway (after DAWN,
Szyller et al., ACM MM 2021).

A thief who copies a model through `ipguard serve` trains the copy on the
gateway's answers. With `--mark-rate R` the gateway answers a keyed fraction R
of the images it is asked about with a wrong task class chosen with the
owner's secret: for a marked image x whose model answer is y, it swaps the
probabilities of y and of t(x) = (y + 1 + h mod (N-1)) mod N, h a keyed hash of
x's pixels. The same image always gets the same answer, so asking again shows
nothing. Each marked answer (the image, y, t(x), the user) goes to the vault's
registry.

A copy trained on those answers learns some of the marks by heart. `verify`
asks the suspect about the recorded images and counts, among those it does
not answer y, how many it answers t(x) (`verification.marks_test`). An innocent model never saw the
gateway's answers and is independent of the keyed hash, so when it does not
answer y it answers t(x) with probability exactly 1/(N-1): an exact binomial
test that needs no control images.

Costs and limits: a licensed user gets a wrong answer on a fraction R of new
images. The hash is of the exact pixels, so a thief who asks about every image
several times with small perturbations and takes the majority answer removes
the marks, for a multiple of the queries (each of which the gateway audits).
A thief who extracts from a stolen model file, not through the gateway, never
sees a mark.
"""

import dataclasses
import hashlib
import hmac

import numpy as np

from .errors import VaultError

_DOMAIN = b"ipguard/v1/served-marks"


def fingerprint(image):
    """The sha256 hex of an image's shape and uint8 pixels (what identifies a query)."""
    image = np.ascontiguousarray(image, np.uint8)
    return hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()


class MarkPolicy:
    """Which answers the gateway marks, and with which class.

    Args:
        owner_key: the vault's owner secret.
        rate: the fraction of images whose answer is marked, 0 < rate <= 1.
        num_classes: N, the task classes answered.
    """

    def __init__(self, owner_key, rate, num_classes):
        if not 0 < float(rate) <= 1:
            raise ValueError(f"the mark rate must be in (0, 1], got {rate}")
        if int(num_classes) < 2:
            raise ValueError("served marks need at least 2 task classes")
        self.rate, self.num_classes = float(rate), int(num_classes)
        self._key = hmac.digest(bytes(owner_key), _DOMAIN, "sha256")

    def draws(self, image):
        """(u, offset): a keyed uniform draw in [0, 1) and an offset 1..N-1 for one image."""
        image = np.ascontiguousarray(image, np.uint8)
        digest = hmac.digest(self._key, repr(image.shape).encode() + image.tobytes(), "sha256")
        u = int.from_bytes(digest[:8], "big") / 2.0**64
        return u, 1 + int.from_bytes(digest[8:16], "big") % (self.num_classes - 1)

    def apply(self, images, probabilities):
        """(answers, marks): `probabilities` (B, N) with the marked rows' top class swapped for their mark, and
        the `Marks` of those rows."""
        probabilities = np.array(probabilities, copy=True)
        chosen, model_classes, served = [], [], []
        for row, image in enumerate(images):
            u, offset = self.draws(image)
            if u >= self.rate:
                continue
            y = int(np.argmax(probabilities[row]))
            t = (y + offset) % self.num_classes
            probabilities[row, [y, t]] = probabilities[row, [t, y]]
            chosen.append(row)
            model_classes.append(y)
            served.append(t)
        return probabilities, Marks(np.asarray(images)[chosen], np.asarray(model_classes, np.int64),
                                    np.asarray(served, np.int64))


@dataclasses.dataclass
class Marks:
    """Marked answers: the images, the model's own classes, the classes served instead, and whose they were."""

    images: np.ndarray
    model_classes: np.ndarray
    served_classes: np.ndarray
    users: tuple = ()  # one user name (or None) per mark, where known

    def __len__(self):
        return int(len(self.served_classes))

    def unique(self):
        """The marks with every image once (a thief asking twice is one mark, not two independent ones)."""
        seen, keep = set(), []
        for index, image in enumerate(self.images):
            key = fingerprint(image)
            if key not in seen:
                seen.add(key)
                keep.append(index)
        users = tuple(self.users[i] for i in keep) if self.users else ()
        return Marks(self.images[keep], self.model_classes[keep], self.served_classes[keep], users)


def recorded(vault):
    """The vault's recorded marks (`Marks`, each image once), or None where the gateway never marked an answer."""
    if not vault.registry.path.is_file():  # a vault without a registry (never opened by the gateway)
        return None
    rows = vault.registry.served_marks()
    if not rows:
        return None
    shape = tuple(vault.input_shape)
    if any(len(row["pixels"]) != int(np.prod(shape)) for row in rows):
        raise VaultError(f"served marks in {vault.registry.path} are not images of the vault's input shape "
                         f"{list(shape)}; restore the registry from a backup")
    images = np.stack([np.frombuffer(row["pixels"], np.uint8).reshape(shape) for row in rows])
    marks = Marks(images, np.array([row["model_class"] for row in rows], np.int64),
                  np.array([row["served_class"] for row in rows], np.int64),
                  tuple(row["user_name"] for row in rows))
    return marks.unique()
