"""Comparison watermarks, trained, verified and attacked by the same code as ours.

`ipguard embed --scheme NAME` selects one; the default, `extra-class`, is this
project's own (key images learnt as an extra class N). The others put a
trigger set with labels among the N task classes into an N-class model:

- `content` (Zhang et al., AsiaCCS 2018): a visible text stamp on training
  images of one class, labelled as another class.
- `noise` (Zhang et al. 2018): one fixed Gaussian noise pattern added to
  training images of one class, labelled as another class.
- `unrelated` (Zhang et al. 2018): out-of-distribution images (the key source)
  all labelled as one task class.
- `frontier-stitching` (Le Merrer et al., Neural Computing and Applications
  2020): FGSM adversarial examples of the trained model near its decision
  frontier, half that it misclassifies ("true adversaries") and half that it
  still gets right ("false adversaries"), fine-tuned in with their true labels.
- `adi` (Adi et al., USENIX Security 2018): abstract images with random labels.

Verification is ours for every scheme (`keras_ipguard.verify`): a binomial
test of the trigger hits against the suspect's own hit rate on controls, made
the same way as the triggers but never trained on (a fresh stamp or noise
pattern, held-out out-of-distribution, abstract or adversarial images) and on
clean task images with the trigger label.
"""

import dataclasses

EXTRA_CLASS = "extra-class"
SCHEMES = (EXTRA_CLASS, "content", "noise", "unrelated", "frontier-stitching", "adi")


@dataclasses.dataclass
class TriggerSet:
    """A comparison scheme's secret: trigger images, their labels and the verification controls.

    Attributes:
        images: uint8 (K, H, W, C) trigger images.
        labels: int (K,) the label each trigger must get.
        controls: {name: (uint8 images, int labels)} made like the triggers but
            never trained on; a suspect's hit rate on them is its chance rate.
        details: JSON-serialisable facts recorded in vault.json (source and
            target classes, noise sigma, epsilon, ...).
    """

    images: object
    labels: object
    controls: dict
    details: dict


def check_scheme(name):
    """Raises IPGuardError naming the choices unless `name` is a known scheme."""
    from ..errors import IPGuardError  # pylint: disable=import-outside-toplevel

    if name not in SCHEMES:
        raise IPGuardError(f"unknown scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    return name


from .frontier import frontier_triggers  # after TriggerSet, which it imports
from .patterns import build_triggers

__all__ = ["EXTRA_CLASS", "SCHEMES", "TriggerSet", "build_triggers", "check_scheme", "frontier_triggers"]
