"""Declarative checkpoint conversion: rules per family, one engine, every rule invertible."""

from zoo.convert.engine import (
    ConversionError,
    Rule,
    convert_state_dict,
    drop,
    fuse,
    identity_rules,
    invert_rules,
    permute,
    rename,
    split,
    transpose,
)

__all__ = [
    "ConversionError",
    "Rule",
    "convert_state_dict",
    "drop",
    "fuse",
    "identity_rules",
    "invert_rules",
    "permute",
    "rename",
    "split",
    "transpose",
]
