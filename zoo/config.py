"""Base for family configs: frozen dataclasses, validated at construction, errors that name the field."""

import dataclasses
import difflib
import typing
from typing import Any, Self


class ConfigError(ValueError):
    """A config value is wrong; the message starts with the field's name."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Every family's config derives from this. Subclasses validate in ``__post_init__``."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def _check_keys(cls, keys, what: str) -> None:
        names = cls.field_names()
        for key in keys:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else f"; fields are {', '.join(names)}"
                raise ConfigError(f"{key}: {cls.__name__} has no field {key!r} ({what}){hint}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """The inverse of ``to_dict``: a field typed as another Config (a tower of a two-tower
        model) is rebuilt from its nested dict, and lists come back as tuples where the field
        is a tuple, so a config survives JSON unchanged."""
        cls._check_keys(data, "from a saved config")
        hints = typing.get_type_hints(cls)
        values = {}
        for key, value in data.items():
            kind = hints[key]
            if isinstance(kind, type) and issubclass(kind, Config) and isinstance(value, dict):
                value = kind.from_dict(value)
            elif typing.get_origin(kind) is tuple and isinstance(value, list):
                value = tuple(value)
            values[key] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> Self:
        """A copy with fields overridden, validated again. A nested config (a tower) takes a dict
        of its own overrides: ``config.replace(text={"n_layers": 2})``."""
        self._check_keys(overrides, "override")
        for key, value in overrides.items():
            current = getattr(self, key)
            if isinstance(current, Config) and isinstance(value, dict):
                overrides[key] = current.replace(**value)
        return dataclasses.replace(self, **overrides)

    # Validation helpers for __post_init__.
    def _positive(self, *names: str) -> None:
        optional = {f.name for f in dataclasses.fields(self) if "None" in str(f.type)}
        for name in names:
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")

    def _choice(self, name: str, choices) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise ConfigError(f"{name}: unknown value {value!r}; choose one of {', '.join(map(str, choices))}")

    def _divisible(self, name: str, by: str) -> None:
        a, b = getattr(self, name), getattr(self, by)
        if a % b:
            raise ConfigError(f"{name}: {name}={a} is not divisible by {by}={b}")

    def _fraction(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name}: must be in [0, 1), got {value!r}")
