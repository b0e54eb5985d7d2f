"""The attack suites: `ipguard attack all` runs `default`; `make paper` runs `paper` for every scheme."""

from .base import get

SUITES = {
    # Every attack with its defaults, fine-tuning with both optimisers and by the informed attacker too.
    "default": (
        ("prune", {}),
        ("finetune", {"optimizers": ("sgd", "adam"), "renormalize": True}),
        ("query-modification", {}),
        ("transform", {}),
        ("truncate", {}),
        ("extract", {}),
    ),
    # The comparison's columns: the attacks the published schemes were measured under.
    "paper": (
        ("prune", {}),
        ("finetune", {"variants": ("FTAL", "RTLL", "RTAL"), "optimizers": ("sgd", "adam"), "renormalize": True}),
        ("query-modification", {}),
        ("transform", {"settings": ("jpeg:75",)}),
        ("truncate", {}),
        ("extract", {"labels": ("hard",), "surrogates": ("same",)}),
    ),
}


def suite(name="default", epochs=None):
    """The attacks of suite `name`, configured; `epochs` (quick checks) overrides every attack's training epochs."""
    import dataclasses

    from .base import REGISTRY

    configured = []
    for attack, params in SUITES[name]:
        declared = {field.name for field in dataclasses.fields(REGISTRY.get_class(attack).Config)}
        extra = {"epochs": epochs} if epochs is not None and "epochs" in declared else {}
        configured.append(get({"name": attack, "config": {**params, **extra}}))
    return configured


def run_suite(threat, model, name="default", on_attack=None, epochs=None):
    """Runs every attack of suite `name`; returns their `AttackReport`s. `on_attack(attack)` is called before each."""
    reports = []
    for attack in suite(name, epochs):
        if on_attack:
            on_attack(attack)
        reports.append(attack.run(threat, model))
    return reports
