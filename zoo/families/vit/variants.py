"""Registered ViT variants, each with the public config it mirrors (timm's entry points)."""

from zoo.families.vit.config import ViTConfig
from zoo.registry import register_variant

_SRC = "timm vision_transformer.py {} (https://huggingface.co/timm/{}.augreg_in21k_ft_in1k)"

for _name, _width, _heads in (("tiny", 192, 3), ("small", 384, 6), ("base", 768, 12)):
    register_variant(
        f"vit-{_name}-patch16-224",
        "vit",
        ViTConfig(d_model=_width, n_heads=_heads, d_ff=4 * _width),
        _SRC.format(f"vit_{_name}_patch16_224", f"vit_{_name}_patch16_224"),
        task="image_classification",
    )
# Tiny shapes for tests: image 40 (not 224), patch 8, d_ff != 4 * d_model, an odd number of classes.
_TINY = ViTConfig(image_size=40, patch_size=8, d_model=48, n_layers=2, n_heads=4, d_ff=108, n_labels=7)
register_variant("vit-test-tiny", "vit", _TINY, "zoo test config (timm layout)", task="image_classification")
register_variant(
    "vit-avg-tiny", "vit", _TINY.replace(pool="avg"), "zoo test config (timm, global average pooling)",
    task="image_classification",
)  # fmt: skip
register_variant(
    "vit-hf-tiny", "vit", _TINY.replace(layout="transformers", pooler=True, norm_eps=1e-12,
                                        pos_resample_antialias=False),
    "zoo test config (transformers' ViTModel layout, with its pooler)",
)  # fmt: skip
