"""Registered CLIP variants, each with the public config it mirrors."""

from zoo.families.clip.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from zoo.registry import register_variant

# OpenAI's CLIP in transformers' layout: QuickGELU, and eos_token_id=2 in the text config, which
# transformers reads as "pool at the highest id" (the original CLIP's end-of-text, 49407).
_HF = "https://huggingface.co/openai/{}/blob/main/config.json"
_TEXT_B = CLIPTextConfig(eos_token_id=2, pad_token_id=1)
_VISION_B = CLIPVisionConfig()
for _name, _repo, _patch in (
    ("clip-vit-b-32", "clip-vit-base-patch32", 32),
    ("clip-vit-b-16", "clip-vit-base-patch16", 16),
):
    register_variant(_name, "clip", CLIPConfig(text=_TEXT_B, vision=_VISION_B.replace(patch_size=_patch)),
                     "OpenAI CLIP ViT-B/" + str(_patch) + " (" + _HF.format(_repo) + ")")  # fmt: skip
register_variant(
    "clip-vit-l-14",
    "clip",
    CLIPConfig(
        text=_TEXT_B.replace(d_model=768, n_heads=12, d_ff=3072),
        vision=CLIPVisionConfig(patch_size=14, d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
        embed_dim=768,
    ),
    "OpenAI CLIP ViT-L/14 (" + _HF.format("clip-vit-large-patch14") + ")",
)
# open_clip's ViT-B-32 configs (open_clip/model_configs/ViT-B-32{,-quickgelu}.json): the same shapes;
# end-of-text is the vocabulary's last id and padding is 0. The -quickgelu config is the one for
# the OpenAI and laion400m weights; the plain one (exact GELU) for the later LAION/DataComp ones.
_OC = "https://github.com/mlfoundations/open_clip/blob/main/src/open_clip/model_configs/{}.json"
_OC_TEXT = CLIPTextConfig(mlp="quick_gelu", eos_token_id=49407, pad_token_id=0)
for _suffix, _act in (("-quickgelu", "quick_gelu"), ("", "gelu")):
    register_variant(
        f"clip-openclip-vit-b-32{_suffix}",
        "clip",
        CLIPConfig(text=_OC_TEXT.replace(mlp=_act), vision=_VISION_B.replace(mlp=_act), layout="open_clip"),
        "open_clip ViT-B-32" + _suffix + " (" + _OC.format("ViT-B-32" + _suffix) + ")",
    )

# Tiny shapes for tests: text and image widths, d_ff and embed_dim all different, a 3x3 patch grid.
_TINY_TEXT = CLIPTextConfig(vocab_size=64, max_seq_len=12, d_model=32, n_layers=2, n_heads=4, d_ff=72,
                            eos_token_id=2, pad_token_id=1)  # fmt: skip
_TINY_VISION = CLIPVisionConfig(image_size=24, patch_size=8, d_model=48, n_layers=2, n_heads=4, d_ff=60)
_TINY = CLIPConfig(text=_TINY_TEXT, vision=_TINY_VISION, embed_dim=20)
register_variant("clip-tiny", "clip", _TINY, "zoo test config (transformers' CLIPModel layout, argmax pooling)")
register_variant(
    "clip-eos-tiny", "clip",
    _TINY.replace(text=_TINY_TEXT.replace(pool="eos", eos_token_id=5, mlp="gelu"),
                  vision=_TINY_VISION.replace(mlp="gelu")),
    "zoo test config (transformers' layout, pooling at the first eos_token_id, GELU)",
)  # fmt: skip
register_variant(
    "clip-openclip-tiny", "clip",
    _TINY.replace(text=_TINY_TEXT.replace(eos_token_id=63, pad_token_id=0, mlp="gelu"),
                  vision=_TINY_VISION.replace(mlp="gelu"), layout="open_clip"),
    "zoo test config (open_clip layout, GELU)",
)  # fmt: skip
