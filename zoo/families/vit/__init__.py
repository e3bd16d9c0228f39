"""ViT: the pre-LN vision transformer, read from and written to timm's and transformers' formats."""

from zoo.families.vit import variants  # noqa: F401  (registers the variants)
from zoo.families.vit.config import ViTConfig
from zoo.families.vit.convert import (
    ARCHITECTURES,
    config_from_hf,
    config_to_hf,
    is_timm_config,
    rules,
    task_from_config,
)
from zoo.families.vit.model import ViT, ViTForImageClassification
from zoo.families.vit.parity import PARITY
from zoo.registry import Family, register_family

register_family(
    Family(
        name="vit",
        config_cls=ViTConfig,
        tasks={"base": ViT, "image_classification": ViTForImageClassification},
        hf_model_types=("vit",),
        hf_architectures={arch: task for task, arch in ARCHITECTURES.items()},
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        rules=rules,
        matches=is_timm_config,
        task_from_config=task_from_config,
        parity=PARITY,
    )
)

__all__ = ["ViT", "ViTConfig", "ViTForImageClassification"]
