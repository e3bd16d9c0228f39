"""CLIP: a causal text tower and a ViT image tower, read from and written to transformers' and open_clip's formats."""

from zoo.families.clip import variants  # noqa: F401  (registers the variants)
from zoo.families.clip.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from zoo.families.clip.convert import (
    ARCHITECTURES,
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_WEIGHTS,
    config_from_hf,
    config_to_hf,
    is_open_clip_config,
    rules,
)
from zoo.families.clip.model import CLIPModel, CLIPOutput, contrastive_loss
from zoo.families.clip.parity import PARITY
from zoo.registry import Family, register_family


def _export_files(config: CLIPConfig) -> tuple[str, str]:
    if config.layout == "open_clip":
        return OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS[0]
    return "config.json", "model.safetensors"


register_family(
    Family(
        name="clip",
        config_cls=CLIPConfig,
        tasks={"base": CLIPModel},
        hf_model_types=("clip",),
        hf_architectures={arch: task for task, arch in ARCHITECTURES.items()},
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        rules=rules,
        matches=is_open_clip_config,
        parity=PARITY,
        config_files={OPEN_CLIP_CONFIG: OPEN_CLIP_WEIGHTS},
        export_files=_export_files,
    )
)

__all__ = ["CLIPConfig", "CLIPModel", "CLIPOutput", "CLIPTextConfig", "CLIPVisionConfig", "contrastive_loss"]
