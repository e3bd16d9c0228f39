"""ViT <-> its two references: timm's VisionTransformer and transformers' ViTModel / ViTForImageClassification.

timm's Hugging Face-format directory holds a config.json with ``architecture`` (the timm model
name), ``num_classes``, ``global_pool``, optionally ``model_args`` (the create_model arguments)
and ``pretrained_cfg``, beside model.safetensors in timm's own state-dict layout. transformers'
holds ``model_type: "vit"``. ``ViTConfig.layout`` records which one a model came from, and
``save_pretrained(format="hf")`` writes that one back.
"""

import math

from zoo.config import ConfigError
from zoo.convert import Rule, permute, rename, split
from zoo.convert.hf import activation_from_hf, activation_to_hf, labels_to_hf, n_labels_from_hf
from zoo.families.vit.config import ViTConfig

ARCHITECTURES = {"base": "ViTModel", "image_classification": "ViTForImageClassification"}

# timm's plain ViT entry points (timm/models/vision_transformer.py): name -> (patch, image, width,
# depth, heads). A config.json without model_args describes its model by this name alone.
_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
_TIMM_NAMES = {
    "tiny": [(16, 224), (16, 384)],
    "small": [(32, 224), (32, 384), (16, 224), (16, 384), (8, 224)],
    "base": [(32, 224), (32, 384), (16, 224), (16, 384), (8, 224)],
    "large": [(32, 224), (32, 384), (16, 224), (16, 384)],
}
TIMM_ARCHITECTURES = {
    f"vit_{size}_patch{patch}_{image}": (patch, image, *_SIZES[size])
    for size, shapes in _TIMM_NAMES.items()
    for patch, image in shapes
}
# timm create_model arguments zoo reads, and those it accepts only at the value that zoo's ViT computes.
_TIMM_ARGS = {"img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
              "num_classes", "global_pool", "fc_norm", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate",
              "drop_rate", "drop_path_rate", "dynamic_img_size", "weight_init", "fix_init"}  # fmt: skip
_TIMM_FIXED = {"class_token": True, "no_embed_class": False, "reg_tokens": 0, "pre_norm": False, "final_norm": True,
               "init_values": None, "qk_norm": False, "proj_bias": True, "pos_embed": "learn",
               "dynamic_img_pad": False, "act_layer": None, "norm_layer": None}  # fmt: skip


def is_timm_config(hf: dict) -> bool:
    """A timm Hugging Face-format config.json naming a ViT (it has no model_type).

    Not timm's CLIP image towers (``vit_base_patch32_clip_224`` and kin): they carry a pre-norm
    zoo's ViT does not have, and their repositories hold the whole CLIP in open_clip's files,
    which the clip family reads."""
    arch = str(hf.get("architecture", ""))
    return "model_type" not in hf and arch.startswith("vit_") and "_clip_" not in arch


def task_from_config(hf: dict) -> str | None:
    """timm configs name no head class: a model with classes has a classifier."""
    if not is_timm_config(hf):
        return None
    return "image_classification" if _timm_args(hf)["num_classes"] > 0 else "base"


def _square(name: str, value) -> int:
    if isinstance(value, int):
        return value
    if len(value) != 2 or value[0] != value[1]:
        raise ConfigError(f"{name}: zoo's ViT takes square images and patches, got {value!r}")
    return int(value[0])


def _timm_args(hf: dict) -> dict:
    """The create_model arguments a timm config.json stands for, as timm's factory resolves them."""
    arch = hf["architecture"]
    model_args = dict(hf.get("model_args") or {})
    for key, value in model_args.items():
        if key in _TIMM_FIXED:
            if value != _TIMM_FIXED[key] and not (key == "act_layer" and value == "gelu"):
                raise ConfigError(
                    f"model_args.{key}: timm's {key}={value!r} is not supported by zoo's ViT "
                    f"(only {_TIMM_FIXED[key]!r})"
                )
        elif key not in _TIMM_ARGS:
            raise ConfigError(f"model_args.{key}: timm argument {key}={value!r} is not supported by zoo's ViT")
    args = {}
    if arch in TIMM_ARCHITECTURES:
        patch, image, width, depth, heads = TIMM_ARCHITECTURES[arch]
        args = dict(patch_size=patch, img_size=image, embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=4.0)
    pretrained = hf.get("pretrained_cfg") or {}
    if pretrained.get("input_size"):
        args["img_size"] = list(pretrained["input_size"][-2:])
    args.update(num_classes=hf.get("num_classes", 1000), global_pool=hf.get("global_pool", "token"))
    args.update(model_args)
    missing = [k for k in ("patch_size", "img_size", "embed_dim", "depth", "num_heads") if k not in args]
    if missing:
        raise ConfigError(
            f"architecture: timm's {arch!r} is not a ViT zoo knows by name and model_args lacks "
            f"{', '.join(missing)}; known: {', '.join(sorted(TIMM_ARCHITECTURES))}"
        )
    return args


def _config_from_timm(hf: dict) -> ViTConfig:
    a = _timm_args(hf)
    if a["global_pool"] not in ("token", "avg"):
        raise ConfigError(f"global_pool: timm's {a['global_pool']!r} pooling is not supported; zoo has token and avg")
    width = a["embed_dim"]
    dropout = max(a.get("pos_drop_rate", 0.0), a.get("proj_drop_rate", 0.0))
    return ViTConfig(
        image_size=_square("img_size", a["img_size"]),
        patch_size=_square("patch_size", a["patch_size"]),
        in_channels=a.get("in_chans", 3),
        d_model=width,
        n_layers=a["depth"],
        n_heads=a["num_heads"],
        d_ff=int(width * a.get("mlp_ratio", 4.0)),  # timm's Mlp: hidden_features = int(dim * mlp_ratio)
        qkv_bias=a.get("qkv_bias", True),
        pool=a["global_pool"],
        fc_norm=a.get("fc_norm"),
        n_labels=a["num_classes"],
        dropout=dropout,
        attn_dropout=a.get("attn_drop_rate", 0.0),
        layout="timm",
        pos_resample_antialias=True,
    )


def _config_from_transformers(hf: dict) -> ViTConfig:
    mlp = activation_from_hf(hf.get("hidden_act", "gelu"), "hidden_act", "ViT")
    width = hf["hidden_size"]
    if hf.get("pooler_output_size", width) != width:
        raise ConfigError(
            f"pooler_output_size: {hf['pooler_output_size']} differs from hidden_size={width}; "
            "zoo's pooler keeps the width"
        )
    if hf.get("pooler_act", "tanh") != "tanh":
        raise ConfigError(f"pooler_act: {hf['pooler_act']!r}; zoo's pooler uses tanh")
    archs = hf.get("architectures") or []
    return ViTConfig(
        image_size=_square("image_size", hf.get("image_size", 224)),
        patch_size=_square("patch_size", hf.get("patch_size", 16)),
        in_channels=hf.get("num_channels", 3),
        d_model=width,
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"],
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        mlp=mlp,
        qkv_bias=hf.get("qkv_bias", True),
        # ViTModel carries a pooler by default; ViTForImageClassification has none.
        pooler="ViTForImageClassification" not in archs,
        n_labels=n_labels_from_hf(hf),
        problem_type=hf.get("problem_type"),
        dropout=hf.get("hidden_dropout_prob", 0.0),
        attn_dropout=hf.get("attention_probs_dropout_prob", 0.0),
        layout="transformers",
        pos_resample_antialias=False,  # transformers' interpolate_pos_encoding: plain bicubic
    )


def config_from_hf(hf: dict) -> ViTConfig:
    return _config_from_timm(hf) if is_timm_config(hf) else _config_from_transformers(hf)


def _mlp_ratio(c: ViTConfig) -> float:
    """d_ff / d_model as a float that timm's int(dim * ratio) turns back into d_ff exactly."""
    ratio = c.d_ff / c.d_model
    while int(c.d_model * ratio) < c.d_ff:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _refuse(c: ViTConfig, reference: str, checks: dict[str, bool]) -> None:
    for name, bad in checks.items():
        if bad:
            raise ConfigError(
                f"{name}: {getattr(c, name)!r} has no equivalent in {reference}; "
                "save with format='zoo', or set layout to the other reference"
            )


def _config_to_timm(c: ViTConfig, task: str) -> dict:
    _refuse(c, "timm's VisionTransformer", {"pooler": c.pooler, "mlp": c.mlp != "gelu", "norm_eps": c.norm_eps != 1e-6})
    n_labels = c.n_labels if task == "image_classification" else 0
    model_args = {
        "img_size": [c.image_size, c.image_size],
        "patch_size": c.patch_size,
        "in_chans": c.in_channels,
        "embed_dim": c.d_model,
        "depth": c.n_layers,
        "num_heads": c.n_heads,
        "mlp_ratio": _mlp_ratio(c),
        "qkv_bias": c.qkv_bias,
        "num_classes": n_labels,
        "global_pool": c.pool,
        "fc_norm": c.fc_norm,  # None: timm derives it from global_pool, as zoo does
        "pos_drop_rate": c.dropout,
        "proj_drop_rate": c.dropout,
        "attn_drop_rate": c.attn_dropout,
    }
    # The architecture names timm's builder; model_args above fix every shape, so a model that
    # matches no entry point is built by the generic one.
    shape = (c.patch_size, c.image_size, c.d_model, c.n_layers, c.n_heads)
    arch = next((n for n, s in TIMM_ARCHITECTURES.items() if s == shape), "vit_base_patch16_224")
    return {
        "architecture": arch,
        "num_classes": n_labels,
        "num_features": c.d_model,
        "global_pool": c.pool,
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [c.in_channels, c.image_size, c.image_size],
            "fixed_input_size": True,
            "interpolation": "bicubic",
            "crop_pct": 0.9,
            "crop_mode": "center",
            "mean": [0.5] * c.in_channels,
            "std": [0.5] * c.in_channels,
            "num_classes": n_labels,
            "pool_size": None,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
    }


def _config_to_transformers(c: ViTConfig, task: str) -> dict:
    _refuse(
        c,
        f"transformers' {ARCHITECTURES[task]}",
        {
            "pool": c.pool != "token",
            "fc_norm": c.use_fc_norm,
            # ViTModel always has its pooler, ViTForImageClassification never.
            "pooler": c.pooler != (task == "base"),
        },
    )
    return {
        "model_type": "vit",
        "architectures": [ARCHITECTURES[task]],
        "image_size": c.image_size,
        "patch_size": c.patch_size,
        "num_channels": c.in_channels,
        "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "intermediate_size": c.d_ff,
        "hidden_act": activation_to_hf(c.mlp, "mlp", "ViT"),
        "layer_norm_eps": c.norm_eps,
        "qkv_bias": c.qkv_bias,
        "hidden_dropout_prob": c.dropout,
        "attention_probs_dropout_prob": c.attn_dropout,
        "pooler_output_size": c.d_model,
        "pooler_act": "tanh",
        "problem_type": c.problem_type,
        **labels_to_hf(c.n_labels),
    }


def config_to_hf(c: ViTConfig, task: str) -> dict:
    return _config_to_timm(c, task) if c.layout == "timm" else _config_to_transformers(c, task)


def _squeeze_batch(src: str, dst: str) -> Rule:
    """Both references store tokens and tables with a leading batch dimension of 1."""
    return permute(src, dst, lambda t: t[0], lambda t: t[None])


def _timm_rules(c: ViTConfig, task: str) -> list[Rule]:
    b, layer = "blocks.{i}", "layers.{i}"
    qkv = [f"{layer}.attn.{n}_proj" for n in "qkv"]
    out = [
        rename("cls_token", "embed.cls_token"),
        _squeeze_batch("pos_embed", "embed.pos.weight"),
        rename("patch_embed.proj.weight", "embed.patch_embed.proj.weight"),
        rename("patch_embed.proj.bias", "embed.patch_embed.proj.bias"),
        # timm fuses q, k, v into one (3 * d_model, d_model) projection.
        split(f"{b}.attn.qkv.weight", [f"{n}.weight" for n in qkv]),
    ]
    if c.qkv_bias:
        out.append(split(f"{b}.attn.qkv.bias", [f"{n}.bias" for n in qkv]))
    pairs = [("attn.proj", "attn.o_proj"), ("norm1", "norm1"), ("norm2", "norm2"), ("mlp.fc1", "mlp.up"),
             ("mlp.fc2", "mlp.down")]  # fmt: skip
    final = "fc_norm" if c.use_fc_norm else "norm"
    for w in ("weight", "bias"):
        out += [rename(f"{b}.{src}.{w}", f"{layer}.{dst}.{w}") for src, dst in pairs]
        out.append(rename(f"{final}.{w}", f"{final}.{w}"))
        if task == "image_classification":
            out.append(rename(f"head.{w}", f"classifier.{w}"))
    return out


def _transformers_rules(c: ViTConfig, task: str) -> list[Rule]:
    p = "" if task == "base" else "vit."
    e, h, layer = f"{p}embeddings", f"{p}encoder.layer.{{i}}", "layers.{i}"
    out = [
        rename(f"{e}.cls_token", "embed.cls_token"),
        _squeeze_batch(f"{e}.position_embeddings", "embed.pos.weight"),
    ]
    pairs = [("attention.output.dense", "attn.o_proj"), ("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
             ("intermediate.dense", "mlp.up"), ("output.dense", "mlp.down")]  # fmt: skip
    for w in ("weight", "bias"):
        out.append(rename(f"{e}.patch_embeddings.projection.{w}", f"embed.patch_embed.proj.{w}"))
        if w == "weight" or c.qkv_bias:
            out += [
                rename(f"{h}.attention.attention.{n}.{w}", f"{layer}.attn.{n[0]}_proj.{w}")
                for n in ("query", "key", "value")
            ]
        out += [rename(f"{h}.{src}.{w}", f"{layer}.{dst}.{w}") for src, dst in pairs]
        out.append(rename(f"{p}layernorm.{w}", f"norm.{w}"))
        if c.pooler:
            out.append(rename(f"{p}pooler.dense.{w}", f"pooler.dense.{w}"))
        if task == "image_classification":
            out.append(rename(f"classifier.{w}", f"classifier.{w}"))
    return out


def rules(c: ViTConfig, task: str) -> list[Rule]:
    return _timm_rules(c, task) if c.layout == "timm" else _transformers_rules(c, task)
