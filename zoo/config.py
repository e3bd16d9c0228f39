"""Base for family configs: frozen dataclasses, validated at construction, errors that name the field."""

import dataclasses
import difflib
import typing
from typing import Any, ClassVar, Self


class ConfigError(ValueError):
    """A config value is wrong; the message starts with the field's name."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Every family's config derives from this. Subclasses validate in ``__post_init__``.

    A field that defaults to None and is worked out from the others (LLaMA's ``head_dim``,
    GPT's ``d_ff``) is filled in by ``_derive`` at construction, so the saved config states it;
    ``replace`` derives it again when it is not overridden, so ``replace(n_heads=16)`` can never
    leave a ``head_dim`` that belonged to the old ``n_heads``.
    """

    # A field a family renamed, old name -> new: a config saved under the old name still loads,
    # and an override by the old name says what to write instead.
    renamed_fields: ClassVar[dict[str, str]] = {}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def _check_keys(cls, keys, what: str) -> None:
        names = cls.field_names()
        for key in keys:
            if key in cls.renamed_fields:
                raise ConfigError(f"{key}: {cls.__name__} calls this field {cls.renamed_fields[key]!r} ({what})")
            if key not in names:
                close = difflib.get_close_matches(key, names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else f"; fields are {', '.join(names)}"
                raise ConfigError(f"{key}: {cls.__name__} has no field {key!r} ({what}){hint}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """The inverse of ``to_dict``: a field typed as another Config (a tower of a two-tower
        model) is rebuilt from its nested dict, and lists come back as tuples where the field
        is a tuple, so a config survives JSON unchanged. A field saved under its old name
        (``renamed_fields``) is read under its new one."""
        data = {cls.renamed_fields.get(key, key): value for key, value in data.items()}
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
        for key in self.__dict__.get("_derived", ()):
            overrides.setdefault(key, None)  # worked out again from the new values
        return dataclasses.replace(self, **overrides)

    def _derive(self, name: str, value: Any) -> None:
        """In ``__post_init__``: fill field ``name`` with ``value`` (worked out from the other
        fields) when it was left None. A given value equal to ``value`` counts as derived too
        (a saved config states its derived fields), so ``replace`` works it out again; a given
        value that differs is the user's choice and is kept."""
        current = getattr(self, name)
        if current is not None and current != value:
            return
        object.__setattr__(self, name, value)
        object.__setattr__(self, "_derived", (*self.__dict__.get("_derived", ()), name))

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
