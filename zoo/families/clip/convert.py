"""CLIP <-> its two references: transformers' CLIPModel and open_clip's CLIP.

transformers' directory holds config.json (``model_type: "clip"``, nested ``text_config`` and
``vision_config``) beside model.safetensors. open_clip's holds open_clip_config.json, whose
``model_cfg`` is the dict ``open_clip.create_model`` builds from, beside open_clip_model.safetensors
or open_clip_pytorch_model.bin. ``CLIPConfig.layout`` records which one a model came from, and
``save_pretrained(format="hf")`` writes that one back.
"""

import math

from zoo.config import ConfigError
from zoo.convert import Rule, drop, permute, rename, split, transpose
from zoo.families.clip.config import OPENAI_MEAN, OPENAI_STD, CLIPConfig, CLIPTextConfig, CLIPVisionConfig

OPEN_CLIP_CONFIG = "open_clip_config.json"
# read_weights tries them in this order; weights_only=True for the pickle.
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
ARCHITECTURES = {"base": "CLIPModel"}
_ACTS = ("quick_gelu", "gelu")
# transformers' CLIPTextModel before PR #24773 stored eos_token_id=2 and pooled at the highest
# id; it still does so for any config with eos_token_id == 2, and at the first eos_token_id otherwise.
_LEGACY_EOS = 2


def is_open_clip_config(hf: dict) -> bool:
    return "model_cfg" in hf


# --- transformers ------------------------------------------------------------------------------


def _act(tower: dict, where: str) -> str:
    act = tower.get("hidden_act", "quick_gelu")
    if act not in _ACTS:
        raise ConfigError(f"{where}.hidden_act: {act!r} is not one of zoo's CLIP activations ({', '.join(_ACTS)})")
    return act


def _config_from_transformers(hf: dict) -> CLIPConfig:
    t, v = hf.get("text_config") or {}, hf.get("vision_config") or {}
    eos = t.get("eos_token_id", 49407)
    text = CLIPTextConfig(
        vocab_size=t.get("vocab_size", 49408),
        max_seq_len=t.get("max_position_embeddings", 77),
        d_model=t.get("hidden_size", 512),
        n_layers=t.get("num_hidden_layers", 12),
        n_heads=t.get("num_attention_heads", 8),
        d_ff=t.get("intermediate_size", 2048),
        norm_eps=t.get("layer_norm_eps", 1e-5),
        mlp=_act(t, "text_config"),
        pool="argmax" if eos == _LEGACY_EOS else "eos",
        eos_token_id=eos,
        pad_token_id=t.get("pad_token_id", 1),
        attn_dropout=t.get("attention_dropout", 0.0),
    )
    image_size, patch_size = v.get("image_size", 224), v.get("patch_size", 32)
    for name, value in (("image_size", image_size), ("patch_size", patch_size)):
        if not isinstance(value, int):
            raise ConfigError(f"vision_config.{name}: zoo's CLIP takes square images and patches, got {value!r}")
    vision = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        in_channels=v.get("num_channels", 3),
        d_model=v.get("hidden_size", 768),
        n_layers=v.get("num_hidden_layers", 12),
        n_heads=v.get("num_attention_heads", 12),
        d_ff=v.get("intermediate_size", 3072),
        norm_eps=v.get("layer_norm_eps", 1e-5),
        mlp=_act(v, "vision_config"),
        attn_dropout=v.get("attention_dropout", 0.0),
        pos_resample_antialias=False,  # interpolate_pos_encoding: plain bicubic
    )
    return CLIPConfig(
        text=text,
        vision=vision,
        embed_dim=hf.get("projection_dim", 512),
        logit_scale_init=hf.get("logit_scale_init_value", 2.6592),
        layout="transformers",
    )


def _config_to_transformers(c: CLIPConfig) -> dict:
    t, v = c.text, c.vision
    if t.pool == "eos" and t.eos_token_id == _LEGACY_EOS:
        raise ConfigError(
            f"text.eos_token_id: transformers pools at the highest id whenever eos_token_id == {_LEGACY_EOS}, "
            "so pool='eos' at that id has no equivalent there; save with format='zoo'"
        )
    text = {
        "model_type": "clip_text_model",
        "vocab_size": t.vocab_size,
        "max_position_embeddings": t.max_seq_len,
        "hidden_size": t.d_model,
        "num_hidden_layers": t.n_layers,
        "num_attention_heads": t.n_heads,
        "intermediate_size": t.d_ff,
        "layer_norm_eps": t.norm_eps,
        "hidden_act": t.mlp,
        "attention_dropout": t.attn_dropout,
        "projection_dim": c.embed_dim,
        "eos_token_id": _LEGACY_EOS if t.pool == "argmax" else t.eos_token_id,
        "pad_token_id": t.pad_token_id,
    }
    vision = {
        "model_type": "clip_vision_model",
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "num_channels": v.in_channels,
        "hidden_size": v.d_model,
        "num_hidden_layers": v.n_layers,
        "num_attention_heads": v.n_heads,
        "intermediate_size": v.d_ff,
        "layer_norm_eps": v.norm_eps,
        "hidden_act": v.mlp,
        "attention_dropout": v.attn_dropout,
        "projection_dim": c.embed_dim,
    }
    return {
        "model_type": "clip",
        "architectures": ["CLIPModel"],
        "projection_dim": c.embed_dim,
        "logit_scale_init_value": c.logit_scale_init,
        "text_config": text,
        "vision_config": vision,
    }


def _layer_pairs(src: str, dst: str, attn: list[tuple[str, str]], names: dict[str, str]) -> list[Rule]:
    out = []
    for w in ("weight", "bias"):
        out += [rename(f"{src}.{a}.{w}", f"{dst}.{b}.{w}") for a, b in attn]
        out += [rename(f"{src}.{a}.{w}", f"{dst}.{b}.{w}") for a, b in names.items()]
    return out


def _class_token(src: str) -> Rule:
    """Both references keep the class token as (d_model,); zoo's PatchTokens as (1, 1, d_model)."""
    return permute(src, "vision.embed.cls_token", lambda t: t.reshape(1, 1, -1), lambda t: t.reshape(-1))


def _transformers_rules(c: CLIPConfig) -> list[Rule]:
    names = {"self_attn.out_proj": "attn.o_proj", "layer_norm1": "norm1", "layer_norm2": "norm2",
             "mlp.fc1": "mlp.up", "mlp.fc2": "mlp.down"}  # fmt: skip
    qkv = [(f"self_attn.{n}_proj", f"attn.{n}_proj") for n in "qkv"]
    out = [
        rename("text_model.embeddings.token_embedding.weight", "text.embed.weight"),
        rename("text_model.embeddings.position_embedding.weight", "text.pos.weight"),
        _class_token("vision_model.embeddings.class_embedding"),
        rename("vision_model.embeddings.patch_embedding.weight", "vision.embed.patch_embed.proj.weight"),
        rename("vision_model.embeddings.position_embedding.weight", "vision.embed.pos.weight"),
        rename("text_projection.weight", "text_proj.weight"),
        rename("visual_projection.weight", "vision_proj.weight"),
        rename("logit_scale", "logit_scale"),
        # transformers 4.x saved its position-id buffers; they are arange(n), nothing to load.
        drop("text_model.embeddings.position_ids"),
        drop("vision_model.embeddings.position_ids"),
    ]
    out += _layer_pairs("text_model.encoder.layers.{i}", "text.layers.{i}", qkv, names)
    out += _layer_pairs("vision_model.encoder.layers.{i}", "vision.layers.{i}", qkv, names)
    for w in ("weight", "bias"):
        out.append(rename(f"text_model.final_layer_norm.{w}", f"text.norm.{w}"))
        out.append(rename(f"vision_model.pre_layrnorm.{w}", f"vision.pre_norm.{w}"))
        out.append(rename(f"vision_model.post_layernorm.{w}", f"vision.norm.{w}"))
    return out


# --- open_clip ---------------------------------------------------------------------------------

# model_cfg keys zoo reads, and those accepted only at the value zoo's CLIP computes.
_OC_TOP = {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg", "init_logit_scale"}
# custom_text moves the text tower under "text." (CustomTextCLIP); zoo reads the plain CLIP layout.
_OC_TOP_FIXED = {"init_logit_bias": None, "nonscalar_logit_scale": False, "custom_text": False}
_OC_VISION = {"image_size", "layers", "width", "head_width", "mlp_ratio", "patch_size", "patch_dropout",
              "final_ln_after_pool", "output_tokens", "norm_kwargs"}  # fmt: skip
_OC_VISION_FIXED = {"ls_init_value": None, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
                    "pool_type": "tok", "act_kwargs": None, "block_type": None, "qk_norm": False,
                    "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
                    "scale_fc": False, "timm_model_name": None}  # fmt: skip
_OC_TEXT = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "pad_id", "eos_id", "pool_type",
            "final_ln_after_pool", "output_tokens", "norm_kwargs", "hf_tokenizer_name", "tokenizer_mode",
            "tokenizer_kwargs"}  # fmt: skip
_OC_TEXT_FIXED = {"ls_init_value": None, "embed_cls": False, "no_causal_mask": False, "proj_bias": False,
                  "proj_type": "linear", "act_kwargs": None, "block_type": None, "qk_norm": False,
                  "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
                  "scale_fc": False, "hf_model_name": None}  # fmt: skip


def _check_keys(cfg: dict, where: str, known: set, fixed: dict) -> None:
    for key, value in cfg.items():
        if key in fixed:
            if value != fixed[key]:
                raise ConfigError(f"{where}.{key}: open_clip's {key}={value!r} is not supported by zoo's CLIP "
                                  f"(only {fixed[key]!r})")  # fmt: skip
        elif key not in known:
            raise ConfigError(f"{where}.{key}: open_clip option {key}={value!r} is not supported by zoo's CLIP")


def _eps(cfg: dict, where: str) -> float:
    kwargs = dict(cfg.get("norm_kwargs") or {})
    eps = kwargs.pop("eps", 1e-5)  # open_clip's LayerNorm is torch's, eps 1e-5
    if kwargs:
        raise ConfigError(f"{where}.norm_kwargs: only eps is supported, got {sorted(kwargs)}")
    return eps


def _square(value, where: str) -> int:
    if isinstance(value, int):
        return value
    if len(value) != 2 or value[0] != value[1]:
        raise ConfigError(f"{where}: zoo's CLIP takes square images, got {value!r}")
    return int(value[0])


def _config_from_open_clip(hf: dict) -> CLIPConfig:
    m = hf["model_cfg"]
    v, t = m.get("vision_cfg") or {}, m.get("text_cfg") or {}
    _check_keys(m, "model_cfg", _OC_TOP, _OC_TOP_FIXED)
    _check_keys(v, "model_cfg.vision_cfg", _OC_VISION, _OC_VISION_FIXED)
    _check_keys(t, "model_cfg.text_cfg", _OC_TEXT, _OC_TEXT_FIXED)
    if not isinstance(v.get("layers", 12), int):
        raise ConfigError(f"model_cfg.vision_cfg.layers: {v['layers']!r} is a ResNet image tower; zoo's CLIP has a ViT")
    # open_clip's default is exact GELU; "quick_gelu": true selects the original CLIP's activation.
    act = "quick_gelu" if m.get("quick_gelu", False) else "gelu"
    width, vwidth = t.get("width", 512), v.get("width", 768)
    head_width = v.get("head_width", 64)
    if vwidth % head_width:
        raise ConfigError(f"model_cfg.vision_cfg.head_width: width={vwidth} is not divisible by {head_width}")
    pool = t.get("pool_type", "argmax")
    if pool not in ("argmax", "eos"):
        raise ConfigError(f"model_cfg.text_cfg.pool_type: {pool!r}; zoo's CLIP pools with argmax or eos")
    eos = t.get("eos_id", 2)
    vocab = t.get("vocab_size", 49408)
    text = CLIPTextConfig(
        vocab_size=vocab,
        max_seq_len=t.get("context_length", 77),
        d_model=width,
        n_layers=t.get("layers", 12),
        n_heads=t.get("heads", 8),
        d_ff=int(width * t.get("mlp_ratio", 4.0)),  # open_clip: mlp_width = int(width * mlp_ratio)
        norm_eps=_eps(t, "model_cfg.text_cfg"),
        mlp=act,
        pool=pool,
        # With argmax pooling the id is the vocabulary's last, which the original tokenizer appends.
        eos_token_id=eos if pool == "eos" else vocab - 1,
        pad_token_id=t.get("pad_id", 0),
    )
    vision = CLIPVisionConfig(
        image_size=_square(v.get("image_size", 224), "model_cfg.vision_cfg.image_size"),
        patch_size=_square(v.get("patch_size", 16), "model_cfg.vision_cfg.patch_size"),
        d_model=vwidth,
        n_layers=v.get("layers", 12),
        n_heads=vwidth // head_width,
        d_ff=int(vwidth * v.get("mlp_ratio", 4.0)),
        norm_eps=_eps(v, "model_cfg.vision_cfg"),
        mlp=act,
        # open_clip resamples a checkpoint's positions with plain bicubic (resize_pos_embed).
        pos_resample_antialias=False,
    )
    pre = hf.get("preprocess_cfg") or {}
    interpolation = pre.get("interpolation", "bicubic")
    if interpolation not in ("bicubic", "bilinear", "nearest"):
        raise ConfigError(f"preprocess_cfg.interpolation: {interpolation!r} is not supported")
    if pre.get("resize_mode", "shortest") != "shortest":
        raise ConfigError(f"preprocess_cfg.resize_mode: {pre['resize_mode']!r}; zoo resizes the shortest side")
    return CLIPConfig(
        text=text,
        vision=vision,
        embed_dim=m.get("embed_dim", 512),
        logit_scale_init=m.get("init_logit_scale", math.log(1 / 0.07)),
        layout="open_clip",
        image_mean=tuple(pre.get("mean", OPENAI_MEAN)),
        image_std=tuple(pre.get("std", OPENAI_STD)),
        interpolation=interpolation,
    )


def _ratio(width: int, hidden: int) -> float:
    """hidden / width as a float that open_clip's int(width * ratio) turns back into hidden exactly."""
    ratio = hidden / width
    while int(width * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _config_to_open_clip(c: CLIPConfig) -> dict:
    t, v = c.text, c.vision
    problems = {
        "vision.mlp": t.mlp != v.mlp and "open_clip has one activation for both towers (quick_gelu)",
        "text.attn_dropout": t.attn_dropout and "open_clip's attention has no dropout",
        "vision.attn_dropout": v.attn_dropout and "open_clip's attention has no dropout",
        "vision.in_channels": v.in_channels != 3 and "open_clip's image tower reads RGB",
        "text.eos_token_id": t.pool == "argmax"
        and t.eos_token_id != t.vocab_size - 1
        and "argmax pooling in open_clip assumes end-of-text is the last id of the vocabulary",
    }
    for name, why in problems.items():
        if why:
            raise ConfigError(
                f"{name}: no equivalent in open_clip ({why}); save with format='zoo' or layout='transformers'"
            )
    text_cfg = {
        "context_length": t.max_seq_len,
        "vocab_size": t.vocab_size,
        "width": t.d_model,
        "heads": t.n_heads,
        "layers": t.n_layers,
        "mlp_ratio": _ratio(t.d_model, t.d_ff),
        "pad_id": t.pad_token_id,
        "pool_type": t.pool,
        "norm_kwargs": {"eps": t.norm_eps},
    }
    if t.pool == "eos":
        text_cfg["eos_id"] = t.eos_token_id
    return {
        "model_cfg": {
            "embed_dim": c.embed_dim,
            "quick_gelu": t.mlp == "quick_gelu",
            "init_logit_scale": c.logit_scale_init,
            "vision_cfg": {
                "image_size": v.image_size,
                "layers": v.n_layers,
                "width": v.d_model,
                "head_width": v.head_dim,
                "mlp_ratio": _ratio(v.d_model, v.d_ff),
                "patch_size": v.patch_size,
                "norm_kwargs": {"eps": v.norm_eps},
            },
            "text_cfg": text_cfg,
        },
        "preprocess_cfg": {
            "size": v.image_size,
            "mode": "RGB",
            "mean": list(c.image_mean),
            "std": list(c.image_std),
            "interpolation": c.interpolation,
            "resize_mode": "shortest",
        },
    }


def _open_clip_rules(c: CLIPConfig) -> list[Rule]:
    names = {"attn.out_proj": "attn.o_proj", "ln_1": "norm1", "ln_2": "norm2", "mlp.c_fc": "mlp.up",
             "mlp.c_proj": "mlp.down"}  # fmt: skip
    p = ""  # the text tower's keys sit at the top level of open_clip's CLIP
    out = [
        rename(f"{p}token_embedding.weight", "text.embed.weight"),
        rename(f"{p}positional_embedding", "text.pos.weight"),
        # open_clip multiplies x @ text_projection, (d_model, embed_dim): nn.Linear's weight transposed.
        transpose(f"{p}text_projection", "text_proj.weight"),
        _class_token("visual.class_embedding"),
        rename("visual.conv1.weight", "vision.embed.patch_embed.proj.weight"),
        rename("visual.positional_embedding", "vision.embed.pos.weight"),
        transpose("visual.proj", "vision_proj.weight"),
        rename("logit_scale", "logit_scale"),
    ]
    for src, dst in ((f"{p}transformer.resblocks.{{i}}", "text.layers.{i}"),
                     ("visual.transformer.resblocks.{i}", "vision.layers.{i}")):  # fmt: skip
        qkv = [f"{dst}.attn.{n}_proj" for n in "qkv"]
        # nn.MultiheadAttention fuses q, k, v into in_proj_weight (3 * d_model, d_model).
        out.append(split(f"{src}.attn.in_proj_weight", [f"{n}.weight" for n in qkv]))
        out.append(split(f"{src}.attn.in_proj_bias", [f"{n}.bias" for n in qkv]))
        out += _layer_pairs(src, dst, [], names)
    for w in ("weight", "bias"):
        out.append(rename(f"{p}ln_final.{w}", f"text.norm.{w}"))
        out.append(rename(f"visual.ln_pre.{w}", f"vision.pre_norm.{w}"))
        out.append(rename(f"visual.ln_post.{w}", f"vision.norm.{w}"))
    return out


# --- the family's hooks --------------------------------------------------------------------------


def config_from_hf(hf: dict) -> CLIPConfig:
    return _config_from_open_clip(hf) if is_open_clip_config(hf) else _config_from_transformers(hf)


def config_to_hf(c: CLIPConfig, task: str) -> dict:
    return _config_to_open_clip(c) if c.layout == "open_clip" else _config_to_transformers(c)


def rules(c: CLIPConfig, task: str) -> list[Rule]:
    return _open_clip_rules(c) if c.layout == "open_clip" else _transformers_rules(c)
