"""Watermark schemes, one module each, found by name (`--scheme NAME`, `schemes.get(NAME)`).

- `extra-class` (ours, the default; Xue et al. 2022): secret out-of-distribution
  key images learnt as an extra class N; licensed users get identity images.
- `content`, `noise`, `unrelated` (Zhang et al., AsiaCCS 2018), `adi` (Adi et
  al., USENIX Security 2018), `frontier-stitching` (Le Merrer et al. 2020):
  the comparison schemes, whose triggers carry task labels.

Verification is the same for every scheme (`keras_ipguard.verify`): a binomial
test of the key hits against the suspect's own hit rate on controls, made the
same way as the keys but never trained on.

Adding a scheme is one new module: subclass `Scheme`, set `name`, and
import the module; see docs/architecture.md.
"""

from .base import REGISTRY, Scheme, Secret, get, names, of_vault

# The registry keeps the order of registration: ours first, then the paper's order.
# isort: off
from .extra_class import ExtraClass
from .content import Content
from .noise import Noise
from .unrelated import Unrelated
from .frontier_stitching import FrontierStitching
from .adi import Adi
# isort: on

__all__ = ["REGISTRY", "Adi", "Content", "ExtraClass", "FrontierStitching", "Noise", "Scheme", "Secret", "Unrelated",
           "get", "names", "of_vault"]
