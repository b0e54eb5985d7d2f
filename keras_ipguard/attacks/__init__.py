"""Attacks a thief would mount, each measured the same way (`AttackReport`).

One module per family: `prune` (TFMOT magnitude pruning), `finetune` (FTLL,
FTAL, RTLL, RTAL), `query` (Namba & Sakuma's autoencoder query modification),
`transform` (JPEG, noise, bit depth, median), `truncate` (watermark unit cut off).
"""

from .common import AttackReport, AttackSetting, ThreatModel, threat_model
from .finetune import finetune
from .prune import prune
from .query import query_modification
from .transform import transform
from .truncate import truncate

__all__ = [
    "AttackReport",
    "AttackSetting",
    "ThreatModel",
    "finetune",
    "prune",
    "query_modification",
    "threat_model",
    "transform",
    "truncate",
]
