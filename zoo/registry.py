"""Families and their registered variants: names -> (family, config); glob listing; typo hints."""

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from zoo.config import Config


@dataclass
class Family:
    """What the library knows about one family: its config, model classes and conversion.

    Attributes:
        name: family name (``"gpt"``, ``"llama"``, ...).
        config_cls: its Config dataclass.
        tasks: task name -> model class; the first is the default (``"causal_lm"``, ``"base"``, ...).
        hf_model_types: ``model_type`` values in a Hugging Face config.json that mean this family.
        hf_architectures: HF ``architectures[0]`` -> task.
        config_from_hf: HF config dict -> Config.
        config_to_hf: (Config, task) -> HF config dict.
        rules: (Config, task) -> conversion rules from the reference layout to zoo's.
        matches: optional extra detection on a config.json dict (formats without model_type).
        task_from_config: optional config.json dict -> task (or None), for formats whose config
            names no ``architectures`` (timm's says ``num_classes`` instead).
        reference: optional (path, task) -> the reference implementation's model, for parity.
        parity: optional hooks for ``zoo.parity`` (see there).
        config_files: config files of other formats the family reads -> their weight files, in
            the order to try (open_clip's ``open_clip_config.json`` -> ``open_clip_model.safetensors``,
            ``open_clip_pytorch_model.bin``); the config's dict goes to config_from_hf.
        export_files: optional Config -> (config file, weights file) names that
            ``save_pretrained(format="hf")`` writes (default config.json, model.safetensors).
        missing_defaults: optional (Config, task) -> {reference key: tensor}: keys a reference
            checkpoint may lack and the values its reference then fills in (transformers'
            ``_keys_to_ignore_on_load_missing``: BART's zero ``final_logits_bias``); any other
            absent key is still an error.
    """

    name: str
    config_cls: type[Config]
    tasks: dict[str, type[nn.Module]]
    hf_model_types: tuple[str, ...] = ()
    hf_architectures: dict[str, str] = field(default_factory=dict)
    config_from_hf: Callable[[dict], Config] | None = None
    config_to_hf: Callable[[Config, str], dict] | None = None
    rules: Callable[[Config, str], list] | None = None
    matches: Callable[[dict], bool] | None = None
    task_from_config: Callable[[dict], str | None] | None = None
    reference: Any = None
    parity: Any = None
    config_files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    export_files: Callable[[Config], tuple[str, str]] | None = None
    missing_defaults: Callable[[Config, str], dict] | None = None

    def model_class(self, task: str | None) -> type[nn.Module]:
        if task is None:
            return next(iter(self.tasks.values()))
        if task not in self.tasks:
            raise ValueError(f"task: family {self.name!r} has no task {task!r}; choose one of {', '.join(self.tasks)}")
        return self.tasks[task]


@dataclass(frozen=True)
class Variant:
    """A registered name: a family, a config and the public source the config mirrors."""

    name: str
    family: str
    config: Config
    source: str
    task: str | None = None


FAMILIES: dict[str, Family] = {}
VARIANTS: dict[str, Variant] = {}


def register_family(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def register_variant(name: str, family: str, config: Config, source: str, task: str | None = None) -> Variant:
    if name in VARIANTS:
        raise ValueError(f"variant {name!r} is registered twice")
    VARIANTS[name] = Variant(name, family, config, source, task)
    return VARIANTS[name]


def _load_families() -> None:
    import zoo.families  # noqa: F401  (imports every family, which registers itself)


def get_family(name: str) -> Family:
    _load_families()
    if name not in FAMILIES:
        raise ValueError(f"family: unknown family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def list_models(pattern: str | None = None) -> list[str]:
    """Registered variant names, sorted; ``pattern`` is a shell glob (``"llama*"``)."""
    _load_families()
    names = sorted(VARIANTS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_variant(name: str) -> Variant:
    _load_families()
    if name not in VARIANTS:
        close = difflib.get_close_matches(name, VARIANTS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `zoo list` shows them all"
        raise ValueError(f"unknown model {name!r}{hint}")
    return VARIANTS[name]


def create_model(name: str, task: str | None = None, **overrides: Any) -> nn.Module:
    """Build a registered variant with fresh random weights.

    Args:
        name: a name from ``list_models()``.
        task: which head (default: the variant's, else the family's first).
        overrides: any config field, e.g. ``n_layers=2, norm="rmsnorm", mlp="swiglu"``.
    """
    variant = get_variant(name)
    family = FAMILIES[variant.family]
    config = variant.config.replace(**overrides) if overrides else variant.config
    return family.model_class(task or variant.task)(config)
