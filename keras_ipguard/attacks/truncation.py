"""Output truncation: the thief drops the watermark unit and serves the N-class argmax."""

from .. import schemes
from ..suspects import KerasSuspect
from ..verification import verify
from .base import Attack
from .common import AttackReport, Timer, measure


def truncate_model(model, num_classes):
    """The model with only its first N outputs (the watermark unit cut off)."""
    from ..backend import keras_of
    from ..models import as_functional

    functional = as_functional(model)
    keras = keras_of(functional)
    inputs = keras.Input(functional.input_shape[1:])
    probabilities = functional(inputs)
    return keras.Model(inputs, keras.layers.Lambda(lambda p: p[:, :num_classes], name="truncate")(probabilities))


class Truncate(Attack):
    name = "truncate"
    summary = "The thief drops the watermark unit and serves the N-class argmax."

    def run(self, threat, model):
        """Measures the truncated model and what verification can still say."""
        with Timer() as total:
            baseline = measure(threat, model, {"truncated": False})
            cut = truncate_model(model, threat.vault.num_classes)
            setting = measure(threat, cut, {"truncated": True})
            report = verify(threat.vault, KerasSuspect(cut))
            setting.extra.update(verdict=report.verdict, task_agreement=report.task_agreement)
        note = ("the thief serves argmax over the N task outputs only: class N can never be answered, so the watermark "
                "and identity checks cannot pass; task_agreement says how often its answers on keys and controls "
                "match the vault model's best task class (descriptive, not a proof)")
        if not schemes.of_vault(threat.vault).has_watermark_class:
            note = "the model has N outputs and no watermark unit: truncating to N outputs leaves it unchanged"
        return AttackReport(self.name, threat.to_dict(), baseline.to_dict(), [setting], total.seconds, notes=[note])
