"""Output truncation: the thief drops the watermark unit and serves the N-class argmax."""

from ..backend import keras as _keras
from ..suspects import KerasSuspect
from ..verify import verify
from .common import AttackReport, Timer, measure
from .prune import as_functional


def truncate_model(model, num_classes):
    """The model with only its first N outputs (the watermark unit cut off)."""
    keras = _keras()
    functional = as_functional(model)
    inputs = keras.Input(functional.input_shape[1:])
    probabilities = functional(inputs)
    return keras.Model(inputs, keras.layers.Lambda(lambda p: p[:, :num_classes], name="truncate")(probabilities))


def truncate(threat, model):
    """Measures the truncated model and what verification can still say; returns an `AttackReport`."""
    with Timer() as total:
        baseline = measure(threat, model, {"truncated": False})
        cut = truncate_model(model, threat.vault.num_classes)
        setting = measure(threat, cut, {"truncated": True})
        report = verify(threat.vault, KerasSuspect(cut))
        setting.extra.update(verdict=report.verdict, task_agreement=report.task_agreement)
    note = ("the thief serves argmax over the N task outputs only: class N can never be answered, so the watermark "
            "and identity checks cannot pass; task_agreement says how often its answers on keys and controls match "
            "the vault model's best task class (descriptive, not a proof)")
    if not threat.vault.issues_identities:
        note = (f"a {threat.vault.scheme!r} model has N outputs and no watermark unit: truncating to N outputs "
                "leaves it unchanged")
    return AttackReport("truncate", threat.to_dict(), baseline.to_dict(), [setting], total.seconds, notes=[note])
