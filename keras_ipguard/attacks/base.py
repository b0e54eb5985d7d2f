"""The `Attack` base class and the registry every attack joins when its class is defined.

An attack declares its parameters once, as a dataclass of `settings.setting`
fields with their defaults (`Config`); the CLI builds `ipguard attack NAME`'s
options from them, and the suites (`suites.py`) name attacks and override
parameters. `run(threat, model)` returns an `AttackReport`.

This module imports no TensorFlow, so the CLI can list attacks cheaply.
"""

from ..lookup import Registered, Registry

REGISTRY = Registry("attack")


class Attack(Registered):
    """A thief's move against a stolen model: subclass, set `name`, `summary`, `Config` and `run`.

    Example:

    >>> attack = get("prune")
    >>> attack.config.rates[:3]
    (0.1, 0.2, 0.3)
    >>> get({"name": "prune", "config": {"rates": [0.5]}}).config.rates
    (0.5,)
    """

    registry = REGISTRY

    def run(self, threat, model):
        """Attacks `model` (a Keras model) under `threat` (a `ThreatModel`); returns an `AttackReport`."""
        raise NotImplementedError


def get(identifier):
    """An attack from a name (any case), a `{name, config}` dict or an instance."""
    return REGISTRY.get(identifier)


def names():
    """Every registered attack's name."""
    return REGISTRY.names()
