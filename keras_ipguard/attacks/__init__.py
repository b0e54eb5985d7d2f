"""Attacks a thief would mount, one module each, found by name (`ipguard attack NAME`, `attacks.get(NAME)`).

- `prune` (`pruning.py`): TFMOT magnitude pruning, one-shot or with retraining.
- `finetune` (`fine_tuning.py`): FTLL, FTAL, RTLL, RTAL.
- `query-modification` (`query_modification.py`): Namba & Sakuma's autoencoder filter.
- `transform` (`transforms.py`): JPEG, noise, bit depth, median.
- `truncate` (`truncation.py`): the watermark unit cut off.
- `extract` (`extraction.py`): a fresh model trained on the stolen model's answers (hard or soft labels).

Every attack is measured the same way (`common.measure`, an `AttackReport`);
the suites are in `suites.py`. Adding an attack is one new module: subclass
`Attack`, set `name`, `Config` and `run`; see docs/architecture.md.

Example (needs a vault and its data):

    threat = attacks.threat_model(vault)
    report = attacks.get({"name": "prune", "config": {"rates": [0.5]}}).run(threat, model)
"""

from .base import REGISTRY, Attack, get, names
from .common import AttackReport, AttackSetting, ThreatModel, threat_model
from .suites import SUITES, run_suite, suite

# The registry keeps the order of registration.
# isort: off
from .pruning import Prune
from .fine_tuning import FineTune
from .query_modification import QueryModification
from .transforms import Transform
from .truncation import Truncate
from .extraction import Extract
# isort: on

__all__ = ["REGISTRY", "SUITES", "Attack", "AttackReport", "AttackSetting", "Extract", "FineTune", "Prune",
           "QueryModification",
           "ThreatModel", "Transform", "Truncate", "get", "names", "run_suite", "suite", "threat_model"]
