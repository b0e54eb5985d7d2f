"""Settings declared once, as dataclass fields: default, help, kind, bounds, choices.

Embedding options, scheme configs and attack parameters are dataclasses whose
fields are made with `setting(...)`; `check(instance)` validates them (an
IPGuardError naming the setting), and the CLI builds its options, their
defaults and their help from the same fields, so nothing is copied.

Example:

>>> import dataclasses
>>> @dataclasses.dataclass
... class Params:
...     rates: tuple = setting((0.5,), "Sparsities.", kind=float, low=0, high=1, open_bounds=True)
...     def __post_init__(self):
...         check(self)
>>> Params(rates=(0.2, 0.9)).rates
(0.2, 0.9)
"""

import dataclasses

from .errors import IPGuardError


@dataclasses.dataclass(frozen=True)
class Setting:
    """How one field is checked and offered on the command line.

    Attributes:
        help: one sentence for `--help`.
        kind: the type of the value (of each item for a tuple): int, float, str, bool, or "path".
        choices: allowed values, or a callable returning them (a registry's names); matched in any case.
        low, high: inclusive bounds; `open_bounds` makes them exclusive ("low" or "high": that one only).
        cli: offered as a command-line option (False: an experimental knob, Python only).
        flag: the option's name [default: --field-name]; `off_flag` makes a bool an on/off pair.
        default_text: what `--help` shows as the default when the field's default is None.
        nargs: the option takes this many values at once (`--image-size H W`).
        metavar: how `--help` names the value(s).
    """

    help: str
    kind: object = None
    choices: object = None
    low: float | None = None
    high: float | None = None
    open_bounds: bool | str = False
    cli: bool = True
    flag: str | None = None
    off_flag: str | None = None
    default_text: str | None = None
    nargs: int = 1
    metavar: str | None = None

    def choice_list(self):
        return tuple(self.choices()) if callable(self.choices) else tuple(self.choices or ())


def setting(default, help, **options):
    """A dataclass field with a default (`dataclasses.MISSING`: required) and its `Setting`."""
    return dataclasses.field(default=default, metadata={"setting": Setting(help, **options)})


def fields(cls):
    """(field, Setting) of every field of dataclass `cls` made with `setting`."""
    return [(f, f.metadata["setting"]) for f in dataclasses.fields(cls) if "setting" in f.metadata]


def flag_of(field, spec):
    return spec.flag or "--" + field.name.replace("_", "-")


def _bounds(spec, low_open, high_open):
    if spec.high is None:
        return f"be {'greater than' if low_open else 'at least'} {spec.low}"
    if spec.low is None:
        return f"be {'less than' if high_open else 'at most'} {spec.high}"
    return f"lie in {'(' if low_open else '['}{spec.low}, {spec.high}{')' if high_open else ']'}"


def _checked(field, spec, value):
    name = f"{field.name} ({flag_of(field, spec)})"
    choices = spec.choice_list()
    if choices:
        match = {str(c).lower(): c for c in choices}.get(str(value).lower())
        if match is None:
            raise IPGuardError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        return match
    if spec.kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise IPGuardError(f"{name} must be a number, got {value!r}")
        low_open, high_open = spec.open_bounds in (True, "low"), spec.open_bounds in (True, "high")
        low_ok = spec.low is None or (value > spec.low if low_open else value >= spec.low)
        high_ok = spec.high is None or (value < spec.high if high_open else value <= spec.high)
        if not (low_ok and high_ok):
            raise IPGuardError(f"{name} must {_bounds(spec, low_open, high_open)}, got {value}")
        return spec.kind(value) if spec.kind is float else value
    return value


def check(instance):
    """Validates and normalises (choices to their canonical case) every setting of a dataclass instance."""
    for field, spec in fields(type(instance)):
        value = getattr(instance, field.name)
        if value is None:
            continue
        if isinstance(value, (tuple, list)):
            if not value:
                raise IPGuardError(f"{field.name} ({flag_of(field, spec)}) needs at least one value")
            value = tuple(_checked(field, spec, item) for item in value)
        else:
            value = _checked(field, spec, value)
        object.__setattr__(instance, field.name, value)
    return instance


def to_config(instance):
    """The instance's settings as a JSON-serialisable dict (tuples become lists)."""
    return {f.name: list(v) if isinstance(v := getattr(instance, f.name), tuple) else v
            for f in dataclasses.fields(instance)}


def from_config(cls, config):
    """An instance of dataclass `cls` from `to_config`'s dict; unknown keys are an IPGuardError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise IPGuardError(f"unknown setting {', '.join(unknown)} for {cls.__qualname__}; "
                           f"known: {', '.join(sorted(names))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
