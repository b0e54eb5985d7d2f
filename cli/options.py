"""Click options built from the library's declared settings (`keras_ipguard.settings`), never copied."""

import dataclasses

import click

from keras_ipguard import settings


class LazyChoice(click.ParamType):
    """A choice among values known only when parsing (a registry's names); any case is accepted."""

    name = "choice"

    def __init__(self, choices):
        self._choices = choices

    @property
    def choices(self):
        return tuple(self._choices()) if callable(self._choices) else tuple(self._choices)

    def get_metavar(self, param, ctx=None):
        return "[" + "|".join(map(str, self.choices)) + "]"

    def convert(self, value, param, ctx):
        match = {str(c).lower(): c for c in self.choices}.get(str(value).lower())
        if match is None:
            self.fail(f"{value!r} is not one of {', '.join(map(str, self.choices))}", param, ctx)
        return match


class CommaList(click.ParamType):
    """A comma-separated list of values of one type ('0.1,0.5' -> (0.1, 0.5)); repeated options add up."""

    def __init__(self, item_type):
        self.item_type = item_type
        self.name = f"{getattr(item_type, 'name', 'value')}[,...]"

    def get_metavar(self, param, ctx=None):
        inner = self.item_type.get_metavar(param, ctx) if isinstance(self.item_type, LazyChoice) else None
        return f"{inner or self.item_type.name.upper()}[,...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        return tuple(self.item_type.convert(item.strip(), param, ctx) for item in str(value).split(",") if item.strip())


def _item_type(spec):
    if spec.choices:
        return LazyChoice(spec.choices)
    return {int: click.INT, float: click.FLOAT, "path": click.Path(exists=True),
            "dir": click.Path(file_okay=False)}.get(spec.kind, click.STRING)


def _default_text(field, spec):
    if spec.default_text:
        return spec.default_text
    default = field.default
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return None if default in (None, dataclasses.MISSING) else str(default)


def option(field, spec, tag=None):
    """A click option for one setting. With `tag` (a scheme's name), it defaults to None (not given)."""
    flag = settings.flag_of(field, spec)
    default_text = _default_text(field, spec)
    help_text = spec.help + (f" [{tag}" + (f"; default: {default_text}]" if default_text else "]") if tag else
                             (f"  [default: {default_text}]" if default_text else ""))
    if isinstance(field.default, bool):
        off = spec.off_flag or "--no-" + flag[2:]
        return click.option(f"{flag}/{off}", field.name, default=None if tag else field.default, help=help_text)
    kind = _item_type(spec)
    if spec.nargs > 1:
        return click.option(flag, field.name, type=kind, nargs=spec.nargs, default=None, help=help_text,
                            metavar=spec.metavar)
    multiple = isinstance(field.default, tuple)
    return click.option(flag, field.name, type=CommaList(kind) if multiple else kind, multiple=multiple,
                        required=field.default is dataclasses.MISSING, help=help_text)


def options_of(cls, tag=None, exclude=()):
    """A decorator adding an option for every command-line setting of dataclass `cls`."""
    made = [option(field, spec, tag) for field, spec in settings.fields(cls) if spec.cli and field.name not in exclude]

    def decorate(function):
        for decorator in reversed(made):
            function = decorator(function)
        return function

    return decorate


def given(cls, values):
    """The settings of `cls` the user gave (repeated lists flattened); the library's defaults hold for the rest."""
    chosen = {}
    for field, _ in settings.fields(cls):
        value = values.get(field.name)
        if isinstance(value, tuple) and field.metadata["setting"].nargs == 1:
            value = tuple(item for group in value for item in (group if isinstance(group, tuple) else (group,)))
        if value is not None and value != ():
            chosen[field.name] = value
    return chosen
