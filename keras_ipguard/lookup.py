"""Registries of named kinds (watermark schemes, attacks): declare once, look up by name.

As tfds registers each dataset builder when its class is defined and Keras'
`optimizers.get()` resolves a string, a config dict or an instance, a
`Registry` holds the classes of one kind by name and resolves identifiers.

Example:

>>> widgets = Registry("widget")
>>> class Widget(Registered):
...     registry = widgets
>>> class Round(Widget):
...     name = "round"
>>> widgets.names(), widgets.get("ROUND").to_record()
(('round',), {'name': 'round', 'config': {}})
"""

import dataclasses
import difflib
from typing import ClassVar

from . import settings
from .errors import IPGuardError


class Registry:
    """Classes of one kind by their `name` attribute; names match in any case."""

    def __init__(self, kind):
        self.kind = kind
        self._classes = {}

    def register(self, cls):
        """Adds `cls` under `cls.name` (a class decorator); a second class of the same name is refused."""
        key = cls.name.lower()
        known = self._classes.get(key)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"a {self.kind} named {cls.name!r} is already registered ({known.__module__})")
        self._classes[key] = cls
        return cls

    def names(self):
        """Every registered name, in registration order."""
        return tuple(cls.name for cls in self._classes.values())

    def get_class(self, name):
        """The class registered as `name` (any case); an IPGuardError naming the choices otherwise."""
        cls = self._classes.get(str(name).lower())
        if cls is None:
            close = difflib.get_close_matches(str(name).lower(), list(self._classes), n=1)
            hint = f" (did you mean {self._classes[close[0]].name}?)" if close else ""
            raise IPGuardError(f"unknown {self.kind} {name!r}{hint}; choose one of {', '.join(self.names())}")
        return cls

    def get(self, identifier):
        """An instance from a name, a `{"name": ..., "config": {...}}` dict or an instance (returned as is)."""
        if isinstance(identifier, str):
            return self.get_class(identifier)()
        if isinstance(identifier, dict):
            return self.get_class(identifier.get("name", "")).from_config(identifier.get("config") or {})
        if any(isinstance(identifier, cls) for cls in self._classes.values()):
            return identifier
        raise IPGuardError(f"a {self.kind} is given by name, config dict or instance, got {type(identifier).__name__}")


@dataclasses.dataclass
class NoSettings:
    """The config of a kind without settings."""


class Registered:
    """A kind whose subclasses join `registry` when they are defined with a `name`, configured by `Config`.

    `Config` is a dataclass of `settings.setting` fields; an instance holds a
    checked one as `config`, and round-trips as `{name, config}`.
    """

    registry: ClassVar[Registry]
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type] = NoSettings

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            cls.registry.register(cls)

    def __init__(self, **config):
        self.config = settings.check(self.Config(**config))

    def get_config(self):
        return settings.to_config(self.config)

    @classmethod
    def from_config(cls, config):
        return cls(**vars(settings.from_config(cls.Config, config)))

    def to_record(self):
        """`{name, config}`: how vault.json, embed options and suites record it."""
        return {"name": self.name, "config": self.get_config()}

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"
